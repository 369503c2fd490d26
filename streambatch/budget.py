"""How a ``memory_limit`` is split, decided once per loader and never by the
thread count (so the row order does not depend on ``num_threads``).

The budget ``M`` pays for:

* **the ring**: one array per column holding the rows read but not yet emitted.
  It holds the shuffle window (``window_pieces`` pieces), the segment being
  emitted and the read-ahead. Each row also costs ~24 bytes of index arrays.
  A variable-length column (strings, ragged lists) costs 16 bytes per row in
  the ring plus its values, estimated per row from metadata
  (:meth:`Dataset.column_row_nbytes`: the largest per-row mean of any row
  group or record batch); ``arena_bytes = ring_rows x`` those estimates is
  what the values may hold, and reads are admitted against the bytes really
  held (see :mod:`streambatch.columns`), so rows longer than the footer's mean
  slow the read-ahead instead of growing memory. A single row whose values
  exceed its column's share of the arena is a ``BudgetError`` naming file,
  column and row.
* **open streams** (Parquet): a row group larger than a piece is not held
  whole but streamed a slice at a time; each open stream holds its read buffers
  and about two pages per column (``Shard.stream_nbytes``). ``lanes`` streams
  are open at once (as many as the data has units, up to 40 % of ``M``, or up
  to 60 % when that opens every one), so the window mixes rows of ``lanes`` row
  groups whatever their size.
* **decode scratch** (units read whole: Zarr chunks, small row groups): a unit is
  decoded in a pool thread before it is copied into the ring; scratch is sized for
  4 concurrent decodes (at most a quarter of ``M``), and decodes beyond what it
  holds wait.
* **fetch-ahead** (remote Parquet/Zarr only: shards whose units are fetched, then
  decoded, see :mod:`streambatch.fetch`): compressed bytes fetched ahead of their
  decodes, so requests stay in flight while others decode; ``min(M / 8, 8 x
  unit_nbytes)``, about what hiding 20 ms of latency takes at local decode rates.
  Fetched bytes count against scratch + fetch-ahead until decoded. It is taken
  from the ring, so a remote dataset that does not fit has a smaller window than
  its local copy at the same ``M`` (another order; its fingerprint differs too).
* **resident narrow columns** (``.npy`` only, shuffled): columns of at most 16
  bytes per row (labels) are held whole when together they fit in an eighth of
  ``M``, which saves a system call per piece.
* **batches in flight**: batches travel to the consumer in groups of up to 8
  (about 1 MiB): the group being assembled, 2 in the hand-over queue, and ~2
  batches the caller holds.
* **the epoch plan**: ~160 bytes per piece (its place in the plan, the shuffle
  and the read bookkeeping), the one part that grows with the dataset. When it
  would pass a quarter of ``M``, pieces are made larger to keep it there, so the
  budget holds at any dataset size (at the cost of fewer, larger pieces in the
  window: a coarser shuffle for a dataset thousands of times the budget).

The ring is never larger than the data needs: a dataset that fits is held
whole (and then shuffled as a full permutation, see :func:`streambatch.plan.ticks`),
in pieces of at most ``rows / 4096`` rows so that a full permutation of them
mixes as well as one of the rows.

Python, numpy, pyarrow and the interpreter (~150-250 MiB) come on top; the
documented contract is peak RSS <= M + 300 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._units import format_bytes
from .columns import ColumnKind, kind_of
from .errors import BudgetError
from .fetch import fetches_ahead
from .plan import RAMP, PlanParams
from .sources import Dataset

__all__ = ["READY_GROUPS", "Budget", "batches_in_flight", "plan_budget"]

_INDEX_BYTES_PER_ROW = 24
_TARGET_WINDOW_PIECES = 2048
#: Pieces a dataset is cut into at least (when rows allow): the grain of a full permutation.
_TARGET_DATA_PIECES = 4096
#: Streams: at most this share of ``M``, and at most this many open at once.
_STREAM_SHARE = 0.4
#: ... or up to this share, when it opens every streamed unit at once
_STREAM_SHARE_ALL = 0.6
_MAX_LANES = 256
_SLICES_PER_LANE = 4
#: A streamed slice holds at most this many bytes of rows (a 1 M-row group with two lanes
#: would otherwise decode 20+ MiB at a time, per thread, outside the ring)
_MAX_SLICE_BYTES = 1 << 20
#: Decoded slices' worth of memory reserved for the streams' decodes in flight.
_STREAM_DECODE_SLICES = 4
_MIN_PIECE_BYTES = 16 << 10
_JOB_BYTES = 1 << 20
_SCRATCH_SHARE = 0.25
#: Remote units fetched ahead of their decode: at most this share of ``M`` ...
_FETCH_SHARE = 1 / 8
#: ... and at most this many of the largest units read whole
_FETCH_UNITS = 8
_DECODES_IN_FLIGHT = 4
_RESIDENT_ROW_BYTES = 16
_RESIDENT_SHARE = 8
_GROUP_BYTES = 1 << 20
_MAX_GROUP = 8
#: Bytes of plan, shuffle and read bookkeeping per piece: measured ~140 with
#: tracemalloc on 1.05 M pieces (a 104 GB sparse .npy dataset at 256 MiB).
_PLAN_BYTES_PER_PIECE = 160
_PLAN_SHARE = 4


#: Batch groups assembled ahead of the consumer (the epoch's hand-over queue).
READY_GROUPS = 2


def batches_in_flight(group: int) -> int:
    """Batches alive at once: ``READY_GROUPS`` groups handed over, one being assembled,
    and the consumer's current batch and the one it is done with."""
    return (READY_GROUPS + 1) * group + 2


