"""The peer benchmark behind ``python scripts/bench.py --peers``: streambatch next to the ways
people shuffle a larger-than-memory dataset today, on the same generated data.

Every peer runs in its own fresh process (``benchlib.run_config``) on the standard dataset
(``benchlib.ensure_data``: float32[128] ``x`` + int64 ``label`` sorted into 10 classes), batch
256, shuffled, warm page cache, and does the same per-batch NumPy work (``benchlib._Consumer``).
Measured per peer: one-off preparation (cached under the data dir), setup (construct -> ready to
iterate), first batch (from the start of iteration), rows/s over the iteration, peak RSS of the
process (and of its DataLoader workers, where it has some), shuffle score.

Slow peers are cut after ``--peer-seconds`` of iteration: rows/s is then over the rows consumed,
the row is marked partial, and the score is taken against the full dataset's class histogram
(``_Consumer(expected_counts=...)``), so a buffer shuffle that has only seen the first classes is
not flattered.

The peers are extras of the benchmark, never of the library: ``scripts/requirements-peers.txt``
(torch, datasets) goes into the benchmark's environment; MosaicML Streaming gets its own virtual
environment, made on demand under ``<data-dir>/venvs/mosaic`` from ``scripts/requirements-mosaic.txt``.

The virtual environments and the one-off preparation cache are in ``bench_peers_env.py``;
the tables, the reading and the plot in ``bench_peers_report.py``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers_env import REQ_MOSAIC, REQ_PEERS, ensure_mosaic_venv, ensure_prepared
from benchlib import (
    BATCH,
    NUM_CLASSES,
    ROW_BYTES,
    SCRIPTS,
    _Consumer,
    ensure_data,
    fmt_bytes,
    run_config,
    warm,
)

HF_SHARDS = 64  # to_iterable_dataset(num_shards=64).shuffle(buffer_size=10_000): the datasets docs' example
HF_BUFFER = 10_000
TORCH_WORKERS = 2
MOSAIC_WORKERS = 2
SAMPLE_EVERY = 256  # batches between samples of the DataLoader workers' VmHWM


# ----------------------------------------------------------------------------- helpers (run in the workers)


class NotInstalled(Exception):
    pass


def _need(module: str, hint: str = REQ_PEERS):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise NotInstalled(f"not installed ({e.name or module}): pip install -r {hint}") from e


def _descendants() -> list[int]:
    """PIDs of this process's descendants, from /proc (DataLoader workers are children)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parent[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _status(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (VmHWM, RssAnon, RssFile), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _ChildPeaks:
    """Max VmHWM seen per descendant process; read while the workers are alive (a DataLoader shuts
    its workers down when the epoch ends, so the epoch's last batch triggers a read before that)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}

    def sample(self) -> None:
        for pid in _descendants():
            v = _status(pid, "VmHWM")
            if v is not None:
                self.peak[pid] = max(v, self.peak.get(pid, 0))

    def result(self) -> dict:
        return {"workers_seen": len(self.peak), "workers_peak_rss_bytes": sum(self.peak.values())}


def _iterate(batches, split, *, total: int, cap_s: float, expected, setup_s: float, children: bool = False) -> dict:
    """Consume ``batches`` (an iterable; ``iter`` is taken inside the timing) until exhausted or
    ``cap_s`` seconds of iteration; ``split(batch) -> (x, label)`` as NumPy."""
    consumer = _Consumer(score=True, expected_counts=expected)
    peaks = _ChildPeaks() if children else None
    t1 = time.perf_counter()
    it = iter(batches)
    capped = False
    for batch in it:
        x, label = split(batch)
        consumer(x, label, t1)
        if peaks is not None and (consumer.batches % SAMPLE_EVERY == 1 or consumer.rows >= total):
            peaks.sample()
        if cap_s and time.perf_counter() - t1 >= cap_s and consumer.rows < total:
            capped = True
            break
    seconds = time.perf_counter() - t1
    if peaks is not None:
        peaks.sample()
    # what the RSS is made of at the end: a memory-mapped file's pages count as RssFile (page cache)
    rss_anon, rss_file = _status("self", "RssAnon"), _status("self", "RssFile")
    del it  # shuts a DataLoader's workers down
    out = {
        "rows": consumer.rows,
        "seconds": seconds,
        "setup_s": setup_s,
        "first_batch_s": consumer.first,
        "score": consumer.score(),
        "partial": capped,
        "total_rows": total,
        "rss_anon_end_bytes": rss_anon,
        "rss_file_end_bytes": rss_file,
    }
    if peaks is not None:
        out.update(peaks.result())
    return out


def _npy(npy_dir: str, name: str, mmap: bool):
    import numpy as np

    return np.load(os.path.join(npy_dir, f"{name}.npy"), mmap_mode="r" if mmap else None)


# ----------------------------------------------------------------------------- peers (each in a fresh process)


def work_label_counts(npy_dir: str) -> dict:
    import numpy as np

    label = _npy(npy_dir, "label", True)
    return {"counts": np.bincount(label, minlength=NUM_CLASSES).tolist(), "rows": len(label)}


def work_torch_tensor(npy_dir: str, cap_s: float, expected: list[int]) -> dict:
    """``DataLoader(TensorDataset(x, label), batch_size=256, shuffle=True)``, data loaded in RAM first."""
    torch = _need("torch")
    from torch.utils.data import DataLoader, TensorDataset

    t0 = time.perf_counter()
    x = torch.from_numpy(_npy(npy_dir, "x", False))
    label = torch.from_numpy(_npy(npy_dir, "label", False))
    loader = DataLoader(
        TensorDataset(x, label), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    setup = time.perf_counter() - t0
    return _iterate(
        loader, lambda b: (b[0].numpy(), b[1].numpy()), total=len(label), cap_s=cap_s, expected=expected, setup_s=setup
    )


class _MmapRows:
    """A map-style Dataset over ``np.load(mmap_mode='r')``; the maps open lazily, so each
    DataLoader worker opens its own. ``x[i]`` per row, or ``x[idx]`` for a list of indices."""

    def __init__(self, npy_dir: str) -> None:
        self.npy_dir = npy_dir
        self.n = len(_npy(npy_dir, "label", True))
        self.x = self.label = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if self.x is None:
            self.x, self.label = _npy(self.npy_dir, "x", True), _npy(self.npy_dir, "label", True)
        return self.x[i], self.label[i]


def work_torch_mmap(npy_dir: str, mode: str, workers: int, cap_s: float, expected: list[int]) -> dict:
    """DataLoader over a memory-mapped ``.npy``: ``mode='row'`` (RandomSampler, default collate of 256
    rows) or ``mode='batch'`` (``BatchSampler(RandomSampler)`` as sampler, ``batch_size=None``, so one
    fancy-indexing ``x[idx]`` per batch)."""
    torch = _need("torch")
    import warnings

    from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    class Rows(_MmapRows, Dataset):
        pass

    t0 = time.perf_counter()
    ds = Rows(npy_dir)
    gen = torch.Generator().manual_seed(0)
    if mode == "row":
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=gen, num_workers=workers)
    elif mode == "batch":
        sampler = BatchSampler(RandomSampler(ds, generator=gen), BATCH, drop_last=False)
        loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)
    else:
        raise ValueError(f"mode must be 'row' or 'batch', got {mode!r}")
    setup = time.perf_counter() - t0
    return _iterate(
        loader,
        lambda b: (b[0].numpy(), b[1].numpy()),
        total=len(ds),
        cap_s=cap_s,
        expected=expected,
        setup_s=setup,
        children=workers > 0,
    )


def work_hf(hf_dir: str, cap_s: float, expected: list[int]) -> dict:
    """Hugging Face ``datasets``: ``load_from_disk`` (memory-mapped Arrow) ->
    ``to_iterable_dataset(num_shards=64).shuffle(seed=0, buffer_size=10_000)`` -> NumPy batches of 256."""
    datasets = _need("datasets")
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.load_from_disk(hf_dir)
    ids = ds.to_iterable_dataset(num_shards=HF_SHARDS).shuffle(seed=0, buffer_size=HF_BUFFER).with_format("numpy")
    setup = time.perf_counter() - t0
    import numpy as np

    def split(b):
        x = b["x"]
        return (np.stack(x) if x.dtype == object else x), b["label"]

    return _iterate(ids.iter(batch_size=BATCH), split, total=len(ds), cap_s=cap_s, expected=expected, setup_s=setup)


def work_mosaic(mds_dir: str, cap_s: float, expected: list[int], workers: int = MOSAIC_WORKERS) -> dict:
    """MosaicML Streaming: ``StreamingDataset(local=<MDS dir>, shuffle=True, batch_size=256)`` in a
    ``torch.utils.data.DataLoader(batch_size=256, num_workers=2)`` (its documented use)."""
    _need("streaming", os.path.relpath(REQ_MOSAIC, os.path.dirname(SCRIPTS)))
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()  # a killed earlier run leaves shared memory behind
    t0 = time.perf_counter()
    ds = StreamingDataset(local=mds_dir, shuffle=True, shuffle_seed=0, batch_size=BATCH)
    loader = DataLoader(ds, batch_size=BATCH, num_workers=workers)
    setup = time.perf_counter() - t0
    out = _iterate(
        loader,
        lambda b: (b["x"].numpy(), b["label"].numpy()),
        total=ds.num_samples,
        cap_s=cap_s,
        expected=expected,
        setup_s=setup,
        children=workers > 0,
    )
    out["shuffle_algo"] = ds.shuffle_algo
    out["shuffle_block_size"] = ds.shuffle_block_size
    return out


def work_streambatch(path: str, memory_limit: str, cap_s: float, expected: list[int]) -> dict:
    from streambatch import Loader

    t0 = time.perf_counter()
    loader = Loader(path, BATCH, shuffle=True, seed=0, memory_limit=memory_limit)
    setup = time.perf_counter() - t0
    with loader:
        out = _iterate(
            loader,
            lambda b: (b["x"], b["label"]),
            total=loader.rows_per_epoch,
            cap_s=cap_s,
            expected=expected,
            setup_s=setup,
        )
        budget = loader.budget
        out.update(window_pieces=budget.window_pieces, piece_rows=budget.max_piece_rows)
    return out


# ----------------------------------------------------------------------------- one-off preparation (workers)


def prep_convert(npy_dir: str, dest: str) -> dict:
    """``streambatch convert NPY DEST --format parquet --shuffle`` (the library function)."""
    from streambatch.convert import convert

    res = convert(npy_dir, dest, "parquet", shuffle=True, seed=0, progress=False)
    return {"summary": res.summary()}


def prep_hf(npy_dir: str, dest: str) -> dict:
    """An Arrow dataset written by ``datasets`` itself: ``Dataset.from_dict`` + ``save_to_disk``.
    The columns are handed over as Arrow arrays (zero-copy views of the NumPy data): given the 2-D
    NumPy array itself, ``from_dict`` goes through Python objects and peaked at ~15 GB for 1 GB."""
    datasets = _need("datasets")
    import pyarrow as pa

    datasets.disable_progress_bars()
    feature = getattr(datasets, "List", None) or datasets.Sequence
    features = datasets.Features(
        {"x": feature(datasets.Value("float32"), length=128), "label": datasets.Value("int64")}
    )
    x = _npy(npy_dir, "x", False)
    columns = {
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
        "label": pa.array(_npy(npy_dir, "label", False)),
    }
    ds = datasets.Dataset.from_dict(columns, features=features)
    ds.save_to_disk(dest)
    return {"rows": len(ds)}


def prep_mds(npy_dir: str, dest: str) -> dict:
    """MDS shards written by MosaicML's own ``MDSWriter``, one sample at a time (its API)."""
    _need("streaming", os.path.relpath(REQ_MOSAIC, os.path.dirname(SCRIPTS)))
    from streaming import MDSWriter

    x, label = _npy(npy_dir, "x", True), _npy(npy_dir, "label", True)
    with MDSWriter(out=dest, columns={"x": "ndarray:float32:128", "label": "int64"}, compression=None) as w:
        for i in range(len(label)):
            w.write({"x": x[i], "label": label[i]})
    return {"rows": len(label)}


