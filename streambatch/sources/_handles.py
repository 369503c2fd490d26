"""Open shard readers for one iterator: opened on first use, closed with it."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ._base import ShardReader
from ._dataset import Dataset
from ._npy import NpyShard

__all__ = ["ReaderCache"]


class ReaderCache:
    """At most ``max_open`` open shard readers, least recently used closed first
    (only when no thread is using them), so many shards never exhaust file
    descriptors. Thread-safe."""

    def __init__(self, dataset: Dataset, max_open: int = 64, resident: tuple[str, ...] = ()) -> None:
        self._dataset = dataset
        self._resident = resident
        self._columns = list(dataset.columns)
        self._max_open = max(1, max_open)
        self._open: OrderedDict[int, ShardReader] = OrderedDict()
        self._in_use: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def max_open(self) -> int:
        """Readers kept open at most (more only while threads hold them)."""
        return self._max_open

    def acquire(self, shard: int) -> ShardReader:
        with self._lock:
            if self._closed:
                raise RuntimeError("the loader's iterator was closed")
            reader = self._open.get(shard)
            if reader is not None:
                self._open.move_to_end(shard)
            self._in_use[shard] = self._in_use.get(shard, 0) + 1
        if reader is None:
            try:
                target = self._dataset.shards[shard]
                if self._resident and isinstance(target, NpyShard):
                    reader = target.open_reader(self._columns, resident=self._resident)
                else:
                    reader = target.open_reader(self._columns)
            except BaseException:
                self._release_count(shard)
                raise
            with self._lock:
                existing = self._open.get(shard)
                if existing is not None or self._closed:
                    spare, reader = reader, existing
                else:
                    self._open[shard] = reader
                    spare = None
            if spare is not None:
                spare.close()
            if reader is None:
                self._release_count(shard)
                raise RuntimeError("the loader's iterator was closed")
        return reader

    def release(self, shard: int) -> None:
        self._release_count(shard)
        evicted = []
        with self._lock:
            while len(self._open) > self._max_open:
                idle = next((s for s in self._open if not self._in_use.get(s)), None)
                if idle is None:
                    break
                evicted.append(self._open.pop(idle))
        for reader in evicted:
            reader.close()

    def _release_count(self, shard: int) -> None:
        with self._lock:
            count = self._in_use.get(shard, 0) - 1
            if count <= 0:
                self._in_use.pop(shard, None)
            else:
                self._in_use[shard] = count

    def close(self) -> None:
        with self._lock:
            self._closed = True
            readers, self._open = list(self._open.values()), OrderedDict()
        for reader in readers:
            reader.close()
