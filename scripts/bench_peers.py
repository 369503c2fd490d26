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
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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
REQ_PEERS = "scripts/requirements-peers.txt"
REQ_MOSAIC = os.path.join(SCRIPTS, "requirements-mosaic.txt")
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("WARNING: Location")]
        return " | ".join(lines[-n:])[:300]
    except OSError:
        return "?"


def ensure_mosaic_venv(data_dir: str, log) -> dict:
    """``<data-dir>/venvs/mosaic``, made once: ``python -m venv`` + ``pip install -r scripts/requirements-mosaic.txt``.
    Re-installs (pip is a no-op when satisfied) when the requirements file changed."""
    venv = os.path.join(data_dir, "venvs", "mosaic")
    py = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".bench-installed.json")
    with open(REQ_MOSAIC) as f:
        req = f.read()
    if os.path.exists(marker):
        with open(marker) as f:
            info = json.load(f)
        if info.get("requirements") == req and os.path.exists(py):
            return {"python": py, **info}
    log(f"  peers: installing MosaicML Streaming into {venv} (once; torch+torchvision make it several GB)")
    t0 = time.perf_counter()
    install_log = os.path.join(data_dir, "venvs", "mosaic-install.log")
    os.makedirs(os.path.dirname(install_log), exist_ok=True)
    with open(install_log, "w") as out:
        steps = [[sys.executable, "-m", "venv", venv]] if not os.path.exists(py) else []
        steps.append([py, "-m", "pip", "install", "-r", REQ_MOSAIC])
        for cmd in steps:
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=3600).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                return {"error": f"installing the Mosaic venv failed ({rc}): {_tail(install_log)} (log: {install_log})"}
    info = {"requirements": req, "seconds": time.perf_counter() - t0, "made": _now()}
    with open(marker, "w") as f:
        json.dump(info, f)
    return {"python": py, **info}


def ensure_prepared(kind: str, npy_dir: str, dest: str, timeout: float, log, python: str | None = None) -> dict:
    """One-off conversion, cached under the data dir: ``{path, seconds, made}`` or ``{error}``."""
    marker = dest + ".done.json"
    if os.path.exists(marker) and os.path.exists(dest):
        with open(marker) as f:
            return {"path": dest, **json.load(f)}
    shutil.rmtree(dest, ignore_errors=True)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    log(f"  peers: preparing {kind} -> {dest} (once)")
    t0 = time.perf_counter()
    r = run_config({"module": "bench_peers", "kind": f"prep_{kind}", "npy_dir": npy_dir, "dest": tmp}, timeout, python)
    if "error" in r:
        shutil.rmtree(tmp, ignore_errors=True)
        return {
            "error": f"preparation ({kind}) failed: {r['error']}",
            **({"not_installed": True} if r.get("not_installed") else {}),
        }
    os.rename(tmp, dest)
    info = {"seconds": time.perf_counter() - t0, "made": _now(), "peak_rss_bytes": r.get("peak_rss_bytes")}
    with open(marker, "w") as f:
        json.dump(info, f)
    log(f"  peers: prepared {kind} in {info['seconds']:.0f} s")
    return {"path": dest, **info}


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
            return {"module": "bench", "kind": "permutation", "path": npy, "fmt": "npy"}, None
        if key == "pyarrow-rowgroups":
            return {"module": "bench", "kind": "sequential", "path": paths["parquet"], "fmt": "parquet"}, None
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


# ----------------------------------------------------------------------------- report


def _rate(r: dict) -> float | None:
    return r["rows"] / r["seconds"] if r.get("seconds") else None


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def _s(v) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.1f} ms" if v < 0.01 else f"{v * 1e3:,.0f} ms" if v < 1 else f"{v:,.1f} s"


def _prep_cell(res: dict, key: str) -> str:
    kind = PREP_OF.get(key)
    if key == "numpy-perm":
        return "—"
    if kind is None:
        return "—"
    p = res["prep"].get(kind, {})
    if "error" in p:
        return "failed"
    peak = f", peak RSS {fmt_bytes(p['peak_rss_bytes'])}" if p.get("peak_rss_bytes") else ""
    return f"{p['seconds']:,.0f} s{peak} (made {p['made']})"


