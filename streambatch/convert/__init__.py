"""``streambatch convert``: rewrite any dataset (``.npy``, Parquet, Zarr, CSV) into
loader-friendly shards plus a manifest, optionally globally shuffled, with a
bounded memory footprint, atomically and resumably.

>>> from streambatch.convert import convert
>>> result = convert(["raw.csv"], "out/", shard_format="parquet", shuffle=True, seed=0)  # doctest: +SKIP
>>> print(result.summary())                                                              # doctest: +SKIP

Layout of ``DEST``: ``part-00000.parquet`` / ``part-00000.zarr`` /
``part-00000/{column}.npy`` shards, and ``manifest.json`` written last. While a
conversion runs, ``DEST`` also holds ``.tmp-*`` files (partial shards, staging)
and ``.convert-journal.jsonl`` (finished work, for ``resume=True``). Names
starting with ``.`` are never read as data.

Determinism: the bytes of every shard depend only on the inputs and on
(format, columns, rows per shard, chunk rows, compression, shuffle, seed,
memory limit), never on ``workers`` or ``scheduler``.
"""

from ._options import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    ConvertError,
    ConvertOptions,
    ConvertResult,
    default_chunk_rows,
)
from ._run import convert
from ._shards import ConvertWriteError

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "ConvertError",
    "ConvertOptions",
    "ConvertResult",
    "ConvertWriteError",
    "convert",
    "default_chunk_rows",
]
