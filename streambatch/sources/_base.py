"""The contract every format implements: a *shard* describes one file or store
(metadata only) and opens a *reader* that copies row ranges into caller-owned
arrays.

The planner never branches on format: it only needs ``num_rows``, the column
specs, ``unit_bounds`` (where reading is cheap to start and stop) and
``streams_units`` (whether a unit can be read in order, slice by slice, without
being held whole: then :meth:`ShardReader.open_stream` reads it).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["ColumnSpec", "RowStream", "Shard", "ShardReader"]


@dataclass(frozen=True)
class ColumnSpec:
    """The numpy dtype and per-row shape of one column (``shape == ()`` for scalars).

    Also usable as the tuple ``(dtype, shape)``: it unpacks, indexes, has length 2
    and compares equal to such a tuple."""

    dtype: np.dtype
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def row_nbytes(self) -> int:
        """Bytes one row of this column occupies in memory."""
        return int(self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64)))

    # a ColumnSpec reads like the ``(dtype, shape)`` tuple it prints as:
    # ``dtype, shape = ds.columns[name]``, ``ds.columns[name][0]``, ``len(spec) == 2``
    def __iter__(self):
        return iter((self.dtype, self.shape))

    def __getitem__(self, index):
        return (self.dtype, self.shape)[index]

    def __len__(self) -> int:
        return 2

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):
            other = ColumnSpec(*other)
        if not isinstance(other, ColumnSpec):
            return NotImplemented
        return self.dtype == other.dtype and self.shape == other.shape

    def __hash__(self) -> int:
        return hash((self.dtype.str, self.shape))

    def __repr__(self) -> str:
        return f"({self.dtype}, {self.shape})"


class RowStream(abc.ABC):
    """Rows ``[start, stop)`` of one unit, read strictly front to back: each
    :meth:`read_into` continues where the previous one stopped, or skips ahead
    (decoding and dropping the rows in between). One caller at a time."""

    @abc.abstractmethod
    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        """Copy rows ``[start, stop)`` into ``out`` (as :meth:`ShardReader.read_into`);
        ``start`` must not be before the end of the previous read."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the stream's handles and buffers; idempotent."""


class ShardReader(abc.ABC):
    """Open handles on one shard. ``read_into`` is called concurrently from
    several pool threads, each with its own disjoint ``out`` arrays."""

    @abc.abstractmethod
    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        """Copy rows ``[start, stop)`` of every column in ``out`` into ``out[column]``
        (shape ``(stop - start, *row_shape)``, C-contiguous, the column's dtype)."""

    def read_many(self, starts: np.ndarray, stops: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
        """Copy the row ranges ``[starts[k], stops[k])`` one after another into ``out``.
        Formats override this when they can gather many ranges in one call."""
        done = 0
        for start, stop in zip(starts.tolist(), stops.tolist()):
            n = stop - start
            self.read_into(start, stop, {c: a[done : done + n] for c, a in out.items()})
            done += n

    def open_stream(self, start: int, stop: int, rows_per_read: int) -> RowStream:
        """A stream over rows ``[start, stop)`` of one unit, with handles of its own
        (so it outlives no reader state), decoding about ``rows_per_read`` rows at
        a time (the size of the reads to come). Formats whose shards have
        ``streams_units`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} cannot stream a unit")

    def close(self) -> None:  # noqa: B027 - readers without handles need no close
        """Release every handle; idempotent."""


class Shard(abc.ABC):
    """Metadata of one file or store: rows, columns and natural read units.

    Building a shard reads headers or footers only, never data rows, and
    validates everything cheap so that bad input fails in the caller's thread.
    """

    #: Path or URL, for messages.
    path: str
    #: Rows in this shard.
    num_rows: int
    #: Column name -> spec, in storage order.
    columns: Mapping[str, ColumnSpec]
    #: Units can be read in order in slices (``ShardReader.open_stream``) at a cost
    #: of ``stream_nbytes`` each, instead of being decoded whole.
    streams_units: bool = False

    @property
    @abc.abstractmethod
    def unit_bounds(self) -> np.ndarray | None:
        """Row offsets ``[0, b1, ..., num_rows]`` of the units the format must read
        whole (Parquet row groups, Zarr chunks), or ``None`` when any row range
        is cheap to read (``.npy``)."""

    @abc.abstractmethod
    def open_reader(self, columns: list[str]) -> ShardReader:
        """Open the handles needed to read ``columns``."""

    def stream_nbytes(self, columns: list[str]) -> int:
        """Memory one open stream over a unit of ``columns`` holds (read buffers,
        a decoded page per column), for the budget; 0 when units do not stream."""
        return 0

    def describe_rows(self, start: int, stop: int) -> str:
        """Where rows ``[start, stop)`` live, for error messages."""
        return f"{self.path} rows {start}:{stop}"
