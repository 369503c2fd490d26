"""The reader contract of ``streambatch/sources/_base.py``, as one test class.

Each format subclasses :class:`ReaderConformance` in its own test file and says
how to write a small source (``make``); the contract tests then run against it,
as zarr-python ships ``StoreTests`` for its stores. What the contract promises:

* building a shard reads metadata only: no file stays open, and the shard holds
  no rows (it pickles small and reads the same after pickling);
* ``read_into`` of any row range, within a unit or across units, and
  ``read_many`` of ranges in any order, are value-equal to the source; a
  zero-row range reads nothing; rows outside ``0:num_rows`` are refused naming
  the file; a column not opened is refused;
* ``read_into`` may be called from several threads at once, each with its own
  disjoint ``out``;
* ``close()`` is idempotent, releases every descriptor, and a closed reader
  refuses reads;
* formats whose shards ``streams_units``: ``open_stream`` reads a unit slice by
  slice in order, may skip ahead, refuses to read behind; the others say they
  cannot stream;
* ``with_cast`` to the dtypes the columns have changes nothing; to another dtype it
  gives a copy that reads the cast values, the shard itself unchanged (formats
  decoded through Arrow: ``casts``), or refuses by name.

Format-specific behaviour (type mapping, corrupt input, remote reads) stays in
the per-format test files.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import threading
from collections.abc import Mapping
from contextlib import closing

import numpy as np
import pytest

from streambatch.errors import SchemaError
from streambatch.sources._base import Shard

__all__ = ["ReaderConformance", "fd_count", "open_files_under"]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_files_under(root) -> list[str]:
    """The descriptors this process holds on files under ``root`` (not the event
    loop or libraries that zarr and pyarrow start once per process)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(root)):
            found.append(target)
    return found


