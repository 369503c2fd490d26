"""The registry of formats: how a path is recognised (a file suffix, or a marker
file inside a directory) and which shard class reads it.

``open_dataset`` asks this module, never branches on suffixes itself, so a new
format is one reader module plus one :class:`Format` entry here. Reader modules
are imported lazily, when a path of theirs is met.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._base import Shard
from ._fs import FileSystemPath

__all__ = ["FORMATS", "Format", "directory_format", "file_format", "known_suffixes"]


@dataclass(frozen=True)
class Format:
    """One format. ``open_file`` builds the shard of one data file (a name ending in
    one of ``suffixes``). ``open_store`` builds the shards of a directory that *is*
    a dataset of this format: its name ends in one of ``store_suffixes`` or it holds
    one of ``markers``. ``group`` (``.npy`` only) turns the data files found directly
    in one directory into a single shard, a column per file."""

    name: str
    suffixes: tuple[str, ...] = ()
    open_file: Callable[[FileSystemPath], Shard] | None = None
    store_suffixes: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    open_store: Callable[[FileSystemPath], list[Shard]] | None = None
    group: Callable[[Sequence[FileSystemPath], FileSystemPath], Shard] | None = None

    def __post_init__(self) -> None:
        if self.suffixes and self.open_file is None:
            raise ValueError(f"format {self.name!r}: file suffixes need open_file")
        if (self.store_suffixes or self.markers) and self.open_store is None:
            raise ValueError(f"format {self.name!r}: store suffixes or markers need open_store")


def _npy_file(location: FileSystemPath) -> Shard:
    from ._npy import NpyShard

    return NpyShard({_stem(location.name(), ".npy"): location}, location.url)


def _npy_group(files: Sequence[FileSystemPath], directory: FileSystemPath) -> Shard:
    from ._npy import NpyShard

    return NpyShard({_stem(f.name(), ".npy"): f for f in files}, directory.url)


def _parquet_file(location: FileSystemPath) -> Shard:
    from ._parquet import ParquetShard

    return ParquetShard(location)


def _zarr_store(location: FileSystemPath) -> list[Shard]:
    from ._zarr import ZarrShard

    return [ZarrShard(location)]


def _arrow_file(location: FileSystemPath) -> Shard:
    from ._arrow import ArrowShard

    return ArrowShard(location)


def _hf_directory(location: FileSystemPath) -> list[Shard]:
    from ._arrow import huggingface_shards

    return huggingface_shards(location)


def _stem(name: str, suffix: str) -> str:
    return name[: -len(suffix)]


#: In the order a directory is tested: the first whose store suffix or marker matches wins.
FORMATS: tuple[Format, ...] = (
    Format("zarr", store_suffixes=(".zarr",), markers=("zarr.json", ".zgroup", ".zarray"), open_store=_zarr_store),
    # Hugging Face ``Dataset.save_to_disk``: Arrow stream files listed in state.json
    Format("huggingface", markers=("state.json", "dataset_dict.json"), open_store=_hf_directory),
    Format("parquet", suffixes=(".parquet", ".pq", ".parq"), open_file=_parquet_file),
    Format("npy", suffixes=(".npy",), open_file=_npy_file, group=_npy_group),
    Format("arrow", suffixes=(".arrow", ".feather", ".ipc", ".arrows"), open_file=_arrow_file),
)


def file_format(location: FileSystemPath) -> Format | None:
    """The format whose file suffix ``location``'s name ends with, if any."""
    name = location.name().lower()
    for fmt in FORMATS:
        if fmt.suffixes and name.endswith(fmt.suffixes):
            return fmt
    return None


def directory_format(location: FileSystemPath, isdir: bool | None = None) -> Format | None:
    """The format of the store ``location`` is (by its name or a marker file it holds), if any."""
    name = location.path.rstrip("/").lower()
    for fmt in FORMATS:
        if fmt.store_suffixes and name.endswith(fmt.store_suffixes):
            return fmt
    if not (location.isdir() if isdir is None else isdir):
        return None
    root = location.path.rstrip("/")
    for fmt in FORMATS:
        if any(location.child(f"{root}/{marker}").exists() for marker in fmt.markers):
            return fmt
    return None


def known_suffixes() -> str:
    """``.npy, .parquet, ...`` for messages."""
    return ", ".join(fmt.suffixes[0] for fmt in FORMATS if fmt.suffixes) + ", .zarr stores and Hugging Face datasets"