def versions_line(res: dict) -> str:
    v = res.get("versions", {})
    parts = [f"torch {v.get('torch') or 'not installed'}", f"datasets {v.get('datasets') or 'not installed'}"]
    if v.get("huggingface-hub"):
        parts.append(f"huggingface-hub {v['huggingface-hub']}")
    m = v.get("mosaic")
    if m and "error" not in m:
        parts.append(
            f"mosaicml-streaming {m.get('mosaicml-streaming')} in its own venv (`<data-dir>/venvs/mosaic`: "
            f"torch {m.get('torch')}, torchvision {m.get('torchvision')}, numpy {m.get('numpy')}, "
            f"Python {m.get('python')})"
        )
    else:
        parts.append("mosaicml-streaming not run")
    return "- Peers: " + ", ".join(parts)


def _runs_text(res: dict) -> str:
    n = res.get("repeat", 1)
    if n == 1:
        return "one run each"
    return (
        f"{n} runs each, round-robin; shown: the run with the median rows/s (its setup, first batch and score), "
        "the range of rows/s over the runs in brackets, and the highest peak RSS of the runs"
    )


def _range(r: dict) -> str:
    rates = r.get("rates") or []
    return f" ({_fmt_rate(min(rates))}–{_fmt_rate(max(rates))})" if len(rates) > 1 else ""


