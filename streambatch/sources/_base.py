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
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import RowCountError, SchemaError, UnknownColumnError

__all__ = [
    "COLUMN_KINDS",
    "VARIABLE_INDEX_NBYTES",
    "ColumnSpec",
    "FetchedUnit",
    "FileRows",
    "MemoryRows",
    "NotAColumn",
    "RowStream",
    "Shard",
    "ShardReader",
]


#: What a row of a column is: a fixed-size array (``"fixed"``), or of variable size:
#: a ``str`` (``"str"``), ``bytes`` (``"bytes"``) or a 1-D list of ``dtype`` values (``"list"``).
COLUMN_KINDS = ("fixed", "str", "bytes", "list")

#: The fixed part of a variable-length row in memory: its offset and length (int64 each).
VARIABLE_INDEX_NBYTES = 16


@dataclass(frozen=True)
class ColumnSpec:
    """The numpy dtype and per-row shape of one column (``shape == ()`` for scalars).

    ``kind`` says whether rows have a fixed size (``"fixed"``, the default) or not:
    ``"str"`` (``dtype`` is NumPy's ``StringDType``), ``"bytes"`` (``dtype`` object)
    or ``"list"`` (rows of varying length holding ``dtype`` values, delivered as
    :class:`streambatch.Ragged`); variable kinds have ``shape == ()``.

    Also usable as the tuple ``(dtype, shape)``: it unpacks, indexes, has length 2
    and compares equal to such a tuple (a fixed-kind spec only)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str = "fixed"

    def __post_init__(self) -> None:
        if self.kind not in COLUMN_KINDS:
            raise ValueError(f"ColumnSpec kind must be one of {COLUMN_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.kind != "fixed" and self.shape:
            raise ValueError(f"a variable-length ({self.kind}) ColumnSpec has shape (), got {self.shape}")

    @property
    def variable(self) -> bool:
        """Rows of this column differ in size (strings, binary, ragged lists)."""
        return self.kind != "fixed"

    @property
    def row_nbytes(self) -> int:
        """Bytes one row of this column occupies in memory; for a variable-length
        column only its fixed part (offset and length): the values are estimated
        per shard by :meth:`Shard.variable_row_nbytes`."""
        if self.variable:
            return VARIABLE_INDEX_NBYTES
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
        return self.dtype == other.dtype and self.shape == other.shape and self.kind == other.kind

    def __hash__(self) -> int:
        return hash((self.dtype.str, self.shape, self.kind))

    def __repr__(self) -> str:
        if self.kind == "list":
            return f"(list<{self.dtype}>)"
        if self.variable:
            return f"({self.kind})"
        return f"({self.dtype}, {self.shape})"


@dataclass(frozen=True)
class FileRows:
    """A column stored as plain fixed-size rows in an open local file: row ``r`` is
    bytes ``[offset + r * row_nbytes, offset + (r + 1) * row_nbytes)`` of file
    descriptor ``fd`` (valid until its reader closes). ``url`` names the file in
    errors."""

    fd: int
    offset: int
    row_nbytes: int
    url: str


@dataclass(frozen=True)
class MemoryRows:
    """A column held whole in memory (``values``, one row per shard row)."""

    values: np.ndarray


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


class FetchedUnit(abc.ABC):
    """The fetched, still encoded bytes of one read unit (:meth:`ShardReader.fetch`)."""

    #: bytes held (what ``fetch_nbytes`` said, or more once known)
    nbytes: int

    @abc.abstractmethod
    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        """Decode rows ``[start, stop)`` (the unit's rows) into ``out``, as
        :meth:`ShardReader.read_into` would, with no request unless the bytes
        turn out damaged (then they are fetched again, as a retried read)."""


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

    def fetch_nbytes(self, starts: list[int], stops: list[int]) -> list[int] | None:
        """Bytes :meth:`fetch` would hold for each unit ``[starts[i], stops[i])`` (for the
        budget's fetch term, before the requests are sent), or ``None`` when this
        reader fetches nothing ahead of its decodes (local files): then
        :meth:`read_into` reads the units itself."""
        return None

    def fetch(self, starts: list[int], stops: list[int]) -> list[FetchedUnit]:
        """The bytes of each unit ``[starts[i], stops[i])``, fetched (requests in flight
        together where the storage allows) but not decoded: the caller decodes each
        with its ``read_into``, in a decode slot. Formats whose ``fetch_nbytes`` is not
        ``None`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} fetches nothing ahead")

    def plain_rows(self) -> Mapping[str, FileRows | MemoryRows] | None:
        """Where each column this reader reads sits, when every one is stored as
        plain fixed-size rows (a local ``.npy`` file, or a column held in memory):
        the pipeline then copies the rows of a whole read job, whatever the shards
        it covers, itself (one GIL-free call per column, see
        :mod:`streambatch.plain_reads`). ``None`` (the default) when rows must be
        decoded or fetched: :meth:`read_many` and :meth:`read_into` read them."""
        return None

    def open_stream(self, start: int, stop: int, rows_per_read: int) -> RowStream:
        """A stream over rows ``[start, stop)`` of one unit, with handles of its own
        (so it outlives no reader state), decoding about ``rows_per_read`` rows at
        a time (the size of the reads to come). Formats whose shards have
        ``streams_units`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} cannot stream a unit")

    def close(self) -> None:  # noqa: B027 - readers without handles need no close
        """Release every handle; idempotent."""


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class NotAColumn:
    """Why a name a store holds is not a column: ``wrong_length`` when it has
    another length along the row axis (requesting it is then a ``RowCountError``,
    a ``ValueError``), else it has no row axis at all (a ``SchemaError``)."""

    reason: str
    wrong_length: bool = False

    def __str__(self) -> str:
        return self.reason


class Shard(abc.ABC):
    """Metadata of one file or store: rows, columns and natural read units.

    Building a shard reads headers or footers only, never data rows, and
    validates everything cheap so that bad input fails in the caller's thread.

    Every name a shard holds is in exactly one of three mappings:

    * ``columns``: what a batch can hold (name -> ``ColumnSpec``);
    * ``unreadable``: columns of the data that streambatch cannot deliver (name ->
      reason, naming the storage type). Opening a dataset with ``columns=None``
      refuses them, so no column is ever dropped without a word;
    * ``ignored``: names that are not columns at all (a Zarr coordinate along
      another dimension, a 0-d array): never in the way, refused only when asked
      for by name.
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
    #: Column name -> why it cannot be read (a column of the data that is refused).
    unreadable: Mapping[str, str] = _EMPTY
    #: Name -> why it is not a column (not on the row axis); refused only when requested.
    ignored: Mapping[str, NotAColumn] = _EMPTY
    #: Column name -> ``{"categories": [...]}`` and the like: what a column's values mean.
    column_metadata: Mapping[str, Mapping[str, Any]] = _EMPTY
    #: Column name -> the value its nulls are read as (``open_dataset(fill_nulls=...)``).
    fill_nulls: Mapping[str, Any] = _EMPTY
    #: Column name -> the dtype it is delivered as (``open_dataset(cast=...)``); ``columns``
    #: already gives the delivered spec.
    cast: Mapping[str, np.dtype] = _EMPTY

    @property
    def fetches_units(self) -> bool:
        """Units are fetched before they are decoded (remote bytes, ``ShardReader.fetch``),
        so their bytes can be fetched ahead of the reads that decode them."""
        return False

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

    def variable_row_nbytes(self, name: str) -> int:
        """Bytes the values of one row of the variable-length column ``name`` take in
        memory, estimated from metadata (footer sizes, Arrow buffer sizes) as the
        largest per-row mean of any unit: what the budget reserves per row. Formats
        with variable-length columns override it."""
        raise NotImplementedError(f"{type(self).__name__} has no variable-length columns")

    def describe_rows(self, start: int, stop: int) -> str:
        """Where rows ``[start, stop)`` live, for error messages."""
        return f"{self.path} rows {start}:{stop}"

    def check_columns(self, names: list[str]) -> None:
        """Raise a ``SchemaError`` naming this shard and the column if any of ``names``
        cannot be read: unknown (``UnknownColumnError``, also a ``KeyError``), not on
        the row axis, or unreadable. Formats extend it with checks that need only
        metadata (Parquet: nulls in the footer statistics). Reads no data."""
        for name in names:
            if name in self.columns:
                continue
            if name in self.unreadable:
                raise SchemaError(f"{self.path}: column {name!r} cannot be read: {self.unreadable[name]}")
            if name in self.ignored:
                error = RowCountError if self.ignored[name].wrong_length else SchemaError
                raise error(f"{self.path}: {name!r} is not a column: {self.ignored[name]}")
            available = ", ".join(repr(c) for c in self.columns) or "none"
            raise UnknownColumnError(f"{self.path}: no column {name!r}; available columns: {available}")

    def with_fill_nulls(self, fill_nulls: Mapping[str, Any]) -> Shard:
        """A shallow copy of this shard whose readers read the nulls of column ``c``
        as ``fill_nulls[c]``; the shard itself is not changed. Formats that cannot
        hold nulls (``.npy``, Zarr) ignore it."""
        other = copy.copy(self)
        other.fill_nulls = MappingProxyType(dict(fill_nulls))
        return other

    def with_cast(self, cast: Mapping[str, np.dtype]) -> Shard:
        """A shallow copy of this shard whose column ``c`` is delivered as ``cast[c]``
        (validated dtypes, see :mod:`._cast`): its ``columns`` give the delivered
        specs and its readers cast; the shard itself is not changed, and each call
        starts from the columns as stored. A cast the column cannot reach is a
        ``SchemaError`` naming the shard, the column, its type and the dtype; names
        the shard does not hold are left to the dataset's checks.

        Formats decoded through Arrow (Parquet, Arrow IPC) override this. The
        others (``.npy``, Zarr) read straight into the loader's buffer, with no
        decoded copy to cast from: they accept only a cast to the dtype a column
        already has."""
        for name, dtype in cast.items():
            spec = self.columns.get(name)
            if spec is not None and spec.dtype == dtype:
                continue
            if spec is None and name not in self.unreadable:
                continue
            stored = f"dtype {spec.dtype}" if spec is not None else self.unreadable[name]
            raise SchemaError(
                f"{self.path}: column {name!r} ({stored}) cannot be cast to {dtype}: cast= applies to Parquet and "
                "Arrow IPC columns, cast on the decoded Arrow column; this format is read straight into the "
                f"loader's buffer, with no decoded copy to cast from: store the column as {dtype}"
            )
        other = copy.copy(self)
        other.cast = MappingProxyType(dict(cast))
        return other
