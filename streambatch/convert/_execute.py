"""Where shard tasks run (this process, a spawn process pool, a Dask cluster) and
the optional progress bar. Every runner yields manifest entries as shards finish;
the caller journals them, so the order of completion does not matter."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from .._units import format_bytes
from ._shards import ShardTask, write_shard

__all__ = ["progress_bar", "run_dask", "run_processes"]


def run_processes(workers: int, tasks: list[ShardTask]) -> Iterator[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        # at most 2 tasks per worker in flight, so a failure stops the run early
        queue = list(reversed(tasks))
        running: set[Any] = set()
        try:
            while queue or running:
                while queue and len(running) < 2 * workers:
                    running.add(pool.submit(write_shard, queue.pop()))
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in running:
                future.cancel()


def exit_with_parent(parent: int, interval: float = 0.2) -> None:
    """Pool initializer: the worker exits once ``parent`` (the converting process) is
    gone. A killed convert (SIGKILL, OOM) cannot shut its pool down, and its
    orphaned workers would otherwise wait on the task queue for ever, holding its
    stdout/stderr and its inputs open."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="streambatch-parent-watch", daemon=True).start()


def run_dask(address: str, tasks: list[ShardTask]) -> Iterator[dict[str, Any]]:
    try:
        from distributed import Client, as_completed
    except ImportError as e:
        raise ImportError("--scheduler needs dask.distributed: pip install 'streambatch[dask]'") from e
    with Client(address) as client:
        futures = client.map(write_shard, tasks, pure=False)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)


def progress_bar(progress: bool | None, total: int, row_nbytes: int) -> Any:
    import sys

    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return _Bar(
        tqdm(total=total, unit="rows", unit_scale=True, desc="convert", dynamic_ncols=True, file=sys.stderr), row_nbytes
    )


class _Bar:
    """tqdm counting rows, with bytes/s beside; shuffle pass 1 shows in the description."""

    def __init__(self, bar: Any, row_nbytes: int) -> None:
        self.bar, self.row_nbytes, self.started, self.scattered = bar, row_nbytes, time.monotonic(), 0

    def scatter(self, rows: int) -> None:
        self.scattered += rows
        self.bar.set_description(f"shuffle pass 1: {self.scattered / max(1, self.bar.total):.0%}")

    def update(self, rows: int) -> None:
        if self.scattered:
            self.bar.set_description("convert")
        self.bar.update(rows)
        rate = self.bar.n * self.row_nbytes / max(1e-9, time.monotonic() - self.started)
        self.bar.set_postfix_str(f"{format_bytes(rate)}/s")

    def close(self) -> None:
        self.bar.close()
