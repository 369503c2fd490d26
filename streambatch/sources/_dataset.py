"""``open_dataset``: turn whatever the user points at into a :class:`Dataset`,
an ordered list of shards with one shared schema, reading metadata only."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from ..errors import SchemaError, SourceNotFoundError
from ._base import ColumnSpec, Shard
from ._fs import FileSystemPath, expand_glob, resolve
from ._retry import RetryPolicy

__all__ = ["Dataset", "SourceLike", "open_dataset"]

PathLike = Union[str, "os.PathLike[str]"]
SourceLike = Union[PathLike, Sequence[PathLike], Mapping[str, PathLike], "Dataset"]

_NPY = (".npy",)
_PARQUET = (".parquet", ".pq", ".parq")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_GLOB_CHARS = set("*?[")


class Dataset:
    """Rows, columns and shards of a dataset; holds no open files and no data.

    ``columns`` maps each selected column name to ``(numpy dtype, per-row shape)``.
    Global row ``r`` lives in the shard ``i`` with
    ``shard_offsets[i] <= r < shard_offsets[i + 1]``.
    """

    def __init__(self, shards: Sequence[Shard], columns: Sequence[str] | None = None) -> None:
        if not shards:
            raise SourceNotFoundError("the dataset has no shards")
        self.shards: tuple[Shard, ...] = tuple(shards)
        self.columns: dict[str, ColumnSpec] = _common_columns(self.shards, columns)
        rows = [s.num_rows for s in self.shards]
        self.shard_offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
        self.num_rows = int(self.shard_offsets[-1])

    @property
    def row_nbytes(self) -> int:
        """Bytes one row of every selected column occupies in memory."""
        return sum(spec.row_nbytes for spec in self.columns.values())

    @property
    def nbytes(self) -> int:
        return self.row_nbytes * self.num_rows

    def select(self, columns: Sequence[str] | None) -> Dataset:
        """The same shards with a different column projection."""
        return Dataset(self.shards, columns)

    def fingerprint(self) -> str:
        """A short hash of what decides the row order: shard paths, row counts, columns."""
        described = {
            "shards": [[s.path, s.num_rows] for s in self.shards],
            "columns": {n: [c.dtype.str, list(c.shape)] for n, c in self.columns.items()},
        }
        text = json.dumps(described, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}: {c.dtype}{list(c.shape) if c.shape else ''}" for n, c in self.columns.items())
        return f"Dataset({self.num_rows} rows in {len(self.shards)} shard(s); {cols})"


def open_dataset(
    source: SourceLike,
    columns: Sequence[str] | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> Dataset:
    """Open ``source`` reading metadata only (headers, footers, Zarr metadata).

    ``source`` is a path or fsspec URL to a ``.npy`` file, a ``.parquet`` file, a
    ``.zarr`` store, a directory or glob of those; a list of such paths (shards,
    concatenated in order); or a dict ``{column: path_to_npy}`` of row-aligned arrays.
    A ``.npy`` file is one column named after its stem; a directory holding ``.npy``
    files directly is one shard with a column per file; a Zarr group gives a column
    per array.

    ``storage_options`` go to every fsspec filesystem made for a URL (including
    Zarr's store); ``retry`` says how remote reads are retried on transient
    errors (``None``: ``RetryPolicy()``, 5 attempts; see ``streambatch.sources._retry``).
    Each shard keeps its policy as ``shard.retry``.

    >>> ds = open_dataset({"x": "x.npy", "y": "y.npy"})  # doctest: +SKIP
    >>> ds.num_rows, ds.columns["x"]                      # doctest: +SKIP
    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a streambatch.RetryPolicy or None, got {type(retry).__name__}")
    if isinstance(source, Dataset):
        if retry is not None:  # shards are shared with the given dataset: copy, never mutate them
            source = Dataset([_with_retry(copy.copy(s), retry) for s in source.shards], list(source.columns))
        return source if columns is None else source.select(columns)
    shards = [_with_retry(s, retry) for s in _shards_of(source, storage_options, retry)]
    return Dataset(shards, columns)


def _with_retry(shard: Shard, retry: RetryPolicy | None) -> Shard:
    shard.retry = retry  # type: ignore[attr-defined]  # read by the remote read sites
    return shard


def _shards_of(source: Any, storage_options: dict[str, Any] | None, retry: RetryPolicy | None = None) -> list[Shard]:
    if isinstance(source, Mapping):
        return [_npy_columns_shard(source, storage_options, retry)]
    if isinstance(source, (str, os.PathLike)):
        return _shards_at(resolve(source, storage_options, retry), top_level=True)
    if isinstance(source, Sequence):
        if not source:
            raise SourceNotFoundError("an empty list of sources was given")
        shards: list[Shard] = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(f"a list of sources must hold paths or URLs, got {type(item).__name__}")
            shards.extend(_shards_at(resolve(item, storage_options, retry), top_level=True))
        return shards
    raise TypeError(
        "source must be a path or URL, a list of them, a dict {column: path_to_npy} "
        f"or a Dataset; got {type(source).__name__}"
    )


def _npy_columns_shard(
    mapping: Mapping[str, Any], storage_options: dict[str, Any] | None, retry: RetryPolicy | None = None
) -> Shard:
    from ._npy import NpyShard

    if not mapping:
        raise SourceNotFoundError("an empty dict of columns was given")
    files: dict[str, FileSystemPath] = {}
    for name, path in mapping.items():
        location = resolve(path, storage_options, retry)
        if not location.exists():
            raise SourceNotFoundError(f"column {name!r}: no such file: {location.url}")
        if not location.path.endswith(_NPY):
            raise SchemaError(
                f"column {name!r}: {location.url} is not a .npy file (a dict source maps columns to .npy files)"
            )
        files[str(name)] = location
    described = "{" + ", ".join(f"{n}: {f.url}" for n, f in files.items()) + "}"
    return NpyShard(files, described)


def _shards_at(location: FileSystemPath, top_level: bool) -> list[Shard]:
    if _GLOB_CHARS & set(location.path):
        shards: list[Shard] = []
        for match in expand_glob(location):
            shards.extend(_shards_at(match, top_level=False))
        return shards
    if not location.exists():
        raise SourceNotFoundError(f"no such file or directory: {location.url}")
    from ._manifest import has_manifest, refuse_incomplete_conversion, shards_from_manifest

    if has_manifest(location):  # written by `streambatch convert`: trust-but-check, no footer scan
        return shards_from_manifest(location)
    refuse_incomplete_conversion(location)  # a convert DEST without its manifest is not a dataset
    if _is_zarr(location):
        from ._zarr import ZarrShard

        return [ZarrShard(location)]
    if location.isdir():
        return _shards_in_directory(location)
    return [_file_shard(location)]


def _file_shard(location: FileSystemPath) -> Shard:
    name = location.name()
    if name.endswith(_NPY):
        from ._npy import NpyShard

        return NpyShard({name[: -len(".npy")]: location}, location.url)
    if name.endswith(_PARQUET):
        from ._parquet import ParquetShard

        return ParquetShard(location)
    raise SchemaError(
        f"{location.url}: unsupported file type; streambatch reads .npy, .parquet "
        "files and .zarr stores (use `streambatch convert` for CSV)"
    )


def _is_zarr(location: FileSystemPath) -> bool:
    if location.path.rstrip("/").endswith(".zarr"):
        return True
    if not location.isdir():
        return False
    return any(location.child(f"{location.path.rstrip('/')}/{m}").exists() for m in _ZARR_MARKERS)


def _shards_in_directory(location: FileSystemPath) -> list[Shard]:
    """A directory of ``.npy`` files is one shard (a column per file); otherwise each
    Parquet file, Zarr store and sub-directory holding data is a shard, in name order."""
    entries = sorted(location.ls(), key=lambda e: e["name"])
    visible = [e for e in entries if not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith((".", "_"))]
    npy = [e for e in visible if e["type"] == "file" and e["name"].endswith(_NPY)]
    shards: list[Shard] = []
    if npy:
        from ._npy import NpyShard

        files = {}
        for e in npy:
            child = location.child(e["name"])
            files[child.name()[: -len(".npy")]] = child
        shards.append(NpyShard(files, location.url))
    for e in visible:
        child = location.child(e["name"])
        if e["type"] == "file" and e["name"].endswith(_PARQUET):
            from ._parquet import ParquetShard

            shards.append(ParquetShard(child))
        elif e["type"] == "directory":
            try:
                shards.extend(_shards_at(child, top_level=False))
            except SourceNotFoundError:
                continue  # a sub-directory without data files is not part of the dataset
    if not shards:
        raise SourceNotFoundError(
            f"directory {location.url} holds no data files (.npy, .parquet or .zarr)"
        )
    return shards


def _common_columns(shards: Sequence[Shard], columns: Sequence[str] | None) -> dict[str, ColumnSpec]:
    first = shards[0]
    if columns is None:
        names = list(first.columns)
    else:
        if isinstance(columns, str):
            raise TypeError(f"columns must be a list of names, got the string {columns!r}")
        names = list(dict.fromkeys(columns))
        if not names:
            raise SchemaError("columns is empty: select at least one column")
    checker = getattr(first, "check_columns", None)
    for name in names:
        if name not in first.columns:
            if checker is not None:
                checker([name])  # raises with the reason the format cannot read it
            available = ", ".join(repr(c) for c in first.columns) or "none"
            raise SchemaError(f"unknown column {name!r} in {first.path}; available columns: {available}")
    selected = {name: first.columns[name] for name in names}
    for shard in shards[1:]:
        for name, spec in selected.items():
            other = shard.columns.get(name)
            if other is None:
                raise SchemaError(f"column {name!r} is in {first.path} but missing from {shard.path}")
            if other != spec:
                raise SchemaError(
                    f"column {name!r} differs between shards: {first.path} has {spec}, "
                    f"{shard.path} has {other} (dtype, row shape)"
                )
    return selected