def _empty(shard: Shard, rows: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    columns = list(shard.columns) if columns is None else columns
    return {c: np.empty((rows, *shard.columns[c].shape), shard.columns[c].dtype) for c in columns}


def _in_threads(target, args: list[tuple]) -> None:
    """``target(*a)`` for every ``a`` in ``args``, each in its own thread, all joined."""
    threads = [threading.Thread(target=target, args=a, name=f"conformance-{k}") for k, a in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


class ReaderConformance:
    """Contract tests of ``Shard``/``ShardReader``/``RowStream``; subclass per format.

    A subclass implements :meth:`make`; the class attributes describe what the
    format does where the contract leaves it a choice.
    """

    #: Readers keep descriptors open between reads (so ``close`` has some to release).
    holds_handles_between_reads: bool = True
    #: ``open_reader`` refuses unknown columns itself (not only ``check_columns``).
    open_checks_columns: bool = True
    #: What a read outside ``0:num_rows`` says besides the path (``None``: only the path).
    out_of_range_message: str | None = "rows {start}:{stop} are outside 0:{n}"
    #: The error a read of a column the reader was not opened with raises.
    unopened_column_error: type[Exception] = SchemaError
    #: ``with_cast`` casts numeric columns (formats decoded through Arrow); the others refuse.
    casts: bool = False

    def make(self, tmp_path) -> tuple[Shard, dict[str, np.ndarray]]:
        """A shard of at least 100 rows, with at least three units when it has units,
        and the values of every column (``expected[c][i]`` is row ``i``)."""
        raise NotImplementedError

    def out_of_range(self, n: int) -> list[tuple[int, int]]:
        """Ranges outside ``0:n`` that a reader of ``n`` rows must refuse."""
        return [(n - 2, n + 1), (n, n + 1), (-1, 3)]

    # ------------------------------------------------------------------ fixtures and helpers

    @pytest.fixture
    def source(self, tmp_path) -> tuple[Shard, dict[str, np.ndarray]]:
        return self.make(tmp_path)

    @staticmethod
    def read(shard: Shard, start: int, stop: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        out = _empty(shard, stop - start, columns)
        with closing(shard.open_reader(list(out))) as reader:
            reader.read_into(start, stop, out)
        return out

    @staticmethod
    def assert_rows(got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], rows, what: str = "") -> None:
        for name, values in got.items():
            np.testing.assert_array_equal(values, expected[name][rows], err_msg=f"{name} {what}")

    @staticmethod
    def units(shard: Shard) -> list[tuple[int, int]]:
        """The units, or slices of about a tenth of the rows for random-access shards."""
        bounds = shard.unit_bounds
        if bounds is None:
            bounds = np.linspace(0, shard.num_rows, 11).astype(np.int64)
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds.tolist())]

    # ------------------------------------------------------------------ metadata at open

    def test_building_a_shard_reads_metadata_only(self, tmp_path):
        shard, expected = self.make(tmp_path)
        assert open_files_under(tmp_path) == [], "building a shard left a file open"
        assert shard.num_rows == len(next(iter(expected.values())))
        assert set(shard.columns) == set(expected)
        for name, values in expected.items():
            assert shard.columns[name] == (values.dtype, values.shape[1:]), name
        data_bytes = sum(v.nbytes for v in expected.values())
        # a footer or header may hold statistics per unit, but never the rows themselves
        assert len(pickle.dumps(shard)) < data_bytes, "a shard holds rows, not only metadata"

    def test_unit_bounds_run_from_zero_to_num_rows(self, source):
        shard, _ = source
        bounds = shard.unit_bounds
        if bounds is None:
            return  # random access: any range is a unit
        assert bounds.dtype == np.int64
        assert bounds[0] == 0 and bounds[-1] == shard.num_rows
        assert (np.diff(bounds) >= 0).all()
        assert len(bounds) >= 4, "make() should give at least three units"

    def test_a_shard_pickles_for_worker_processes(self, source):
        shard, expected = source
        copy = pickle.loads(pickle.dumps(shard))
        assert copy.columns == shard.columns and copy.num_rows == shard.num_rows
        bounds = shard.unit_bounds
        assert (bounds is None) == (copy.unit_bounds is None)
        if bounds is not None:
            assert copy.unit_bounds.tolist() == bounds.tolist()
        start, stop = self.units(shard)[1]
        self.assert_rows(self.read(copy, start, stop), expected, slice(start, stop))

    def test_with_cast_to_the_stored_dtypes_changes_nothing_and_another_casts_or_is_refused(self, source):
        shard, expected = source
        start, stop = self.units(shard)[1]
        same = shard.with_cast({n: s.dtype for n, s in shard.columns.items() if not s.variable})
        assert same.columns == shard.columns
        self.assert_rows(self.read(same, start, stop), expected, slice(start, stop))
        numeric = [n for n, s in shard.columns.items() if not s.shape and s.dtype.kind in "iu" and s.dtype.isnative]
        if not numeric:
            return
        name = numeric[0]
        before = dict(shard.columns)
        if not self.casts:
            with pytest.raises(SchemaError, match=rf"{re.escape(shard.path)}: column {name!r} .*cannot be cast"):
                shard.with_cast({name: np.dtype(np.float64)})
            return
        cast = shard.with_cast({name: np.dtype(np.float64)})
        assert cast.columns[name].dtype == np.float64 and shard.columns == before
        got = self.read(cast, start, stop, [name])
        np.testing.assert_array_equal(got[name], expected[name][start:stop].astype(np.float64))

    # ------------------------------------------------------------------ read_into

    def test_every_range_between_the_edges_of_two_units_equals_the_source(self, source):
        shard, expected = source
        with closing(shard.open_reader(list(shard.columns))) as reader:
            for lo, hi in self.units(shard)[:2]:
                # every (start, stop) among the unit's first and last 6 rows: ranges at either
                # end, in the middle and (nearly) the whole unit, ~90 reads a unit
                edges = sorted({*range(lo, min(hi, lo + 6) + 1), *range(max(lo, hi - 6), hi + 1)})
                for start, stop in itertools.combinations(edges, 2):
                    out = _empty(shard, stop - start)
                    reader.read_into(start, stop, out)
                    self.assert_rows(out, expected, slice(start, stop), f"{start}:{stop}")

    def test_ranges_across_units_and_the_whole_shard_equal_the_source(self, source):
        shard, expected = source
        units = self.units(shard)
        n = shard.num_rows
        ranges = [(0, n), (units[0][1] - 1, units[2][0] + 1), (units[1][0], units[-1][1]), (n - 1, n)]
        rng = np.random.default_rng(0)
        ranges += [tuple(sorted(rng.integers(0, n + 1, 2).tolist())) for _ in range(10)]
        for start, stop in ranges:
            self.assert_rows(self.read(shard, start, stop), expected, slice(start, stop), f"{start}:{stop}")

    def test_reading_unit_by_unit_gives_every_row(self, source):
        shard, expected = source
        out = _empty(shard, shard.num_rows)
        with closing(shard.open_reader(list(shard.columns))) as reader:
            for lo, hi in self.units(shard):
                reader.read_into(lo, hi, {c: a[lo:hi] for c, a in out.items()})
        self.assert_rows(out, expected, slice(None))

    def test_only_the_opened_columns_are_read(self, source):
        shard, expected = source
        first, *rest = list(shard.columns)
        columns = [*rest[-1:], first]  # not storage order
        got = self.read(shard, 10, 16, columns)
        assert list(got) == columns
        self.assert_rows(got, expected, slice(10, 16))
        reader = shard.open_reader([first])
        with closing(reader), pytest.raises(self.unopened_column_error, match=repr(rest[0])):
            reader.read_into(0, 4, _empty(shard, 4, rest[:1]))

    def test_an_unknown_column_is_refused_naming_the_file_and_the_columns(self, source):
        shard, _ = source
        requests = [shard.check_columns] + ([shard.open_reader] if self.open_checks_columns else [])
        for request in requests:
            with pytest.raises(SchemaError, match=r"no column 'nope'; available columns: ") as info:
                request([*shard.columns, "nope"])
            message = str(info.value)
            assert shard.path in message and all(repr(c) in message for c in shard.columns)

    def test_zero_row_ranges_read_nothing(self, source):
        shard, _ = source
        n = shard.num_rows
        with closing(shard.open_reader(list(shard.columns))) as reader:
            for k in (0, self.units(shard)[1][0] + 1, n):
                out = _empty(shard, 0)
                reader.read_into(k, k, out)
                assert all(len(a) == 0 for a in out.values())
            reader.read_many(np.array([0, 5, n], np.int64), np.array([0, 5, n], np.int64), _empty(shard, 0))

    def test_rows_outside_the_shard_are_refused_naming_the_file(self, source):
        shard, _ = source
        n = shard.num_rows
        with closing(shard.open_reader(list(shard.columns))) as reader:
            for start, stop in self.out_of_range(n):
                with pytest.raises(ValueError) as info:
                    reader.read_into(start, stop, _empty(shard, stop - start))
                assert shard.path in str(info.value), (start, stop)
                if self.out_of_range_message is not None:
                    assert self.out_of_range_message.format(start=start, stop=stop, n=n) in str(info.value)

    # ------------------------------------------------------------------ read_many

    def test_read_many_concatenates_ranges_in_any_order(self, source):
        shard, expected = source
        units = self.units(shard)
        n = shard.num_rows
        starts = np.array([units[2][0] + 1, 0, units[1][1] - 2, 7, n - 3, units[1][0]], np.int64)
        stops = np.array([units[2][0] + 3, 2, units[2][0] + 2, 7, n, units[1][0] + 1], np.int64)
        # out of order, one spanning units 1-2, one empty, one at the end
        out = _empty(shard, int((stops - starts).sum()))
        with closing(shard.open_reader(list(shard.columns))) as reader:
            reader.read_many(starts, stops, out)
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        self.assert_rows(out, expected, rows)

    # ------------------------------------------------------------------ threads

    def test_four_threads_reading_disjoint_units_at_once_get_the_source(self, source):
        shard, expected = source
        out = {c: np.zeros_like(v) for c, v in expected.items()}
        units = self.units(shard)
        reader = shard.open_reader(list(shard.columns))
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def work(mine: list[tuple[int, int]]) -> None:
            try:
                barrier.wait()
                for _ in range(3):
                    for lo, hi in mine:
                        reader.read_into(lo, hi, {c: a[lo:hi] for c, a in out.items()})
            except BaseException as e:  # surfaced below, in the test's thread
                errors.append(e)

        _in_threads(work, [(units[k::4],) for k in range(4)])
        reader.close()
        assert not errors, errors
        self.assert_rows(out, expected, slice(None))

    # ------------------------------------------------------------------ close

    def test_close_releases_every_descriptor_and_is_idempotent(self, source, tmp_path):
        shard, _ = source
        units = self.units(shard)
        reader = shard.open_reader(list(shard.columns))

        def read_unit(k: int) -> None:
            lo, hi = units[k]
            reader.read_into(lo, hi, _empty(shard, hi - lo))

        _in_threads(read_unit, [(k,) for k in range(3)])
        read_unit(0)
        if self.holds_handles_between_reads:
            assert open_files_under(tmp_path), "handles stay open between reads"
        reader.close()
        assert open_files_under(tmp_path) == []
        reader.close()
        assert open_files_under(tmp_path) == []
        with pytest.raises(ValueError, match="closed"):
            read_unit(0)

    # ------------------------------------------------------------------ streams

    def _stream_unit(self, shard: Shard) -> tuple[int, int]:
        lo, hi = self.units(shard)[1]
        assert hi - lo >= 10, "make() should give units of at least 10 rows"
        return lo, hi

    def test_a_stream_reads_a_unit_slice_by_slice_in_order(self, source):
        shard, expected = source
        with closing(shard.open_reader(list(shard.columns))) as reader:
            if not shard.streams_units:
                with pytest.raises(NotImplementedError, match="cannot stream"):
                    reader.open_stream(0, 1, 1)
                return
            lo, hi = self._stream_unit(shard)
            stream = reader.open_stream(lo, hi, 3)
            try:
                for start in range(lo, hi, 3):
                    stop = min(start + 3, hi)
                    out = _empty(shard, stop - start)
                    stream.read_into(start, stop, out)
                    self.assert_rows(out, expected, slice(start, stop), f"{start}:{stop}")
            finally:
                stream.close()
                stream.close()  # idempotent

    def test_a_stream_skips_ahead_and_refuses_to_read_behind(self, source, tmp_path):
        shard, expected = source
        if not shard.streams_units:
            return  # see test_a_stream_reads_a_unit_slice_by_slice_in_order
        lo, hi = self._stream_unit(shard)
        with closing(shard.open_reader(list(shard.columns))) as reader:
            stream = reader.open_stream(lo + 1, hi, 2)
            try:
                for start, stop in ((lo + 1, lo + 3), (lo + 6, lo + 8), (lo + 8, lo + 8), (hi - 1, hi)):
                    out = _empty(shard, stop - start)
                    stream.read_into(start, stop, out)
                    self.assert_rows(out, expected, slice(start, stop), f"{start}:{stop}")
            finally:
                stream.close()
            stream = reader.open_stream(lo, hi, 2)
            try:
                stream.read_into(lo + 5, lo + 7, _empty(shard, 2))
                with pytest.raises(ValueError) as info:
                    stream.read_into(lo + 2, lo + 4, _empty(shard, 2))
                assert shard.path in str(info.value)
            finally:
                stream.close()
        assert open_files_under(tmp_path) == []
