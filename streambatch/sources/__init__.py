"""Readers of each format behind one contract (``Shard``), and ``open_dataset``."""

from ._base import ColumnSpec, RowStream, Shard, ShardReader
from ._dataset import Dataset, SourceLike, open_dataset

__all__ = ["ColumnSpec", "Dataset", "RowStream", "Shard", "ShardReader", "SourceLike", "open_dataset"]
