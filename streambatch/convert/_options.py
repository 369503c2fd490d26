"""What :func:`convert` is asked and what it answers: the validated options, the
output formats and their codecs, the default chunk size, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._units import format_bytes
from ..errors import StreambatchError

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "DEFAULT_SHARD_SIZE",
    "FORMATS",
    "MAX_CHUNK_ROWS",
    "ConvertError",
    "ConvertOptions",
    "ConvertResult",
    "chunk_target_bytes",
    "default_chunk_rows",
]

FORMATS = ("parquet", "npy", "zarr")
#: what each output format's writer accepts (Parquet: pyarrow's codecs; Zarr: the zstd
#: codec or Blosc-lz4; npy: raw files)
COMPRESSIONS = {
    "parquet": ("none", "snappy", "gzip", "brotli", "lz4", "zstd"),
    "zarr": ("none", "zstd", "lz4"),
    "npy": ("none",),
}
#: ``compression=None``: Parquet snappy (near-free to read back: measured as fast as
#: uncompressed on float data, where zstd read half as fast; smaller on compressible data);
#: Zarr uncompressed, as before
DEFAULT_COMPRESSION = {"parquet": "snappy", "zarr": "none", "npy": "none"}
DEFAULT_SHARD_SIZE = "256MiB"
#: Target bytes of one Parquet row group / Zarr chunk (see default_chunk_rows).
_CHUNK_TARGET_BYTES = 128 << 10
_SHUFFLED_CHUNK_TARGET_BYTES = 1 << 20
#: The most rows of one Parquet row group / Zarr chunk that convert chooses itself.
MAX_CHUNK_ROWS = 65536


class ConvertError(StreambatchError, ValueError):
    """The conversion cannot start or resume as asked (e.g. inputs changed since the journal)."""


def default_chunk_rows(row_nbytes: int, shuffled: bool = False) -> int:
    """Rows per Parquet row group / Zarr chunk: ~128 KiB (~1 MiB with ``--shuffle``),
    within [64, 65536] rows.

    The loader shuffles by holding many read units in a window, and a unit is a
    whole row group: smaller groups mean more distinct units in the same memory,
    so a better shuffle (1.35 at 128 KiB vs 3.0 at 1 MiB, loader at ~6 % of the
    data), at a cost in loader rows/s (0.41 M vs 1.07 M) -- docs/convert.md.
    ``--shuffle`` output is already a full permutation, so the loader can read it
    in order (score 1.0 at any chunk size) and larger chunks only add speed."""
    return int(min(MAX_CHUNK_ROWS, max(64, chunk_target_bytes(shuffled) // max(1, row_nbytes))))


def chunk_target_bytes(shuffled: bool = False) -> int:
    """Bytes of row data a row group / chunk aims at: what :func:`default_chunk_rows`
    divides by the bytes of a row, and where a Parquet row group of variable-length
    rows is cut (by their actual bytes) when ``chunk_rows`` is not given."""
    return _SHUFFLED_CHUNK_TARGET_BYTES if shuffled else _CHUNK_TARGET_BYTES


@dataclass(frozen=True)
class ConvertOptions:
    """Validated options of :func:`convert`; messages name the option and the value."""

    shard_format: str
    columns: tuple[str, ...] | None = None
    #: ``(column, dtype)`` pairs: the columns read as another dtype (``open_dataset(cast=)``);
    #: dtypes as ``str(numpy.dtype)``, e.g. ``"float64"``, ``"datetime64[ns]"``
    cast: tuple[tuple[str, str], ...] = ()
    shard_size: int | None = None
    rows_per_shard: int | None = None
    chunk_rows: int | None = None
    #: None: the format's default (DEFAULT_COMPRESSION)
    compression: str | None = None
    shuffle: bool = False
    seed: int = 0
    memory_limit: int = 1 << 30
    workers: int = 1
    scheduler: str | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        if self.shard_format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.shard_format!r}")
        if self.compression is None:
            object.__setattr__(self, "compression", DEFAULT_COMPRESSION[self.shard_format])
        offered = COMPRESSIONS[self.shard_format]
        if self.compression not in offered:
            why = " (raw files)" if self.shard_format == "npy" else ""
            raise ValueError(
                f"compression={self.compression!r} is not available for {self.shard_format} output{why}; "
                f"choose from {', '.join(offered)}"
            )
        if self.shard_size is not None and self.rows_per_shard is not None:
            raise ValueError("give shard_size or rows_per_shard, not both")
        for name in ("rows_per_shard", "chunk_rows", "shard_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.overwrite and self.resume:
            raise ValueError("give overwrite or resume, not both")
        if self.columns is not None and not self.columns:
            raise ValueError("columns is empty: select at least one column")
        if self.cast:
            from ..sources._cast import parse_cast

            names = [name for name, _ in self.cast]
            if len(set(names)) != len(names):
                raise ValueError(f"cast names a column more than once: {names}")
            parsed = parse_cast(dict(self.cast))  # a dtype cast= cannot deliver: named
            object.__setattr__(self, "cast", tuple((n, str(d)) for n, d in parsed.items()))

    def output_params(self) -> dict[str, Any]:
        """What decides the output bytes (recorded in the manifest and journal)."""
        return {
            "format": self.shard_format,
            "columns": list(self.columns) if self.columns else None,
            "shard_size": self.shard_size,
            "rows_per_shard": self.rows_per_shard,
            "chunk_rows": self.chunk_rows,
            "compression": self.compression,
            "shuffle": self.shuffle,
            "seed": self.seed if self.shuffle else None,
            "memory_limit": self.memory_limit if self.shuffle else None,
            # only when given: the params of a conversion without a cast stay as they were
            **({"cast": dict(self.cast)} if self.cast else {}),
        }


@dataclass
class ConvertResult:
    dest: str
    rows: int
    shards: int
    bytes: int
    seconds: float
    resumed_shards: int = 0
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else float("inf")
        resumed = f" ({self.resumed_shards} already done)" if self.resumed_shards else ""
        return (
            f"converted {self.rows:,} rows into {self.shards} shard(s){resumed}, "
            f"{format_bytes(self.bytes)} in {self.seconds:.1f} s ({rate:.0f} MB/s) -> {self.dest}"
        )
