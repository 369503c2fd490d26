"""The machine's limits for a shuffled ``.npy`` epoch, measured beside streambatch
in the same rounds (``python scripts/bench.py --limits``).

On the standard 2 M-row dataset (float32[128] + int64 label, 520 bytes a row,
~1 GB, in the page cache), each in a fresh process (``benchlib.run_config``):

* ``pread`` — sequential positional reads of every byte into a reused 1 MiB
  buffer (``native.pread_ranges``), on 1 and 2 threads (each its half);
* ``take`` — random rows of a 256 MiB window gathered into fresh batches of 256 with
  ``ndarray.take``, 1 and 2 threads;
* ``gather`` — the same with ``native.gather``, one call per group of 8 batches
  into preallocated batches (what streambatch's batcher calls), 1 and 2 threads;
* ``pipeline`` — one thread reading random 2,016-row jobs of pieces into a
  256 MiB ring (``pread_ranges``), one thread gathering batches out of it, no
  other work: the ceiling for the two copies an epoch makes;
* ``permutation`` — the in-memory NumPy loop ``X[perm[i:i + 256]]`` over data
  already in RAM (its load not timed);
* ``streambatch`` — one shuffled epoch at ``memory_limit="256MiB"``, batch 256.

Each limit is reported as rows/s (bytes / 520) and streambatch's per-round ratio to it.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import cpu_times, ensure_data, run_config, steal_share

ROWS = 2_000_000
ROW_BYTES = 520
BATCH = 256
WINDOW_BYTES = 256 << 20
GROUP = 8
JOB_ROWS = 2016
PIECE_ROWS = 183  # ~11 pieces a job, as streambatch's plan at 256 MiB


def _threads(count: int, work) -> float:
    """Seconds for ``work(k)`` on ``count`` threads at once."""
    threads = [threading.Thread(target=work, args=(k,)) for k in range(count)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t0


def work_pread(path: str, threads: int) -> dict:
    import numpy as np

    from streambatch import native

    names = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".npy")]
    sizes = [os.path.getsize(n) for n in names]
    fds = [os.open(n, os.O_RDONLY) for n in names]
    block = 1 << 20

    def read(k: int) -> None:
        buffer = np.empty(block, np.uint8)
        view = memoryview(buffer)
        for fd, size in zip(fds, sizes):
            lo, hi = size * k // threads, size * (k + 1) // threads
            for at in range(lo, hi, block):
                n = min(block, hi - at)
                native.pread_ranges(fd, np.array([at]), np.array([n]), view[:n])

    try:
        seconds = _threads(threads, read)
    finally:
        for fd in fds:
            os.close(fd)
    return {"rows_per_s": sum(sizes) / ROW_BYTES / seconds}


def _window():
    import numpy as np

    rows = WINDOW_BYTES // ROW_BYTES
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, ROW_BYTES // 4), dtype=np.float32), rng


def work_take(threads: int, native_gather: bool) -> dict:
    import numpy as np

    from streambatch import native

    window, rng = _window()
    batches_per_thread = ROWS // BATCH // threads
    orders = [rng.integers(0, len(window), batches_per_thread * BATCH) for _ in range(threads)]

    def gather(k: int) -> None:
        order = orders[k]
        if not native_gather:
            for b in range(batches_per_thread):
                window.take(order[b * BATCH : (b + 1) * BATCH], axis=0)
            return
        for g in range(0, batches_per_thread, GROUP):
            n = min(GROUP, batches_per_thread - g)
            targets = [np.empty((BATCH, window.shape[1]), window.dtype) for _ in range(n)]
            native.gather([window], order[g * BATCH : (g + n) * BATCH], [targets])

    seconds = _threads(threads, gather)
    return {"rows_per_s": batches_per_thread * threads * BATCH / seconds}


def _slot(position: int, rows: int, capacity: int) -> tuple[int, int]:
    """Where a job of ``rows`` rows goes in the ring: at ``position``, or at slot 0 (the
    rest of the ring skipped) when it would wrap; the reader and the gatherer agree."""
    slot = position % capacity
    if slot + rows > capacity:
        return 0, position + capacity - slot
    return slot, position


def work_pipeline(path: str) -> dict:
    """A reader thread and a gathering thread over a ring, handing over job by job."""
    import numpy as np

    from streambatch import native

    x = os.path.join(path, "x.npy")
    header = os.path.getsize(x) - ROWS * 512
    fd = os.open(x, os.O_RDONLY)
    capacity = WINDOW_BYTES // ROW_BYTES
    ring = np.empty((capacity, 128), np.float32)
    ring_bytes = memoryview(ring.reshape(-1).view(np.uint8))
    rng = np.random.default_rng(0)
    pieces = rng.permutation(ROWS // PIECE_ROWS)
    per_job = JOB_ROWS // PIECE_ROWS
    jobs = [pieces[i : i + per_job] for i in range(0, len(pieces), per_job)]
    loaded = threading.Semaphore(0)
    free = threading.Semaphore(capacity // JOB_ROWS - 1)

    def read() -> None:
        position = 0
        for job in jobs:
            free.acquire()
            n = len(job) * PIECE_ROWS
            slot, position = _slot(position, n, capacity)
            offsets = header + job.astype(np.int64) * PIECE_ROWS * 512
            sizes = np.full(len(job), PIECE_ROWS * 512, np.int64)
            positions = slot * 512 + np.arange(len(job), dtype=np.int64) * PIECE_ROWS * 512
            native.pread_ranges(fd, offsets, sizes, ring_bytes, positions)
            position += n
            loaded.release()

    def gather() -> None:
        position = 0
        for job in jobs:
            loaded.acquire()
            n = len(job) * PIECE_ROWS
            slot, position = _slot(position, n, capacity)
            order = slot + rng.permutation(n)
            full = n // BATCH
            targets = [np.empty((BATCH, 128), np.float32) for _ in range(full)]
            native.gather([ring], order[: full * BATCH], [targets])
            position += n
            free.release()

    t0 = time.perf_counter()
    reader = threading.Thread(target=read)
    reader.start()
    gather()
    reader.join()
    seconds = time.perf_counter() - t0
    os.close(fd)
    return {"rows_per_s": len(pieces) * PIECE_ROWS / seconds}


def work_permutation(path: str) -> dict:
    import numpy as np

    x = np.load(os.path.join(path, "x.npy"))
    label = np.load(os.path.join(path, "label.npy"))
    perm = np.random.default_rng(0).permutation(len(x))
    t0 = time.perf_counter()
    for i in range(0, len(x), BATCH):
        index = perm[i : i + BATCH]
        x[index], label[index]
    return {"rows_per_s": len(x) / (time.perf_counter() - t0)}


def work_streambatch(path: str) -> dict:
    import streambatch as sb

    loader = sb.Loader(path, BATCH, memory_limit="256MiB", seed=0)
    c0, t0 = os.times(), time.perf_counter()
    rows = sum(len(batch["label"]) for batch in loader)
    seconds, c1 = time.perf_counter() - t0, os.times()
    return {"rows_per_s": rows / seconds, "rows_per_cpu_s": rows / ((c1.user - c0.user) + (c1.system - c0.system))}


WORKERS = {
    "pread": work_pread,
    "take": work_take,
    "pipeline": work_pipeline,
    "permutation": work_permutation,
    "streambatch": work_streambatch,
}


def limits_run(args, log) -> dict:
    path = ensure_data(args.data_dir, "npy", ROWS, 8192, log)
    configs = {
        "sequential pread into a reused 1 MiB buffer, 1 thread": {"kind": "pread", "path": path, "threads": 1},
        "sequential pread into a reused 1 MiB buffer, 2 threads": {"kind": "pread", "path": path, "threads": 2},
        "random rows of a 256 MiB window into fresh batches, ndarray.take, 1 thread": {
            "kind": "take",
            "threads": 1,
            "native_gather": False,
        },
        "the same, 2 threads": {"kind": "take", "threads": 2, "native_gather": False},
        "the same with native.gather, a call per 8 batches, 1 thread": {
            "kind": "take",
            "threads": 1,
            "native_gather": True,
        },
        "the same with native.gather, 2 threads": {"kind": "take", "threads": 2, "native_gather": True},
        "one thread reading jobs into a ring + one gathering batches (the ceiling for two copies)": {
            "kind": "pipeline",
            "path": path,
        },
        "in-memory permutation X[perm[i:i+256]] (data already in RAM)": {"kind": "permutation", "path": path},
        "streambatch, shuffled, 256 MiB": {"kind": "streambatch", "path": path},
    }
    counters = cpu_times()
    rounds: list[dict[str, dict]] = []
    for r in range(args.repeat):
        results = {}
        for name, spec in configs.items():
            result = run_config({"module": "bench_limits", **spec}, args.timeout)
            if "error" in result:
                raise SystemExit(f"{name}: {result['error']}")
            results[name] = result
            log(f"limits round {r + 1}: {name}: {result['rows_per_s'] / 1e6:.2f} M rows/s")
        rounds.append(results)
    return {"rounds": rounds, "steal": steal_share(counters, cpu_times())}


def limits_tables(res: dict) -> str:
    rounds = res["rounds"]
    ours = "streambatch, shuffled, 256 MiB"
    lines = [
        "| limit | rows/s (median) | streambatch ÷ limit, per round |",
        "|---|---:|---|",
    ]
    for name in rounds[0]:
        rates = [r[name]["rows_per_s"] for r in rounds]
        ratios = " ".join(f"{r[ours]['rows_per_s'] / r[name]['rows_per_s']:.2f}" for r in rounds)
        lines.append(f"| {name} | {statistics.median(rates) / 1e6:.2f} M | {ratios} |")
    per_cpu = statistics.median(r[ours]["rows_per_cpu_s"] for r in rounds)
    lines.append("")
    lines.append(f"streambatch: {per_cpu / 1e6:.2f} M rows per CPU-second (median).")
    lines.append(f"CPU time stolen by the hypervisor during the run: {res.get('steal', 'unknown')}.")
    return "\n".join(lines)