def work_versions(names: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    out["python"] = sys.version.split()[0]
    return out


def _catch(fn):
    def run(**kw):
        try:
            return fn(**kw)
        except NotInstalled as e:
            return {"error": str(e), "not_installed": True}

    run.__doc__ = fn.__doc__
    return run


WORKERS = {
    "label_counts": work_label_counts,
    "torch_tensor": _catch(work_torch_tensor),
    "torch_mmap": _catch(work_torch_mmap),
    "hf": _catch(work_hf),
    "mosaic": _catch(work_mosaic),
    "streambatch": work_streambatch,
    "prep_convert": prep_convert,
    "prep_hf": _catch(prep_hf),
    "prep_mds": _catch(prep_mds),
    "versions": work_versions,
}


# ----------------------------------------------------------------------------- the run (parent process)
# The parent imports neither numpy nor torch (Linux carries its RSS high-water mark into the children).

# key -> (label, group); the order of the table and the plot
PEERS = {
    "numpy-perm": ("NumPy in-memory permutation (`np.load`, `x[perm[i:i+256]]`)", "baseline"),
    "pyarrow-rowgroups": ("raw pyarrow `read_row_group`, no shuffle", "baseline"),
    "torch-tensor": ("torch `DataLoader(TensorDataset, shuffle=True)`", "torch"),
    "torch-mmap-row-w0": ("torch `DataLoader` over `np.load(mmap_mode='r')`, row-wise, 0 workers", "torch"),
    "torch-mmap-row-w2": ("torch `DataLoader` over `np.load(mmap_mode='r')`, row-wise, 2 workers", "torch"),
    "torch-mmap-batch-w0": (
        "torch `DataLoader` over `np.load(mmap_mode='r')`, `BatchSampler(RandomSampler)` + fancy indexing, 0 workers",
        "torch",
    ),
    "torch-mmap-batch-w2": (
        "torch `DataLoader` over `np.load(mmap_mode='r')`, `BatchSampler(RandomSampler)` + fancy indexing, 2 workers",
        "torch",
    ),
    "hf-iterable": (
        f"HF `datasets` `to_iterable_dataset({HF_SHARDS}).shuffle(buffer_size={HF_BUFFER:_})`",
        "hf",
    ),
    "mosaic": (f"MosaicML `StreamingDataset` (MDS), `DataLoader` {MOSAIC_WORKERS} workers", "mosaic"),
    "sb-npy": ("streambatch `Loader`, `.npy`", "streambatch"),
    "sb-parquet": ("streambatch `Loader`, Parquet from `streambatch convert --shuffle`", "streambatch"),
    "sb-zarr": ("streambatch `Loader`, Zarr", "streambatch"),
}
PREP_OF = {"sb-parquet": "convert", "hf-iterable": "hf", "mosaic": "mds"}
IN_RAM = ("numpy-perm", "torch-tensor")  # load the whole dataset into RAM before the first batch
GOOD_SCORE = 1.2  # streambatch's target for a windowed shuffle (README): "shuffles well" in the reading
SHORT = {  # names in the plot and the reading
    "numpy-perm": "NumPy in-memory perm.",
    "pyarrow-rowgroups": "pyarrow row groups (no shuffle)",
    "torch-tensor": "torch TensorDataset",
    "torch-mmap-row-w0": "torch mmap row-wise, 0 w.",
    "torch-mmap-row-w2": "torch mmap row-wise, 2 w.",
    "torch-mmap-batch-w0": "torch mmap BatchSampler, 0 w.",
    "torch-mmap-batch-w2": "torch mmap BatchSampler, 2 w.",
    "hf-iterable": "HF datasets iterable + buffer",
    "mosaic": "MosaicML Streaming, 2 w.",
    "sb-npy": "streambatch .npy",
    "sb-parquet": "streambatch Parquet (convert)",
    "sb-zarr": "streambatch Zarr",
}


def run(args, log) -> dict:
    rows = args.rows
    t_start = time.perf_counter()
    selected = list(PEERS) if not args.peers_only else [k for k in PEERS if k in args.peers_only]
    unknown = set(args.peers_only or ()) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peers: {', '.join(sorted(unknown))} (known: {', '.join(PEERS)})")
    cap = args.peer_seconds
    timeout = cap + args.timeout
    npy = ensure_data(args.data_dir, "npy", rows, args.chunk_rows, log)
    paths = {"npy": npy}
    if {"pyarrow-rowgroups"} & set(selected):
        paths["parquet"] = ensure_data(args.data_dir, "parquet", rows, args.chunk_rows, log)
    if "sb-zarr" in selected:
        paths["zarr"] = ensure_data(args.data_dir, "zarr", rows, args.chunk_rows, log)
    counts = run_config({"module": "bench_peers", "kind": "label_counts", "npy_dir": npy}, 300)
    if "error" in counts:
        raise RuntimeError(f"reading the labels failed: {counts['error']}")
    expected = counts["counts"]

    prep_root = os.path.join(args.data_dir, "peers", f"rows{rows}")
    prep: dict[str, dict] = {}
    mosaic_py = None
    if "mosaic" in selected:
        venv = ensure_mosaic_venv(args.data_dir, log)
        prep["mosaic-venv"] = venv
        mosaic_py = venv.get("python")
    for key in selected:
        kind = PREP_OF.get(key)
        if kind is None or kind in prep:
            continue
        if kind == "mds" and mosaic_py is None:
            prep[kind] = {"error": prep["mosaic-venv"]["error"]}
            continue
        dest = os.path.join(prep_root, {"convert": "sb-convert-shuffled", "hf": "hf-arrow", "mds": "mds"}[kind])
        prep[kind] = ensure_prepared(kind, npy, dest, 7200, log, mosaic_py if kind == "mds" else None)

    def spec(key: str):
        """(spec, python) of a peer, or an error dict when its preparation failed."""
        base = {"cap_s": cap, "expected": expected}
        if key == "numpy-perm":
            return {"module": "bench_measure", "kind": "permutation", "path": npy, "fmt": "npy"}, None
        if key == "pyarrow-rowgroups":
            return {"module": "bench_measure", "kind": "sequential", "path": paths["parquet"], "fmt": "parquet"}, None
        if key == "torch-tensor":
            return {"module": "bench_peers", "kind": "torch_tensor", "npy_dir": npy, **base}, None
        if key.startswith("torch-mmap-"):
            _, _, mode, w = key.split("-")
            m = {"module": "bench_peers", "kind": "torch_mmap", "npy_dir": npy, "mode": mode, "workers": int(w[1:])}
            return {**m, **base}, None
        kind = PREP_OF.get(key)
        if kind and "error" in prep[kind]:
            return {"error": prep[kind]["error"], "not_installed": prep[kind].get("not_installed", False)}, None
        if key == "hf-iterable":
            return {"module": "bench_peers", "kind": "hf", "hf_dir": prep["hf"]["path"], **base}, None
        if key == "mosaic":
            return {"module": "bench_peers", "kind": "mosaic", "mds_dir": prep["mds"]["path"], **base}, mosaic_py
        fmt_path = {"sb-npy": npy, "sb-zarr": paths.get("zarr"), "sb-parquet": prep.get("convert", {}).get("path")}
        m = {"module": "bench_peers", "kind": "streambatch", "path": fmt_path[key], "memory_limit": args.memory_limit}
        return {**m, **base}, None

    runs: dict[str, list[dict]] = {key: [] for key in selected}
    for rnd in range(args.repeat):  # round-robin, so drift on a shared machine hits every peer alike
        for key in selected:
            s, python = spec(key)
            if "error" in s:
                if not rnd:
                    runs[key].append(s)
                    log(f"  peer {key:20s} error: {s['error'][:160]}")
                continue
            for p in (s.get("path"), s.get("npy_dir"), s.get("hf_dir"), s.get("mds_dir")):
                if p:
                    warm(p, again=True)  # right before each peer: the machine is shared
            r = run_config(s, timeout, python)
            if key == "numpy-perm" and "error" not in r:  # bench's worker: its load into RAM is this peer's setup
                r["setup_s"] = r.get("load_s")
            runs[key].append(r)
            if "error" in r:
                log(f"  [{rnd + 1}/{args.repeat}] peer {key:20s} error: {r['error'][:160]}")
            else:
                part = " (partial)" if r.get("partial") else ""
                score = f", score {r['score']:.2f}" if r.get("score") is not None else ""
                log(
                    f"  [{rnd + 1}/{args.repeat}] peer {key:20s} {r['rows'] / r['seconds']:>12,.0f} rows/s{part}"
                    f"{score}, peak {fmt_bytes(r['peak_rss_bytes'])}"
                )
    results = {key: _median_run(rs) for key, rs in runs.items()}

    versions = run_config(
        {"module": "bench_peers", "kind": "versions", "names": ["torch", "datasets", "huggingface-hub", "pyarrow"]}, 120
    )
    if mosaic_py:
        versions["mosaic"] = run_config(
            {
                "module": "bench_peers",
                "kind": "versions",
                "names": ["mosaicml-streaming", "torch", "torchvision", "numpy"],
            },
            120,
            mosaic_py,
        )
    return {
        "kind": "peers",
        "rows": rows,
        "data_bytes": rows * ROW_BYTES,
        "chunk_rows": args.chunk_rows,
        "memory_limit": args.memory_limit,
        "peer_seconds": cap,
        "expected_counts": expected,
        "peers": selected,
        "repeat": args.repeat,
        "prep": prep,
        "results": results,
        "versions": versions,
        "seconds": time.perf_counter() - t_start,
    }


def _median_run(rs: list[dict]) -> dict:
    """The run with the median rows/s (its other figures come with it), plus every run's rows/s
    and the highest peak RSS of all runs; an error when no run succeeded."""
    ok = sorted((r for r in rs if "error" not in r), key=lambda r: r["rows"] / r["seconds"])
    if not ok:
        return rs[0]
    pick = dict(ok[(len(ok) - 1) // 2])
    pick["rates"] = [r["rows"] / r["seconds"] for r in ok]
    pick["runs"], pick["failed_runs"] = len(ok), len(rs) - len(ok)
    pick["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
    return pick
