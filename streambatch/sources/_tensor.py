"""How streambatch stores a fixed-size tensor in one Arrow/Parquet column: a
``fixed_size_binary`` of each row's bytes, with field metadata naming the numpy
dtype and the per-row shape. Written by ``writers.ParquetWriter``, read by
``sources._parquet``; other writers can produce it too (docs/formats.md)."""

from __future__ import annotations

import json

import numpy as np

__all__ = ["DTYPE_KEY", "SHAPE_KEY", "tensor_metadata"]

#: Field metadata keys that give a ``fixed_size_binary`` column its numpy meaning.
DTYPE_KEY = b"dtype"
SHAPE_KEY = b"shape"


def tensor_metadata(dtype: np.dtype, shape: tuple[int, ...]) -> dict[bytes, bytes]:
    """The field metadata of a tensor column of ``dtype`` and per-row ``shape``."""
    return {DTYPE_KEY: np.dtype(dtype).str.encode(), SHAPE_KEY: json.dumps(list(shape)).encode()}
