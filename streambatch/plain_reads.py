"""Read jobs over shards stored as plain rows (local ``.npy``): one GIL-free call
per column for the whole job, whatever the shards its pieces come from.

A shuffled plan permutes pieces across shards, so with many shards consecutive
pieces rarely share one: reading a job shard run by shard run paid the Python
around each run (reader look-up, slicing, ring spans, argument checks) for about
one piece each, and with 8 shards ran at half the speed of one shard of the same
rows. Here a job's byte ranges are computed with NumPy over all its pieces and
read by :func:`streambatch.native.pread_ranges` (or its pure-Python fallback)
straight into the ring's slots; a piece that wraps past the ring's end is two
ranges. Columns held in memory (:class:`~streambatch.sources._base.MemoryRows`)
are copied piece by piece.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import native
from .errors import CorruptInputError, ReaderError
from .plan import EpochPlan
from .ring import RowRing
from .sources import Dataset
from .sources._base import FileRows, MemoryRows
from .sources._handles import ReaderCache

__all__ = ["PlainRowReads"]


class PlainRowReads:
    """Reads pieces of a plan into a fixed-size ring through their shards'
    :meth:`~streambatch.sources.ShardReader.plain_rows`. Thread-safe: each job
    writes its own ring slots."""

    def __init__(
        self, plan: EpochPlan, dataset: Dataset, ring: RowRing, cache: ReaderCache, shards_at_once: int
    ) -> None:
        self._plan = plan
        self._dataset = dataset
        self._cache = cache
        self._capacity = ring.capacity
        self._ring = ring.arrays()
        #: readers one job holds open at once: the cache's share per pool thread,
        #: so that jobs spanning hundreds of shards stay inside ``RLIMIT_NOFILE``
        self._shards_at_once = max(1, shards_at_once)
        #: shards whose readers said their rows are not plain: never acquired here again
        self._refused: set[int] = set()

    def read(self, pieces: np.ndarray) -> bool:
        """Read ``pieces`` (not streamed) into their ring slots; ``False`` when one of
        their shards does not store its rows plainly (the caller then reads them
        through ``read_many``; what was read here is read again, into the same
        slots)."""
        plan = self._plan
        # the job's shards in order of appearance, and each piece's among them: a job has
        # a few dozen pieces at most, where np.unique's overhead was 14 % of the GIL time
        position: dict[int, int] = {}
        inverse = np.array([position.setdefault(s, len(position)) for s in plan.shard[pieces].tolist()], np.int64)
        shards = list(position)
        if self._refused and not self._refused.isdisjoint(shards):
            return False
        ranges = _Ranges.of(plan, pieces, inverse, self._capacity)
        step = self._shards_at_once
        for lo in range(0, len(shards), step):
            group = ranges if len(shards) <= step else ranges.where((ranges.source >= lo) & (ranges.source < lo + step))
            if not self._read_group(shards[lo : lo + step], group.shifted(lo)):
                return False
        return True

    def _read_group(self, shards: list[int], ranges: _Ranges) -> bool:
        """The ranges of ``shards`` (``ranges.source`` indexes ``shards``), with their
        readers acquired for the duration."""
        acquired: list[int] = []
        try:
            layouts: list[Mapping[str, FileRows | MemoryRows]] = []
            for index in shards:
                reader = self._cache.acquire(index)
                acquired.append(index)
                layout = reader.plain_rows()
                if layout is None:
                    self._refused.add(index)
                    return False
                layouts.append(layout)
            for column, target in self._ring.items():
                self._read_column(column, target, [layout[column] for layout in layouts], shards, ranges)
            return True
        finally:
            for index in acquired:
                self._cache.release(index)

    def _read_column(
        self,
        column: str,
        target: np.ndarray,
        sources: Sequence[FileRows | MemoryRows],
        shards: list[int],
        ranges: _Ranges,
    ) -> None:
        # every shard's column has the dataset's spec (checked when it was opened)
        row_nbytes = target.nbytes // len(target)
        in_file = np.array([isinstance(source, FileRows) for source in sources])
        if in_file.any():  # every range of a file-backed column in one call
            from_files = ranges if in_file.all() else ranges.where(in_file[ranges.source])
            self._read_file_ranges(column, target, sources, shards, from_files, row_nbytes)
        for k in np.flatnonzero(~in_file[ranges.source]).tolist():  # columns held in memory
            source = sources[int(ranges.source[k])]
            assert isinstance(source, MemoryRows)
            start, length, slot = int(ranges.start[k]), int(ranges.length[k]), int(ranges.slot[k])
            target[slot : slot + length] = source.values[start : start + length]

    def _read_file_ranges(
        self,
        column: str,
        target: np.ndarray,
        sources: Sequence[FileRows | MemoryRows],
        shards: list[int],
        ranges: _Ranges,
        row_nbytes: int,
    ) -> None:
        fds = np.array([s.fd if isinstance(s, FileRows) else -1 for s in sources], dtype=np.int64)
        bases = np.array([s.offset if isinstance(s, FileRows) else 0 for s in sources], dtype=np.int64)
        offsets = bases[ranges.source] + ranges.start * row_nbytes
        sizes = ranges.length * row_nbytes
        destination = memoryview(target.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy's stubs lack the buffer protocol
        try:
            short = native.pread_ranges(fds[ranges.source], offsets, sizes, destination, ranges.slot * row_nbytes)
        except OSError as error:
            where = self._dataset.shards[shards[int(ranges.source[0])]]
            also = f" (and {len(shards) - 1} other shards)" if len(shards) > 1 else ""
            raise ReaderError(f"reading column {column!r} of {where.path}{also} failed: {error!r}") from error
        if short is not None:
            k, done = short
            source = sources[int(ranges.source[k])]
            assert isinstance(source, FileRows)
            raise CorruptInputError.truncated(source.url, int(offsets[k]) + done, int(sizes[k]) - done)


class _Ranges:
    """Row ranges of one job: range ``k`` is ``length[k]`` rows from row ``start[k]``
    of the job's ``source[k]``-th shard, written at ring slot ``slot[k]``."""

    def __init__(self, source: np.ndarray, start: np.ndarray, length: np.ndarray, slot: np.ndarray) -> None:
        self.source, self.start, self.length, self.slot = source, start, length, slot

    @classmethod
    def of(cls, plan: EpochPlan, pieces: np.ndarray, source: np.ndarray, capacity: int) -> _Ranges:
        start = plan.start[pieces]
        length = plan.stop[pieces] - start
        slot = plan.offsets[pieces] % capacity
        head = capacity - slot  # rows before the ring's end
        wraps = np.flatnonzero(length > head)
        if wraps.size:  # the part after the ring's end is one more range, at slot 0
            tail_start = start[wraps] + head[wraps]
            tail_length = length[wraps] - head[wraps]
            length = length.copy()
            length[wraps] = head[wraps]
            source = np.concatenate([source, source[wraps]])
            start = np.concatenate([start, tail_start])
            length = np.concatenate([length, tail_length])
            slot = np.concatenate([slot, np.zeros_like(tail_start)])
        return cls(source.astype(np.int64, copy=False), start, length, slot)

    def where(self, keep: np.ndarray) -> _Ranges:
        return _Ranges(self.source[keep], self.start[keep], self.length[keep], self.slot[keep])

    def shifted(self, first: int) -> _Ranges:
        """The same ranges with ``source`` counted from shard ``first`` of the job."""
        return self if not first else _Ranges(self.source - first, self.start, self.length, self.slot)
