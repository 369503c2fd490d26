"""NpyShard: a directory of row-aligned ``.npy`` files, one per column, read by
positional reads (random access: no units, no streams)."""

from __future__ import annotations

import numpy as np

import streambatch as sb
from tests.conformance import ReaderConformance
from tests.conftest import make_columns, write_dataset


class TestNpyReader(ReaderConformance):
    def make(self, tmp_path):
        columns = make_columns(300)
        (shard,) = sb.open_dataset(write_dataset("npy", tmp_path, columns)).shards
        return shard, columns

    def test_resident_columns_read_the_same_as_positional_reads(self, tmp_path):
        shard, expected = self.make(tmp_path)
        starts, stops = np.array([250, 0, 17]), np.array([260, 3, 40])
        out = {c: np.empty((int((stops - starts).sum()), *s.shape), s.dtype) for c, s in shard.columns.items()}
        reader = shard.open_reader(list(shard.columns), resident=["id"])
        try:
            reader.read_many(starts, stops, out)
        finally:
            reader.close()
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        for name, values in out.items():
            np.testing.assert_array_equal(values, expected[name][rows], err_msg=name)
