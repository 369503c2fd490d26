"""Remote-storage test machinery: a fault-injecting fsspec filesystem (``flaky://``)
and helpers to put a local dataset onto a remote filesystem.

``FlakyFS`` is an in-memory filesystem with its own global store. Faults hit data
reads only (``cat_file``, which every reader's remote path and zarr's store use),
never metadata (``info``, ``ls``, ``open`` for headers and footers, zarr's
``zarr.json``), because metadata is read once when a dataset is opened. Faults are
deterministic: a shared counter numbers the data requests, and every
``every``-th one is hit.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from typing import Any, ClassVar

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

__all__ = ["FlakyFS", "upload"]

_METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


class FlakyFS(MemoryFileSystem):
    """``flaky://`` URLs: memory storage whose data reads fail, come back short or
    sleep, as the class attributes say (set them through ``configure``)."""

    protocol = ("flaky",)
    root_marker = "/"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    # --- fault configuration (class-wide, reset by ``configure``) ---------
    mode: ClassVar[str] = "ok"  # ok | reset | short | sleep | random_sleep | missing | always | timeout
    every: ClassVar[int] = 5
    delay: ClassVar[float] = 0.0
    message: ClassVar[str] = "connection reset by peer"
    seed: ClassVar[int] = 0

    # --- counters ---------------------------------------------------------
    lock: ClassVar[threading.Lock] = threading.Lock()
    requests: ClassVar[int] = 0
    injected: ClassVar[int] = 0
    calls: ClassVar[collections.Counter[tuple[str, int | None, int | None]]] = collections.Counter()
    _rng: ClassVar[random.Random] = random.Random(0)

    @classmethod
    def configure(
        cls, mode: str = "ok", every: int = 5, delay: float = 0.0, message: str | None = None, seed: int = 0
    ) -> None:
        with cls.lock:
            cls.mode, cls.every, cls.delay, cls.seed = mode, every, delay, seed
            cls.message = message or "connection reset by peer"
            cls.requests = 0
            cls.injected = 0
            cls.calls = collections.Counter()
            cls._rng = random.Random(seed)

    @classmethod
    def reset(cls) -> None:
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]
        cls.configure()

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if path.rsplit("/", 1)[-1] in _METADATA_NAMES:
            return super().cat_file(path, start, end, **kwargs)
        cls = type(self)
        with cls.lock:
            cls.requests += 1
            cls.calls[(path, start, end)] += 1
            number = cls.requests
            every_time = cls.mode in ("always", "missing", "sleep", "random_sleep")
            hit = cls.mode != "ok" and (every_time or number % cls.every == 0)
            if hit and cls.mode not in ("sleep", "random_sleep"):
                cls.injected += 1
            pause = 0.0
            if cls.mode == "sleep":
                pause = cls.delay
            elif cls.mode == "random_sleep":
                pause = cls._rng.uniform(0, cls.delay)
        if pause:
            time.sleep(pause)
        if hit:
            if cls.mode in ("reset", "always"):
                raise ConnectionResetError(104, cls.message)
            if cls.mode == "timeout":
                raise TimeoutError(f"read timed out: {cls.message}")
            if cls.mode == "missing":
                raise FileNotFoundError(path)
        data = super().cat_file(path, start, end, **kwargs)
        if hit and cls.mode == "short":
            return data[: len(data) // 2]
        return data


fsspec.register_implementation("flaky", FlakyFS, clobber=True)


def upload(local_dir: str, fs: fsspec.AbstractFileSystem, target: str) -> None:
    """Copy the tree ``local_dir`` to ``target`` on ``fs`` (file by file, so that
    every filesystem, including in-memory ones, gets the same layout)."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for name in files:
            dest = target.rstrip("/") + "/" + (name if rel == "." else f"{rel}/{name}")
            with open(os.path.join(root, name), "rb") as f:
                fs.pipe_file(dest, f.read())