def tables(res: dict) -> str:
    out = [
        f"{res['rows']:,} rows × (float32[128] + int64 label) = {res['data_bytes'] / 1e9:.2f} GB, labels sorted in "
        f"{NUM_CLASSES} classes; batch {BATCH}; warm page cache; each peer in its own fresh process, "
        f"{_runs_text(res)}; "
        "every peer hands NumPy arrays to the same consumer (torch tensors via `.numpy()`). "
        "*Setup* = construct → ready to iterate (for the in-memory peers it includes loading the data into RAM); "
        "*first batch* = from the start of iteration to the first batch in hand; *rows/s* = rows consumed ÷ "
        f"iteration time (setup excluded). Peers still running after {res['peer_seconds']:g} s of iteration are "
        "stopped there (*partial*): rows/s is over the rows consumed and the score is taken against the full "
        "dataset's class histogram. *Peak RSS* is the peer process's `ru_maxrss`; where a DataLoader has worker "
        "processes, the peak RSS of its descendant processes (the sum of each one's `VmHWM`, read from `/proc` while "
        "they run) is shown separately — it counts the page-cache pages of a memory-mapped file in every process "
        "that touched them, "
        "and pages shared with the parent after `fork`, so it over-states what the workers add. Likewise a process "
        "that memory-maps the data counts the file pages it touched (page cache, reclaimable) in its own RSS. "
        "*Preparation* is the one-off conversion the peer needs, cached under the data dir.\n",
        "| peer | preparation | setup | first batch | rows/s | rows | peak RSS | workers' peak RSS | score | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in res["peers"]:
        label = PEERS[key][0]
        r = res["results"].get(key, {"error": "not run"})
        if "error" in r:
            what = "not installed" if r.get("not_installed") else "error"
            out.append(f"| {label} | {_prep_cell(res, key)} | | | {what} | | | | | `{r['error'][:200]}` |")
            continue
        notes = []
        if r.get("partial"):
            notes.append(f"**partial**: stopped after {res['peer_seconds']:g} s ({r['rows'] / r['total_rows']:.0%})")
        if key == "pyarrow-rowgroups":
            notes.append(
                f"whole row groups of {res['chunk_rows']:,} rows handed on (not cut into {BATCH}-row batches); "
                "setup included in first batch"
            )
        if key == "numpy-perm":
            notes.append("setup = `np.load` into RAM")
        if key == "torch-tensor":
            notes.append("setup = `np.load` into RAM")
        if key.startswith("sb-"):
            notes.append(f"memory_limit {res['memory_limit']}, window {r['window_pieces']} pieces")
        if key == "mosaic":
            block = r.get("shuffle_block_size")
            notes.append(
                f"shuffle_algo {r.get('shuffle_algo')}" + (f", block {block:,}" if block else ", default block")
            )
        if key == "hf-iterable":
            notes.append("Arrow files written by `Dataset.from_dict(...).save_to_disk`, read by `load_from_disk`")
        if (r.get("rss_file_end_bytes") or 0) > (128 << 20):
            notes.append(
                f"RSS at the end: {fmt_bytes(r['rss_anon_end_bytes'])} anonymous + "
                f"{fmt_bytes(r['rss_file_end_bytes'])} file-backed (memory-mapped data and libraries)"
            )
        vm = r.get("vmhwm_bytes")
        if vm and abs(vm - r["peak_rss_bytes"]) > (32 << 20):
            notes.append(f"VmHWM {fmt_bytes(vm)}")
        workers = (
            f"{fmt_bytes(r['workers_peak_rss_bytes'])} ({r['workers_seen']} proc.)"
            if "workers_peak_rss_bytes" in r
            else "—"
        )
        score = f"{r['score']:.2f}" if r.get("score") is not None else "— (no shuffle)"
        out.append(
            f"| {label} | {_prep_cell(res, key)} | {_s(r.get('setup_s'))} | {_s(r.get('first_batch_s'))} "
            f"| {_fmt_rate(_rate(r))}{_range(r)}{' (partial)' if r.get('partial') else ''} | {r['rows']:,} "
            f"| {fmt_bytes(r['peak_rss_bytes'])} | {workers} | {score} | {'; '.join(notes)} |"
        )
    return "\n".join(out)


def reading(res: dict) -> list[str]:
    """Statements computed from the numbers."""
    R = {k: r for k, r in res["results"].items() if "error" not in r and r.get("seconds")}
    lines = []
    name = SHORT.get
    shuffled = {k: r for k, r in R.items() if r.get("score") is not None}
    sb = {k: r for k, r in shuffled.items() if k.startswith("sb-")}
    good = {k: r for k, r in shuffled.items() if r["score"] <= GOOD_SCORE}
    sb_good = {k: r for k, r in good.items() if k.startswith("sb-")}
    if sb_good:
        best_sb = max(sb_good, key=lambda k: _rate(sb_good[k]))
        rate_sb = _rate(sb_good[best_sb])
        faster = sorted(
            (k for k, r in good.items() if not k.startswith("sb-") and _rate(r) > rate_sb),
            key=lambda k: -_rate(good[k]),
        )
        lines.append(
            f"- Fastest streambatch configuration that shuffles well (score ≤ {GOOD_SCORE}): {name(best_sb)} at "
            f"{_fmt_rate(rate_sb)} rows/s (score {sb_good[best_sb]['score']:.2f}). "
            + (
                "Well-shuffling peers faster than it: "
                + ", ".join(f"{name(k)} ({_fmt_rate(_rate(good[k]))})" for k in faster)
                + "."
                if faster
                else "No well-shuffling peer was faster."
            )
        )
        streaming = {k: r for k, r in good.items() if not k.startswith("sb-") and k not in IN_RAM}
        if streaming:
            best = max(streaming, key=lambda k: _rate(streaming[k]))
            lines.append(
                "- Among the peers that do not load the whole dataset into RAM first, the fastest that shuffles well "
                f"is {name(best)} at {_fmt_rate(_rate(streaming[best]))} rows/s "
                f"(score {streaming[best]['score']:.2f}, peak RSS {fmt_bytes(streaming[best]['peak_rss_bytes'])}); "
                f"{name(best_sb)} runs at {rate_sb / _rate(streaming[best]):.2f}× that."
            )
    inram = [k for k in IN_RAM if k in R]
    if inram and sb:
        lines.append(
            "- Memory: "
            + ", ".join(f"{name(k)} peaks at {fmt_bytes(R[k]['peak_rss_bytes'])}" for k in inram)
            + f" (the data is {fmt_bytes(res['data_bytes'])}); "
            + f"streambatch at memory_limit {res['memory_limit']} peaks at "
            + ", ".join(f"{fmt_bytes(r['peak_rss_bytes'])} ({k[3:]})" for k, r in sb.items())
            + "."
        )
    bad = [k for k, r in shuffled.items() if r["score"] > GOOD_SCORE]
    if bad:
        lines.append(
            "- Shuffle quality: "
            + ", ".join(f"{name(k)} scores {shuffled[k]['score']:.2f}" for k in bad)
            + " (1.0 = a full permutation; an unshuffled pass ≈ 12)"
            + (
                "; the others score {:.2f}–{:.2f}.".format(
                    min(r["score"] for k, r in shuffled.items() if k not in bad),
                    max(r["score"] for k, r in shuffled.items() if k not in bad),
                )
                if len(bad) < len(shuffled)
                else "."
            )
        )
    partial = [k for k, r in R.items() if r.get("partial")]
    if partial:
        lines.append(
            "- Stopped after "
            + f"{res['peer_seconds']:g} s (their rows/s and score cover only the rows consumed): "
            + ", ".join(f"{name(k)} ({R[k]['rows'] / R[k]['total_rows']:.0%} of the epoch)" for k in partial)
            + "."
        )
    w = [(k, R[k]) for k in R if "workers_peak_rss_bytes" in R[k]]
    for k, r in w:
        base = k.replace("-w2", "-w0")
        if base in R and base != k:
            lines.append(
                f"- {name(k)}: {_rate(r) / _rate(R[base]):.2f}× the rows/s of the same loader with 0 workers "
                f"(on {res.get('env', {}).get('cores', '?')} cores)."
            )
    preps = [(k, p) for k, p in res["prep"].items() if k in ("convert", "hf", "mds") and "seconds" in p]
    if preps:
        what = {"convert": "`streambatch convert --shuffle`", "hf": "the HF Arrow dataset", "mds": "MDS (`MDSWriter`)"}
        lines.append("- One-off preparation: " + ", ".join(f"{what[k]} {p['seconds']:,.0f} s" for k, p in preps) + ".")
    failed = [k for k, r in res["results"].items() if "error" in r]
    if failed:
        lines.append(
            "- Not measured: " + "; ".join(f"{name(k)} — {res['results'][k]['error'][:160]}" for k in failed) + "."
        )
    return lines


def plot(res: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "0.55", "torch": "C1", "hf": "C2", "mosaic": "C4", "streambatch": "C0"}
    keys = [k for k in res["peers"] if (_rate(res["results"].get(k, {})) or 0) > 0]
    if not keys:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.42 * len(keys) + 1.6), dpi=110, sharey=True)
    ys = list(range(len(keys)))[::-1]
    for y, k in zip(ys, keys):
        r = res["results"][k]
        c = colors[PEERS[k][1]]
        hatch = "//" if r.get("partial") else None
        a1.barh(y, _rate(r), color=c, hatch=hatch, edgecolor="k" if hatch else None, lw=0.5)
        score = "no shuffle" if r.get("score") is None else f"score {r['score']:.2f}"
        a1.text(_rate(r) * 1.08, y, score, va="center", fontsize=7)
        a2.barh(y, r["peak_rss_bytes"] / 2**20, color=c)
        if r.get("workers_peak_rss_bytes"):
            a2.barh(y, r["workers_peak_rss_bytes"] / 2**20, left=r["peak_rss_bytes"] / 2**20, color=c, alpha=0.35)
    a1.set_xscale("log")
    a1.set_yticks(ys)
    a1.set_yticklabels([SHORT[k] for k in keys], fontsize=8)
    lo = min(_rate(res["results"][k]) for k in keys)
    hi = max(_rate(res["results"][k]) for k in keys)
    a1.set_xlim(lo / 2, hi * 6)
    a1.set_xlabel("rows/s (log scale; hatched = partial epoch)")
    a2.set_xlabel("peak RSS, MiB (light = DataLoader workers' sum)")
    a2.axvline(res["data_bytes"] / 2**20, color="k", ls=":", lw=0.8)
    a2.text(res["data_bytes"] / 2**20, ys[0] + 0.6, " data size", fontsize=7, va="bottom")
    for a in (a1, a2):
        a.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"Peers: {res['rows']:,} rows ({res['data_bytes'] / 1e9:.2f} GB), batch {BATCH}, shuffled, warm cache",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
