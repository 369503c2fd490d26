"""Remote-storage test machinery: a fault-injecting fsspec filesystem (``flaky://``)
and helpers to put a local dataset onto a remote filesystem.

``FlakyFS`` is an in-memory filesystem with its own global store. Every request
has a *kind*: ``data`` (``cat_file`` of a data byte range, which every reader's
remote path and zarr's chunk reads use), ``zarr-metadata`` (``cat_file`` of
``zarr.json`` and friends), ``open`` (``open``: footers, ``.npy`` headers,
manifests), ``metadata`` (``info``, behind ``exists``/``isdir``/``size``) and
``listing`` (``ls``, behind globs and directory scans). Faults hit the kinds in
``kinds`` (data only by default). They are deterministic: a shared counter
numbers the faultable requests and every ``every``-th one is hit (``burst``:
``burst`` requests in a row out of every ``every``), or, in mode ``first``, the
first request of each kind to each path fails once.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import threading
import time
from typing import Any, ClassVar

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractBufferedFile

__all__ = ["ALL_KINDS", "FlakyFS", "HangFS", "LatencyFS", "upload"]

_METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
_internal = threading.local()

#: Every kind of request ``FlakyFS`` can fail (``configure(kinds=("all",))``).
ALL_KINDS = ("data", "zarr-metadata", "open", "metadata", "listing")


class FlakyFS(MemoryFileSystem):
    """``flaky://`` URLs: memory storage whose data reads fail, come back short or
    sleep, as the class attributes say (set them through ``configure``)."""

    protocol = ("flaky",)
    root_marker = "/"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    # --- fault configuration (class-wide, reset by ``configure``) ---------
    mode: ClassVar[str] = "ok"  # ok | reset | short | sleep | random_sleep | missing | always | timeout | first | burst
    every: ClassVar[int] = 5
    burst: ClassVar[int] = 3
    kinds: ClassVar[frozenset[str]] = frozenset({"data"})
    delay: ClassVar[float] = 0.0
    message: ClassVar[str] = "connection reset by peer"
    seed: ClassVar[int] = 0

    # --- counters ---------------------------------------------------------
    lock: ClassVar[threading.Lock] = threading.Lock()
    requests: ClassVar[int] = 0
    injected: ClassVar[int] = 0
    calls: ClassVar[collections.Counter[tuple[str, int | None, int | None]]] = collections.Counter()
    kind_calls: ClassVar[collections.Counter[tuple[str, str]]] = collections.Counter()
    kind_faults: ClassVar[collections.Counter[str]] = collections.Counter()
    _rng: ClassVar[random.Random] = random.Random(0)

    @classmethod
    def configure(
        cls,
        mode: str = "ok",
        every: int = 5,
        delay: float = 0.0,
        message: str | None = None,
        seed: int = 0,
        kinds: tuple[str, ...] = ("data",),
        burst: int = 3,
    ) -> None:
        with cls.lock:
            cls.mode, cls.every, cls.delay, cls.seed, cls.burst = mode, every, delay, seed, burst
            cls.kinds = frozenset(ALL_KINDS if kinds == ("all",) else kinds)
            cls.kind_calls = collections.Counter()
            cls.kind_faults = collections.Counter()
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

    def _fault(self, kind: str, path: str) -> None:
        """Count a non-data request; raise the configured fault if it is hit."""
        cls = type(self)
        if getattr(_internal, "active", False):
            return
        with cls.lock:
            cls.kind_calls[(kind, path)] += 1
            if kind not in cls.kinds or cls.mode in ("ok", "short", "sleep", "random_sleep", "missing"):
                return
            cls.requests += 1
            hit = self._hit(kind, path, cls.requests)
            if hit:
                cls.injected += 1
                cls.kind_faults[kind] += 1
        if hit:
            if cls.mode == "timeout":
                raise TimeoutError(f"{kind} request timed out: {cls.message}")
            raise ConnectionResetError(104, f"{kind}: {cls.message}")

    @classmethod
    def _hit(cls, kind: str, path: str, number: int) -> bool:
        if cls.mode == "first":
            return cls.kind_calls[(kind, path)] == 1
        if cls.mode == "burst":
            return number % cls.every < cls.burst
        return cls.mode == "always" or number % cls.every == 0

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        self._fault("metadata", self._strip_protocol(path))
        return super().info(path, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        self._fault("listing", self._strip_protocol(path))
        return super().ls(path, detail=detail, **kwargs)

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode:
            self._fault("open", self._strip_protocol(path))
        _internal.active = True  # MemoryFileSystem._open asks isfile() of the parents: not our requests
        try:
            return super()._open(path, mode, *args, **kwargs)
        finally:
            _internal.active = False

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if path.rsplit("/", 1)[-1] in _METADATA_NAMES:
            self._fault("zarr-metadata", path)
            return super().cat_file(path, start, end, **kwargs)
        cls = type(self)
        with cls.lock:
            cls.calls[(path, start, end)] += 1
            cls.kind_calls[("data", path)] += 1
            pause = 0.0
            hit = False
            if "data" in cls.kinds:
                cls.requests += 1
                number = cls.requests
                every_time = cls.mode in ("always", "missing", "sleep", "random_sleep")
                if cls.mode == "first":
                    hit = cls.kind_calls[("data", path)] == 1
                elif cls.mode == "burst":
                    hit = number % cls.every < cls.burst
                else:
                    hit = cls.mode != "ok" and (every_time or number % cls.every == 0)
                if hit and cls.mode not in ("sleep", "random_sleep"):
                    cls.injected += 1
                    cls.kind_faults["data"] += 1
                if cls.mode == "sleep":
                    pause = cls.delay
                elif cls.mode == "random_sleep":
                    pause = cls._rng.uniform(0, cls.delay)
        if pause:
            time.sleep(pause)
        if hit:
            if cls.mode in ("reset", "always", "first", "burst"):
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


class HangFS(AsyncFileSystem):
    """``hang:///abs/path``: local files behind an *asynchronous* filesystem (as
    s3fs, gcsfs and HTTP are) whose chosen requests hang for ``hang`` seconds,
    like a server that accepted a request and went silent. ``hang_kinds`` are
    hung once each (the first ``info``, ``ls``, data ``cat_file`` and Zarr
    document request); ``always=True`` hangs every data request. Counts the
    hung requests that were cancelled (``RetryPolicy.timeout``) in ``cancelled``."""

    protocol = ("hang",)
    root_marker = "/"
    hang: ClassVar[float] = 30.0
    always: ClassVar[bool] = False
    hang_kinds: ClassVar[set[str]] = set()
    hung: ClassVar[list[str]] = []
    cancelled: ClassVar[int] = 0

    @classmethod
    def configure(cls, kinds: tuple[str, ...] = (), always: bool = False, hang: float = 30.0) -> None:
        cls.hang_kinds, cls.always, cls.hang, cls.hung, cls.cancelled = set(kinds), always, hang, [], 0

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = path[len("hang://") :] if path.startswith("hang://") else path
        return "/" + path.lstrip("/") if path else "/"

    async def _maybe_hang(self, kind: str) -> None:
        cls = type(self)
        if (cls.always and kind == "data") or kind in cls.hang_kinds:
            cls.hang_kinds.discard(kind)
            cls.hung.append(kind)
            try:
                await asyncio.sleep(cls.hang)
            except asyncio.CancelledError:
                cls.cancelled += 1
                raise

    def _read(self, path: str, start: int | None, end: int | None) -> bytes:
        size = os.path.getsize(path)
        start = 0 if start is None else (start + size if start < 0 else start)
        end = size if end is None else (end + size if end < 0 else min(end, size))
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        await self._maybe_hang("zarr-metadata" if path.rsplit("/", 1)[-1] in _METADATA_NAMES else "data")
        return self._read(path, start, end)

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        await self._maybe_hang("metadata")
        path = self._strip_protocol(path)
        info = fsspec.filesystem("file").info(path)
        return {**info, "name": path}

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        await self._maybe_hang("listing")
        entries = fsspec.filesystem("file").ls(self._strip_protocol(path), detail=True)
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any) -> Any:
        return _LocalRangeFile(self, self._strip_protocol(path), mode, block_size or 5 * 2**20)


class _LocalRangeFile(AbstractBufferedFile):
    """Reads through a file object are not bounded by ``RetryPolicy.timeout``: never hung."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs._read(self.path, start, end)


