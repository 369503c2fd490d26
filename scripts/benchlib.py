"""Shared harness of the benchmark scripts: generated data, one fresh process per
measured configuration, the per-batch consumer every configuration runs, and the
environment block printed with every result.

A configuration is a JSON spec ``{"module": ..., "kind": ..., **kwargs}``: ``run_config``
runs ``module.WORKERS[kind](**kwargs)`` in a fresh interpreter (optionally another
virtual environment's) so peak RSS is per configuration, and returns its result dict
plus ``cpu_s``, ``peak_rss_bytes`` and ``vmhwm_bytes``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

BATCH = 256
NUM_CLASSES = 10
ROW_BYTES = 128 * 4 + 8  # float32[128] + int64 label
CHECK_EVERY = 16  # check x[:, 0] == label on every 16th batch (same work in every config)
RSS_SLACK = 300 << 20  # the documented contract: peak RSS <= memory_limit + 300 MiB
FORMATS = ("npy", "parquet", "zarr")


def dataset_path(data_dir: str, fmt: str, rows: int, chunk_rows: int) -> str:
    """Where ``fmt`` data of ``rows`` rows lives; npy does not depend on the chunk size."""
    sub = f"rows{rows}" if fmt == "npy" else f"rows{rows}-chunk{chunk_rows}"
    leaf = {"npy": "npy", "parquet": "data.parquet", "zarr": "data.zarr"}[fmt]
    return os.path.join(os.path.abspath(data_dir), fmt, sub, leaf)


def work_generate(fmt: str, parent: str, rows: int, chunk_rows: int) -> dict:
    """``streambatch.demo.generate``. Zarr: ``write_empty_chunks`` is forced on, because the
    demo's ZarrWriter uses fill_value=0 and zarr then skips the all-zero first ``label``
    chunk, which streambatch's Zarr reader (rightly) rejects as missing."""
    from streambatch.demo import generate

    if fmt == "zarr":
        import zarr

        with zarr.config.set({"array.write_empty_chunks": True}):
            out = generate(fmt, parent, rows, chunk_rows)
    else:
        out = generate(fmt, parent, rows, chunk_rows)
    return {"path": out}


def ensure_data(data_dir: str, fmt: str, rows: int, chunk_rows: int, log) -> str:
    """Generate once (in a subprocess, to keep this process small); a ``.done`` marker guards partial writes."""
    path = dataset_path(data_dir, fmt, rows, chunk_rows)
    parent = os.path.dirname(path)
    marker = os.path.join(parent, ".done")
    if os.path.exists(marker):
        return path
    import shutil

    shutil.rmtree(parent, ignore_errors=True)
    os.makedirs(parent, exist_ok=True)
    t0 = time.perf_counter()
    r = run_config(
        {
            "module": "benchlib",
            "kind": "generate",
            "fmt": fmt,
            "parent": parent,
            "rows": rows,
            "chunk_rows": chunk_rows,
        },
        3600,
    )
    if "error" in r:
        raise RuntimeError(f"generating {fmt} failed: {r['error']}")
    out = r["path"]
    assert os.path.abspath(out) == path, (out, path)
    with open(marker, "w") as f:
        f.write(f"{rows} {chunk_rows}\n")
    log(f"  generated {fmt} ({rows:,} rows, chunk {chunk_rows}) in {time.perf_counter() - t0:.1f} s: {path}")
    return path


_warmed: set[str] = set()