def batch_group_size(batch_nbytes: int, memory_limit: int) -> int:
    """Batches handed to the consumer together: enough to amortise the hand-over
    between threads for small batches, one for large ones or small budgets."""
    group_bytes = min(_GROUP_BYTES, memory_limit // 32)
    return max(1, min(_MAX_GROUP, group_bytes // max(1, batch_nbytes)))


@dataclass(frozen=True)
class Budget:
    """The split of ``memory_limit`` (bytes) and the plan parameters it implies."""

    memory_limit: int
    ring_rows: int
    row_nbytes: int
    window_pieces: int
    max_segment_ticks: int
    piece_rows: int
    max_piece_rows: int
    job_rows: int
    scratch_bytes: int
    unit_nbytes: int
    batch_bytes: int
    batch_group: int
    resident_columns: tuple[str, ...] = ()
    resident_bytes: int = 0
    plan_bytes: int = 0
    lanes: int = 1
    stream_bytes: int = 0
    slice_rows: int = 0
    #: the whole dataset fits in the ring: each epoch is a full permutation
    fits: bool = False
    #: units of the data larger than a piece that are streamed (all open at once iff == lanes)
    streamed_units: int = 0
    #: streamable units of fewer rows are read whole (a stream would hold more than half of
    #: one); more rows than the data when nothing streams
    stream_min_rows: int = 0
    #: estimated bytes of variable-length values per row (all such columns; 0: none)
    variable_row_nbytes: int = 0
    #: compressed bytes of remote units fetched ahead and not yet decoding, on top of
    #: the decode scratch (0: no shard fetches its units, see :mod:`streambatch.fetch`)
    fetch_bytes: int = 0

    @property
    def arena_bytes(self) -> int:
        """What the values of variable-length columns may hold: their estimate for every ring row."""
        return self.ring_rows * self.variable_row_nbytes

    def column_kinds(self, dataset: Dataset) -> dict[str, ColumnKind]:
        """How each column is held in the ring: its kind, bytes per row, and (variable
        length) the largest row its share of the arena allows."""
        kinds = {}
        for name, spec in dataset.columns.items():
            row = dataset.column_row_nbytes(name)
            share = self.ring_rows * (row - spec.row_nbytes) if spec.variable else 0
            kinds[name] = kind_of(name, spec, row, share)
        return kinds

    @property
    def mixed_units(self) -> int | None:
        """How many distinct read units the window draws from at once (``None``:
        all of them, the data fits). Streamed units each count once however many
        of their slices are in the window: a lane's rows are one run of its unit."""
        if self.fits:
            return None
        return self.lanes if self.stream_bytes else self.window_pieces

    def shuffle_limit(self) -> str:
        """Why batches mix only ``mixed_units`` parts of the data, for the warning."""
        if self.stream_bytes and self.lanes >= self.streamed_units:
            return (
                f"the data has only {self.streamed_units} row group(s), each read front to back: a batch mixes "
                "rows of at most that many places in the data whatever the memory_limit"
            )
        if self.stream_bytes:
            return (
                f"memory_limit holds {self.lanes} open row-group streams of "
                f"{format_bytes(self.stream_bytes / self.lanes)} each, of the {self.streamed_units} row groups"
            )
        return f"memory_limit holds only {self.window_pieces} read unit(s) of up to {self.max_piece_rows} rows"

    @property
    def ring_bytes(self) -> int:
        return self.ring_rows * self.row_nbytes

    def decode_slots(self, num_threads: int) -> int:
        """Concurrent decodes allowed so that scratch stays within its share."""
        if self.scratch_bytes == 0 or self.unit_nbytes == 0:
            return num_threads
        return max(1, min(num_threads, self.scratch_bytes // (2 * self.unit_nbytes)))

    def plan_params(self, shuffle: bool, seed: int, remainder: str) -> PlanParams:
        return PlanParams(
            shuffle,
            seed,
            self.window_pieces,
            self.piece_rows,
            self.lanes,
            remainder,  # type: ignore[arg-type]
            self.slice_rows,
            self.stream_min_rows,
        )

    def describe(self) -> str:
        resident = (
            f", resident {', '.join(self.resident_columns)} {format_bytes(self.resident_bytes)}"
            if self.resident_columns
            else ""
        )
        return (
            f"memory_limit {format_bytes(self.memory_limit)}: ring {format_bytes(self.ring_bytes)} "
            f"({self.ring_rows} rows; window {self.window_pieces} pieces of <= {self.max_piece_rows} rows), "
            f"decode scratch {format_bytes(self.scratch_bytes)}, "
            + (f"fetch-ahead {format_bytes(self.fetch_bytes)}, " if self.fetch_bytes else "")
            + f"batches {format_bytes(self.batch_bytes)}, "
            + (f"{self.lanes} streams {format_bytes(self.stream_bytes)}, " if self.stream_bytes else "")
            + f"plan {format_bytes(self.plan_bytes)}{resident}"
            + (
                f", variable-length values {format_bytes(self.arena_bytes)} of the ring"
                if self.variable_row_nbytes
                else ""
            )
        )


def plan_budget(dataset: Dataset, memory_limit: int, batch_size: int, shuffle: bool) -> Budget:
    """Split ``memory_limit`` for ``dataset``; raises if one read unit cannot fit.

    A unit is streamed when an open stream costs less than the unit held whole,
    except when the data fits with every unit read whole (their decodes inside
    the scratch): all of it is then live at once and the order a full
    permutation anyway, and whole row groups decode with less CPU than many
    streams interleaved (measured: 245 streams of 8k-row groups at 200 % of the
    data, 1.09 M rows/s against 2.31 M whole); and except, unshuffled, when every
    unit can be read whole: stored order mixes nothing, so one stream of small
    slices would only cost decode time."""
    return _plan_budget(dataset, memory_limit, batch_size, shuffle, advise=True)


def _plan_budget(dataset: Dataset, memory_limit: int, batch_size: int, shuffle: bool, advise: bool) -> Budget:
    """:func:`plan_budget`; a ``BudgetError`` names the memory_limit that would do if ``advise``."""
    row_nbytes = max(1, dataset.row_nbytes)
    stream_min_rows = _stream_nbytes(dataset) // row_nbytes + 1
    if any(s.streams_units for s in dataset.shards):
        try:
            whole = _split(dataset, memory_limit, batch_size, shuffle, dataset.num_rows + 1, advise=False)
        except BudgetError:
            pass
        else:
            if (whole.fits or not shuffle) and whole.scratch_bytes >= 2 * whole.unit_nbytes:
                return whole
    return _split(dataset, memory_limit, batch_size, shuffle, stream_min_rows, advise)


def _split(
    dataset: Dataset, memory_limit: int, batch_size: int, shuffle: bool, stream_min_rows: int, advise: bool
) -> Budget:
    """:func:`plan_budget` with units of ``stream_min_rows`` rows or more streamed."""
    row_nbytes = max(1, dataset.row_nbytes)
    num_rows = dataset.num_rows
    unit_rows = _largest_whole_unit_rows(dataset, stream_min_rows)
    # enough for a few concurrent decodes (each ~2 units: decoded + compressed pages),
    # never more than a quarter of the budget; the rest goes to the shuffle window
    unit_bytes = unit_rows * row_nbytes
    scratch = min(int(memory_limit * _SCRATCH_SHARE), _DECODES_IN_FLIGHT * 2 * unit_bytes) if unit_rows else 0
    # remote units: bytes in flight to hide each request's latency (~latency x units/s
    # x unit bytes: 20 ms at 250 units/s of 2 MB is ~10 MB), beside the decodes
    fetches = unit_rows and any(fetches_ahead(s) for s in dataset.shards)
    fetch = min(int(memory_limit * _FETCH_SHARE), _FETCH_UNITS * unit_bytes) if fetches else 0
    group = batch_group_size(batch_size * row_nbytes, memory_limit)
    batch_bytes = batches_in_flight(group) * batch_size * row_nbytes
    random_rows = sum(s.num_rows for s in dataset.shards if s.unit_bounds is None)
    resident, resident_bytes = _resident_columns(dataset, random_rows, memory_limit) if shuffle else ((), 0)
    ring_bytes = memory_limit - scratch - fetch - batch_bytes - resident_bytes
    min_piece = max(1, -(-_MIN_PIECE_BYTES // row_nbytes))

    def pieces_for(ring_rows: int) -> int:
        if shuffle:  # a window of ~2048 pieces, and never fewer than ~4096 pieces in the data
            return max(min_piece, min(int(ring_rows * 0.8) // _TARGET_WINDOW_PIECES, num_rows // _TARGET_DATA_PIECES))
        return max(min_piece, _JOB_BYTES // row_nbytes)

    # streams for the units larger than a piece would be without them
    # (in stored order one stream at a time is enough: a row group larger than the budget
    # is still read, front to back)
    lanes, stream_bytes, streamed_units = _lanes(
        dataset,
        memory_limit,
        max(stream_min_rows, pieces_for(ring_bytes // (row_nbytes + _INDEX_BYTES_PER_ROW))),
        1 if not shuffle else _MAX_LANES,
    )
    ring_bytes -= stream_bytes
    ring_rows = max(0, ring_bytes // (row_nbytes + _INDEX_BYTES_PER_ROW))
    piece_rows = pieces_for(ring_rows)
    # the smallest pieces that keep the plan within its share of the budget
    sliced_rows = random_rows + sum(s.num_rows for s in dataset.shards if s.streams_units)
    plan_floor = -(-sliced_rows * _PLAN_BYTES_PER_PIECE // max(1, memory_limit // _PLAN_SHARE))
    piece_rows = max(piece_rows, plan_floor)
    piece_rows = int(min(piece_rows, max(1, ring_rows // 4) if ring_rows else 1))
    streamed_from = stream_min_rows if stream_bytes else num_rows + 1
    plan_bytes = _PLAN_BYTES_PER_PIECE * _count_pieces(dataset, piece_rows, piece_rows, streamed_from)
    ring_bytes -= plan_bytes
    ring_rows = max(0, ring_bytes // (row_nbytes + _INDEX_BYTES_PER_ROW))
    slice_rows = piece_rows
    if stream_bytes:  # ~4 slices of each lane in the window (or of the data, when it fits)
        slice_rows = max(piece_rows, min(int(ring_rows * 0.8), num_rows) // (_SLICES_PER_LANE * lanes))
        largest = max(piece_rows, _MAX_SLICE_BYTES // row_nbytes)
        slice_rows = int(min(slice_rows, max(piece_rows, ring_rows // 8), largest))
        # a slice is decoded in a pool thread before it is copied into the ring: Arrow holds
        # the decoded batch and its temporaries, about 4 slices' worth in all (measured:
        # 2 threads streaming two 1 M-row list<float> groups, 2 MiB slices: ~9 MiB)
        decode_reserve = _STREAM_DECODE_SLICES * slice_rows * row_nbytes
        stream_bytes += decode_reserve
        ring_bytes -= decode_reserve
        ring_rows = max(0, ring_bytes // (row_nbytes + _INDEX_BYTES_PER_ROW))
    max_piece = max(unit_rows, piece_rows, slice_rows, 1)
    job_rows = max(piece_rows, min(_JOB_BYTES // row_nbytes, max(1, ring_rows // 8)))
    job_rows = max(job_rows, max_piece)
    # the whole dataset fits: hold it, never more ring than that
    fits = shuffle and ring_rows >= num_rows + job_rows
    if fits:
        ring_rows = num_rows  # no read ever wraps around: the whole epoch is live at once

    fitting = ring_rows // max_piece
    if not fits and plan_floor > piece_rows and (ring_rows < max_piece + job_rows or fitting < 2):
        # pieces this large (to keep the plan in its share) do not fit the ring: the plan
        # needs pieces of ~ rows x 160 x share / M rows, the ring ~ 4 pieces, so M grows as sqrt(rows)
        per_row = row_nbytes + _INDEX_BYTES_PER_ROW
        needed = 1.5 * (sliced_rows * _PLAN_BYTES_PER_PIECE * _PLAN_SHARE * 6 * per_row) ** 0.5
        # ... on top of what the batches in flight and one open stream (if any) hold
        needed = max(needed, (batch_bytes + stream_bytes + 4 * max_piece * per_row) / (1 - _STREAM_SHARE))
        raise BudgetError(
            f"memory_limit={format_bytes(memory_limit)} is too small for a dataset of {sliced_rows:,} rows: its epoch "
            f"plan (~{_PLAN_BYTES_PER_PIECE} bytes per piece) must fit in a quarter of the budget, which needs pieces "
            f"of {plan_floor:,} rows, too large for the rest of the budget; use memory_limit >= {format_bytes(needed)}"
        )
    if not fits and ring_rows < max_piece:
        # a ring holding one read unit runs (each unit is read once the one before it
        # is emitted: no mixing across units, see PoorShuffleWarning); less cannot
        unit = max(unit_rows, min_piece, 1)
        needed = _smallest_memory_limit(dataset, memory_limit, batch_size, shuffle) if advise else 0
        raise BudgetError(
            f"memory_limit={format_bytes(memory_limit)} is too small for this dataset: it must hold "
            f"{batches_in_flight(group)} batches of {batch_size} rows ({format_bytes(batch_bytes)}) and a read unit of "
            f"{unit} rows ({format_bytes(unit * row_nbytes)}){' plus decode scratch' if unit_rows else ''}; "
            f"use memory_limit >= {format_bytes(needed)}"
            + (", or rewrite the data in smaller chunks with `streambatch convert`" if unit_rows else "")
        )
    if fits:
        # every piece may be live at once: the plan's ticks give a full permutation
        window = _count_pieces(dataset, piece_rows, slice_rows, streamed_from) + 2
        segment = max(1, window // 4)
    elif shuffle:
        # live pieces <= window - 1 + segment, plus one job admitted ahead and read-ahead
        usable = (ring_rows - job_rows) // max_piece
        readahead = max(1, usable // 6)
        window = max(1, int((usable - readahead) * 4 / 5))
        segment = max(1, window // 4)
        while window > 1 and window - 1 + segment > usable - readahead:
            window -= 1
            segment = max(1, window // 4)
    else:
        window, segment = 1, max(1, min(64, (ring_rows - job_rows) // max_piece // 2))
    return Budget(
        memory_limit=memory_limit,
        ring_rows=int(ring_rows),
        row_nbytes=row_nbytes,
        window_pieces=int(window),
        max_segment_ticks=int(segment * RAMP if shuffle else segment),  # shuffled ticks are 1/RAMP piece
        piece_rows=int(piece_rows),
        max_piece_rows=int(max_piece),
        job_rows=int(job_rows),
        scratch_bytes=scratch,
        fetch_bytes=fetch,
        unit_nbytes=unit_rows * row_nbytes,
        batch_bytes=batch_bytes,
        batch_group=group,
        resident_columns=resident,
        resident_bytes=resident_bytes,
        plan_bytes=plan_bytes,
        lanes=int(lanes),
        stream_bytes=int(stream_bytes),
        slice_rows=int(slice_rows),
        fits=bool(fits),
        streamed_units=int(streamed_units),
        stream_min_rows=int(streamed_from),  # no streams: more rows than the data, so no unit streams
        variable_row_nbytes=sum(
            dataset.column_row_nbytes(n) - c.row_nbytes for n, c in dataset.columns.items() if c.variable
        ),
    )


def _smallest_memory_limit(dataset: Dataset, too_small: int, batch_size: int, shuffle: bool) -> int:
    """The smallest ``memory_limit`` (to 1 %) above ``too_small`` that
    :func:`plan_budget` accepts: what a ``BudgetError`` advises, found by bisection
    so that the advice is always enough."""
    lo, hi = too_small, max(2 * too_small, 1 << 20)
    while not _accepted(dataset, hi, batch_size, shuffle):
        lo, hi = hi, 2 * hi
        if hi > 1 << 50:
            return hi
    while hi - lo > max(lo // 100, 1 << 16):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _accepted(dataset, mid, batch_size, shuffle) else (mid, hi)
    return hi


def _accepted(dataset: Dataset, memory_limit: int, batch_size: int, shuffle: bool) -> bool:
    try:
        _plan_budget(dataset, memory_limit, batch_size, shuffle, advise=False)
    except BudgetError:
        return False
    return True


def _lanes(dataset: Dataset, memory_limit: int, piece_rows: int, most: int = _MAX_LANES) -> tuple[int, int, int]:
    """``(lanes, bytes, units)``: how many units to stream at once, what their open
    streams hold, and how many units stream: one per streamable unit larger than a piece, as far as
    ``_STREAM_SHARE`` of the budget allows (at least one, at most ``_MAX_LANES``)."""
    units = 0
    for shard in dataset.shards:
        if shard.streams_units and shard.unit_bounds is not None:
            units += int(np.count_nonzero(np.diff(np.asarray(shard.unit_bounds)) > piece_rows))
    per_stream = _stream_nbytes(dataset)
    if not units or not per_stream:
        return 1, 0, 0
    lanes = max(1, min(units, most, int(memory_limit * _STREAM_SHARE) // per_stream))
    if lanes < units <= most and units * per_stream <= memory_limit * _STREAM_SHARE_ALL:
        # every unit open at once: each batch draws on all of them, whatever the ring
        # holds, which beats a larger ring over fewer units
        lanes = units
    return lanes, lanes * per_stream, units


def _count_pieces(dataset: Dataset, piece_rows: int, slice_rows: int, streamed_from: int) -> int:
    """Pieces of one epoch (all ranks' shares together: an upper bound for one rank):
    random-access shards are cut every ``piece_rows`` rows, the others have their units."""
    pieces = 0
    for shard in dataset.shards:
        bounds = shard.unit_bounds
        if bounds is None:
            pieces += -(-shard.num_rows // piece_rows)
        elif shard.streams_units:
            sizes = np.diff(np.asarray(bounds))
            sizes = sizes[sizes > 0]
            sliced = sizes >= max(streamed_from, slice_rows + 1)
            pieces += int((-(-sizes[sliced] // slice_rows)).sum()) + int((~sliced).sum())
        else:
            pieces += max(0, len(bounds) - 1)
    return pieces


def _resident_columns(dataset: Dataset, rows: int, memory_limit: int) -> tuple[tuple[str, ...], int]:
    """Narrow columns (labels) of the random-access shards (``rows`` rows in all) that
    are held whole in memory, if all of them fit in an eighth of the budget: gathering
    them from memory saves a system call per piece for a few bytes each."""
    names = tuple(n for n, c in dataset.columns.items() if not c.variable and c.row_nbytes <= _RESIDENT_ROW_BYTES)
    if not names or not rows:
        return (), 0
    total = rows * sum(dataset.columns[n].row_nbytes for n in names)
    if total > memory_limit // _RESIDENT_SHARE:
        return (), 0
    return names, total


def _stream_nbytes(dataset: Dataset) -> int:
    """What one open stream holds, for the shard whose streams hold most."""
    columns = list(dataset.columns)
    return max((s.stream_nbytes(columns) for s in dataset.shards if s.streams_units), default=0)


def _largest_whole_unit_rows(dataset: Dataset, stream_min_rows: int) -> int:
    """Rows of the largest unit read whole: units of formats that do not stream,
    and streamable units too small to be worth a stream (< ``stream_min_rows``)."""
    largest = 0
    for shard in dataset.shards:
        bounds = shard.unit_bounds
        if bounds is None or len(bounds) < 2:
            continue
        sizes = np.diff(np.asarray(bounds))
        if shard.streams_units and stream_min_rows:
            sizes = sizes[sizes < stream_min_rows]
        if sizes.size:
            largest = max(largest, int(sizes.max()))
    return largest