fsspec.register_implementation("hang", HangFS, clobber=True)


class LatencyFS(HangFS):
    """``latency:///abs/path``: local files behind an asynchronous filesystem whose
    data requests each wait ``latency`` seconds (uniform in ``[0, latency)`` with
    ``jitter``), as object storage does; counts the data requests in flight at
    once (``peak``) and in all (``requests``)."""

    protocol = ("latency",)
    latency: ClassVar[float] = 0.02
    jitter: ClassVar[bool] = False
    seed: ClassVar[int] = 0
    in_flight: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    requests: ClassVar[int] = 0
    _rng: ClassVar[random.Random] = random.Random(0)

    @classmethod
    def configure(cls, latency: float = 0.02, jitter: bool = False, seed: int = 0) -> None:  # type: ignore[override]
        cls.latency, cls.jitter, cls.in_flight, cls.peak, cls.requests = latency, jitter, 0, 0, 0
        cls._rng = random.Random(seed)
        HangFS.configure.__func__(cls)  # type: ignore[attr-defined]  # never hang

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = path[len("latency://") :] if path.startswith("latency://") else path
        return "/" + path.lstrip("/") if path else "/"

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        cls = type(self)
        cls.in_flight += 1  # one event loop: no lock needed
        cls.requests += 1
        cls.peak = max(cls.peak, cls.in_flight)
        try:
            await asyncio.sleep(cls._rng.uniform(0, cls.latency) if cls.jitter else cls.latency)
            return self._read(self._strip_protocol(path), start, end)
        finally:
            cls.in_flight -= 1


fsspec.register_implementation("latency", LatencyFS, clobber=True)