def warm(path: str, again: bool = False) -> None:
    """Read every file under ``path`` once so the page cache is warm (``again``: even if this
    process warmed it before, e.g. when another process on the machine may drop caches)."""
    if path in _warmed and not again:
        return
    buf = bytearray(1 << 20)
    for name in files_under(path):
        with open(name, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    _warmed.add(path)


def files_under(path: str) -> list[str]:
    """``path`` itself if it is a file, else every file below it, sorted."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(name) for name in files_under(path))


def aggregate(rs: list[dict]) -> dict:
    """The runs of one configuration as one result: median rows/s (with min and max), the
    highest peak RSS, medians of the optional figures; an error if no run succeeded."""
    ok = [r for r in rs if "error" not in r]
    if not ok:
        return {"error": rs[0]["error"], "n": len(rs)}
    agg = {"n": len(ok), "errors": len(rs) - len(ok)}
    if ok[0].get("rows"):
        rates = [r["rows"] / r["seconds"] for r in ok]
        agg["rows_per_s"] = statistics.median(rates)
        agg["rows_per_s_min"], agg["rows_per_s_max"] = min(rates), max(rates)
        agg["rows"] = ok[0]["rows"]
    if ok[0].get("bytes"):
        agg["bytes_per_s"] = statistics.median(r["bytes"] / r["seconds"] for r in ok)
    agg["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
    agg["vmhwm_bytes"] = max(r.get("vmhwm_bytes", 0) for r in ok)
    agg["cpu_s"] = statistics.median(r["cpu_s"] for r in ok)
    for field in ("first_batch_s", "load_s", "score", "iter_cpu_s", "bytes_per_s_file"):
        vals = [r[field] for r in ok if r.get(field) is not None]
        if vals:
            agg[field] = statistics.median(vals)
    for field in ("window_pieces", "piece_rows", "ring_bytes", "threads"):
        if field in ok[0]:
            agg[field] = ok[0][field]
    return agg


class _Consumer:
    """The same per-batch work in every configuration: count rows, score labels,
    spot-check that x and label stay aligned.

    ``expected_counts`` (the full dataset's label histogram) scores a possibly partial epoch
    against the whole dataset rather than against the rows seen: a buffer shuffle over sorted
    data sees only the first classes early on, and the observed histogram would flatter it.
    On a full epoch both give the same score."""

    def __init__(self, score: bool, expected_counts=None) -> None:
        from streambatch.quality import ShuffleScore

        self.scorer = ShuffleScore(NUM_CLASSES, expected_counts) if score else None
        self.rows = 0
        self.batches = 0
        self.first = None

    def score(self) -> float | None:
        return self.scorer.score() if self.scorer is not None else None

    def __call__(self, x, label, t0: float) -> None:
        import numpy as np

        if self.first is None:
            self.first = time.perf_counter() - t0
        if self.batches % CHECK_EVERY == 0 and not np.array_equal(x[:, 0], label):
            raise AssertionError("x and label came apart")
        if self.scorer is not None:
            self.scorer.add(label)
        self.rows += len(label)
        self.batches += 1


def _arrow_tensor(chunked, field):
    """A FixedSizeBinary tensor column (streambatch's Parquet layout) or a primitive one, as NumPy."""
    import numpy as np

    from streambatch.sources._tensor import DTYPE_KEY, SHAPE_KEY

    meta = field.metadata or {}
    if DTYPE_KEY not in meta:
        return chunked.to_numpy()
    dtype = np.dtype(meta[DTYPE_KEY].decode())
    shape = tuple(json.loads(meta[SHAPE_KEY]))
    width = field.type.byte_width
    parts = []
    for arr in chunked.chunks:
        raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        raw = raw[arr.offset * width : (arr.offset + len(arr)) * width]
        parts.append(raw.view(dtype).reshape(len(arr), *shape))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def worker_main(spec: dict) -> None:
    """Run one configuration in this (fresh) process and print its result as one JSON line."""
    module = spec.pop("module", "benchlib")
    kind = spec.pop("kind")
    workers = WORKERS if module == "benchlib" else importlib.import_module(module).WORKERS
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    result = workers[kind](**spec)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    # ru_maxrss (KiB on Linux). Caveat: Linux carries the parent's RSS high-water mark across
    # exec into the child's ru_maxrss, so the parent (this script) stays small on purpose —
    # it imports neither numpy nor pyarrow — and VmHWM (this process's own mm) is kept as a check.
    result["peak_rss_bytes"] = c1.ru_maxrss * 1024
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        result["vmhwm_bytes"] = int(hwm.split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    print("BENCH-RESULT " + json.dumps(result), flush=True)


def run_config(spec: dict, timeout: float, python: str | None = None, code: str | None = None) -> dict:
    """Run one configuration in a fresh interpreter (``python``, default this one);
    errors become a result with ``error``. ``code``: a checkout whose ``streambatch``
    is imported instead of this one's (a baseline measured in the same run)."""
    cmd = [python or sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    path = os.pathsep.join([code or REPO, SCRIPTS, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    err = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    return {"error": (err[-1] if err else f"exit {done.returncode}")[:300]}


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def environment() -> dict:
    import numpy
    import pyarrow
    import zarr

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "streambatch"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    return {
        "cores": os.cpu_count(),
        "ram_gib": mem / 2**30,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "zarr": zarr.__version__,
        "commit": commit,
        "dirty": dirty.splitlines(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def code_fingerprint() -> str:
    """HEAD plus a hash of the uncommitted diff under streambatch/: tells whether the code
    under test changed during a run (other people may be editing this checkout)."""
    import hashlib

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "streambatch"], cwd=REPO, capture_output=True).stdout
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "--", "streambatch"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.split()
        h = hashlib.sha1(diff)
        for name in sorted(untracked):
            with open(os.path.join(REPO, name), "rb") as f:
                h.update(name.encode() + f.read())
        return f"{head}+{h.hexdigest()[:10]}" if diff or untracked else head
    except OSError:
        return "unknown"


def cpu_times() -> list[int]:
    """The machine's CPU time counters (``/proc/stat``'s first line), for :func:`steal_share`."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_share(start: list[int], end: list[int]) -> str:
    """The share of the machine's CPU time the hypervisor took between two
    :func:`cpu_times` (``steal``, the 8th counter): a virtual machine whose host is
    busy runs every thread slower, and multi-threaded work most."""
    if len(start) < 8 or len(end) < 8:
        return "unknown"
    total = sum(end) - sum(start)
    return f"{100 * (end[7] - start[7]) / total:.0f} %" if total > 0 else "unknown"


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def env_block(env: dict, command: str, loadavg_end: str | None = None, code_end: str | None = None) -> str:
    dirty = ""
    if env["dirty"]:
        dirty = (
            " (with uncommitted changes under `streambatch/`: "
            + ", ".join(f"`{d.strip()}`" for d in env["dirty"])
            + ")"
        )
    return (
        f"- Machine: {env['cores']} cores, {env['ram_gib']:.1f} GiB RAM, {env['cpu']}, Linux {env['kernel']}\n"
        f"- Python {env['python']}, numpy {env['numpy']}, pyarrow {env['pyarrow']}, zarr {env['zarr']}\n"
        f"- streambatch at commit `{env['commit']}`{dirty}; measured {env['date']}\n"
        f"- Command: `{command}`"
        + (
            f"\n- Load average (1/5/15 min) at start {env['loadavg_start']}, at end {loadavg_end}: "
            "a load above ~1 means other processes shared the 2 cores"
            if env.get("loadavg_start") and loadavg_end
            else ""
        )
        + (
            f"\n- Code fingerprint (HEAD + hash of uncommitted streambatch/ changes): `{env['code_start']}` at start, "
            f"`{code_end}` at end"
            + (" — **the code under test changed during the run**" if env["code_start"] != code_end else "")
            if env.get("code_start") and code_end
            else ""
        )
    )


def work_env() -> dict:
    return environment()


WORKERS = {"generate": work_generate, "env": work_env}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: benchlib.py --worker SPEC  (used by the bench_*.py scripts)")
