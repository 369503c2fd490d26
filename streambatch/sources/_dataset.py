"""``open_dataset``: turn whatever the user points at into a :class:`Dataset`,
an ordered list of shards with one shared schema, reading metadata only."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..errors import SchemaError, SourceNotFoundError, UnknownColumnError
from ._base import ColumnSpec, Shard
from ._formats import FORMATS, directory_format, file_format, known_suffixes
from ._fs import FileSystemPath, expand_glob, list_directory, resolve
from ._retry import RetryPolicy

if TYPE_CHECKING:
    from ._cache import FileCache

__all__ = ["Dataset", "SourceLike", "inspect_dataset", "open_dataset"]

PathLike = Union[str, "os.PathLike[str]"]
SourceLike = Union[PathLike, Sequence[PathLike], Mapping[str, PathLike], "Dataset"]

logger = logging.getLogger("streambatch")

_NPY = (".npy",)
_GLOB_CHARS = set("*?[")


class Dataset:
    """Rows, columns and shards of a dataset; holds no open files and no data.

    ``columns`` maps each selected column name to ``(numpy dtype, per-row shape)``.
    Global row ``r`` lives in the shard ``i`` with
    ``shard_offsets[i] <= r < shard_offsets[i + 1]``.

    ``column_metadata`` maps a column to what its values mean where the storage
    says more than the dtype (a categorical column's ``{"categories": [...]}``);
    ``ignored`` maps the names that are not columns (not on the row axis) to why.
    Building a dataset refuses, by name, every selected column a shard cannot
    deliver, including nulls its footer statistics count (unless ``fill_nulls``
    fills them); see :func:`open_dataset`. ``cast`` is applied first (so
    ``columns`` and ``fill_nulls`` values are of the delivered dtypes).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        columns: Sequence[str] | None = None,
        *,
        exclude: Sequence[str] | None = None,
        fill_nulls: Mapping[str, Any] | None = None,
        cast: Mapping[str, Any] | None = None,
    ) -> None:
        if not shards:
            raise SourceNotFoundError("the dataset has no shards")
        shards = tuple(shards)
        if cast is not None:
            checked = _check_cast(shards, cast)
            shards = tuple(s.with_cast(checked) for s in shards)
            if fill_nulls is None and shards[0].fill_nulls:  # kept from an opened Dataset: check them again
                fill_nulls = dict(shards[0].fill_nulls)
        if fill_nulls is not None:
            fill_nulls = _check_fill_nulls(shards, fill_nulls)
            shards = tuple(s.with_fill_nulls(fill_nulls) for s in shards)
        self.shards: tuple[Shard, ...] = shards
        self.exclude: tuple[str, ...] = _names("exclude", exclude) if exclude is not None else ()
        self.columns: dict[str, ColumnSpec] = _common_columns(self.shards, columns, self.exclude)
        for shard in self.shards:  # nulls in footer statistics and the like: at open, named
            shard.check_columns(list(self.columns))
        self.column_metadata: dict[str, dict[str, Any]] = _common_metadata(self.shards, self.columns)
        self.ignored: dict[str, str] = {n: str(r) for s in self.shards for n, r in s.ignored.items()}
        if self.ignored:
            logger.info(
                "not columns (not along the row axis), left out: %s",
                "; ".join(f"{n!r}: {r}" for n, r in self.ignored.items()),
            )
        rows = [s.num_rows for s in self.shards]
        self.shard_offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
        self.num_rows = int(self.shard_offsets[-1])

    @property
    def fill_nulls(self) -> dict[str, Any]:
        return dict(self.shards[0].fill_nulls)

    @property
    def cast(self) -> dict[str, np.dtype]:
        """Column -> the dtype it is delivered as (``open_dataset(cast=...)``)."""
        return dict(self.shards[0].cast)

    @property
    def row_nbytes(self) -> int:
        """Bytes one row of every selected column occupies in memory; the values of
        variable-length columns as :meth:`column_row_nbytes` estimates them."""
        return sum(self.column_row_nbytes(name) for name in self.columns)

    def column_row_nbytes(self, name: str) -> int:
        """Bytes one row of column ``name`` occupies in memory. For a variable-length
        column: its offset and length plus the values, the largest estimate of any
        shard (:meth:`Shard.variable_row_nbytes`), at least one byte."""
        spec = self.columns[name]
        if not spec.variable:
            return spec.row_nbytes
        return spec.row_nbytes + max(1, max(s.variable_row_nbytes(name) for s in self.shards))

    @property
    def nbytes(self) -> int:
        return self.row_nbytes * self.num_rows

    def select(self, columns: Sequence[str] | None) -> Dataset:
        """The same shards (with their ``fill_nulls`` and ``cast``) with a different column projection."""
        return Dataset(self.shards, columns, exclude=self.exclude if columns is None else None)

    def fingerprint(self) -> str:
        """A short hash of what decides the row order: shard paths, row counts, columns
        (as delivered: a ``cast=`` changes it, see :mod:`streambatch.state`)."""
        described = {
            "shards": [[s.path, s.num_rows] for s in self.shards],
            "columns": {
                n: [c.dtype.str, list(c.shape)] + ([c.kind] if c.variable else []) for n, c in self.columns.items()
            },
        }
        text = json.dumps(described, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        cols = ", ".join(
            f"{n}: {c!r}" if c.variable else f"{n}: {c.dtype}{list(c.shape) if c.shape else ''}"
            for n, c in self.columns.items()
        )
        return f"Dataset({self.num_rows} rows in {len(self.shards)} shard(s); {cols})"


def open_dataset(
    source: SourceLike,
    columns: Sequence[str] | None = None,
    *,
    exclude: Sequence[str] | None = None,
    fill_nulls: Mapping[str, Any] | None = None,
    cast: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
) -> Dataset:
    """Open ``source`` reading metadata only (headers, footers, Zarr metadata).

    ``source`` is a path or fsspec URL to a ``.npy`` file, a Parquet file, an Arrow
    IPC / Feather file, a ``.zarr`` store, a Hugging Face ``save_to_disk`` directory,
    a directory or glob of those; a list of such paths (shards, concatenated in
    order); or a dict ``{column: path_to_npy}`` of row-aligned arrays. A ``.npy``
    file is one column named after its stem; a directory holding ``.npy`` files
    directly is one shard with a column per file; a Zarr group gives a column per
    array along the row axis.

    ``columns=None`` means every column: one that streambatch cannot deliver (a
    string, a variable-length list, a decimal ...) is a ``SchemaError`` naming the
    file, the column, its type and the remedy, never silently left out. Select
    the others with ``columns=[...]`` or drop such columns with ``exclude=[...]``.
    An unknown name in either is an ``UnknownColumnError`` (also a ``KeyError``).

    Nulls cannot be held by a NumPy batch: they are found at open from footer
    statistics where the file has them (else when the row group is read), and
    ``fill_nulls={"col": value}`` reads them as ``value`` instead (pandas writes
    float NaN as null).

    ``cast={"price": "float64", "ts": "datetime64[ns]"}`` delivers columns as
    another dtype, cast by Arrow on the decoded column (Parquet, Arrow IPC) before
    it is copied into the batch, so the memory budget counts the delivered
    dtype. It reads the columns that have no NumPy equivalent -- decimals (as
    float64/float32, rounded, or an integer dtype, exact), tz-aware timestamps (as
    ``datetime64[unit]`` holding the **UTC** instant), time of day (as
    ``timedelta64[unit]`` since midnight, or an integer count of its unit) -- and
    narrows numbers (``float64`` -> ``float32``, ``int64`` -> ``int32``). A value
    the dtype cannot hold (an overflow, a fractional part cast to an integer) is
    never wrapped or truncated: a ``CastError`` names the file, the row group and
    the column, at open when the footer statistics show it, else when the row
    group is read. A cast the column cannot reach is a ``SchemaError`` naming the
    column, its type and the dtype; an unknown name an ``UnknownColumnError``.
    ``.npy`` and Zarr columns are read straight into the batch and are not cast.
    The table of casts is in ``streambatch.sources._cast``.

    ``storage_options`` go to every fsspec filesystem made for a URL (including
    Zarr's store); ``retry`` says how remote reads are retried on transient
    errors (``None``: ``RetryPolicy()``, 5 attempts; see ``streambatch.sources._retry``).
    Each shard keeps its policy as ``shard.retry``.

    ``cache_dir``: keep the remote files that are read in this local directory
    (whole files, checked by size and sha256 -- the manifest's when the dataset
    has one), so that later epochs, loaders and processes of the host read them
    locally; ``cache_limit`` (bytes or a string such as ``"20GiB"``; ``None``: no
    limit) evicts the least recently used beyond it. Local paths are never
    cached. See ``streambatch.sources._cache``.

    >>> ds = open_dataset({"x": "x.npy", "y": "y.npy"})  # doctest: +SKIP
    >>> ds.num_rows, ds.columns["x"]                      # doctest: +SKIP
    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a streambatch.RetryPolicy or None, got {type(retry).__name__}")
    cache = _make_cache(cache_dir, cache_limit)
    if isinstance(source, Dataset):
        if cache is not None:
            raise ValueError("cache_dir applies to paths and URLs, not to an opened Dataset: open the source with it")
        shards: Sequence[Shard] = source.shards
        if retry is not None:  # shards are shared with the given dataset: copy, never mutate them
            shards = [_with_retry(copy.copy(s), retry) for s in shards]
        if columns is None and exclude is None:
            columns = list(source.columns)
        return Dataset(shards, columns, exclude=exclude, fill_nulls=fill_nulls, cast=cast)
    shards = [_with_retry(s, retry) for s in _shards_of(source, storage_options, retry, cache)]
    return Dataset(shards, columns, exclude=exclude, fill_nulls=fill_nulls, cast=cast)


def _make_cache(cache_dir: str | os.PathLike[str] | None, cache_limit: int | str | None) -> FileCache | None:
    if cache_dir is None:
        if cache_limit is not None:
            raise ValueError("cache_limit needs cache_dir (the directory the cache lives in)")
        return None
    from .._units import parse_bytes
    from ._cache import FileCache

    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path, got {type(cache_dir).__name__}")
    limit = None if cache_limit is None else parse_bytes(cache_limit, "cache_limit")
    return FileCache(cache_dir, limit)


def inspect_dataset(
    source: SourceLike, storage_options: dict[str, Any] | None = None, cast: Mapping[str, Any] | None = None
) -> tuple[Dataset, dict[str, str]]:
    """What ``streambatch info`` shows: the dataset of every column that can be
    read (with ``cast`` applied), and every column that cannot (unreadable, with
    nulls its footer counts, or values its cast cannot take) mapped to the
    reason -- listed instead of failing the whole command."""
    shards = list(source.shards) if isinstance(source, Dataset) else _shards_of(source, storage_options)
    if cast is not None:
        checked = _check_cast(shards, cast)
        shards = [s.with_cast(checked) for s in shards]
    problems: dict[str, str] = {}
    for shard in shards:
        for name, reason in shard.unreadable.items():
            problems.setdefault(name, reason)
        for name in shard.columns:
            if name in problems:
                continue
            try:
                shard.check_columns([name])
            except SchemaError as e:
                problems[name] = str(e)
    return Dataset(shards, exclude=list(problems)), problems


def _with_retry(shard: Shard, retry: RetryPolicy | None) -> Shard:
    shard.retry = retry  # type: ignore[attr-defined]  # read by the remote read sites
    return shard


def _shards_of(
    source: Any,
    storage_options: dict[str, Any] | None,
    retry: RetryPolicy | None = None,
    cache: FileCache | None = None,
) -> list[Shard]:
    if isinstance(source, Mapping):
        return [_npy_columns_shard(source, storage_options, retry, cache)]
    if isinstance(source, (str, os.PathLike)):
        return _shards_at(resolve(source, storage_options, retry, cache), top_level=True)
    if isinstance(source, Sequence):
        if not source:
            raise SourceNotFoundError("an empty list of sources was given")
        shards: list[Shard] = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(f"a list of sources must hold paths or URLs, got {type(item).__name__}")
            shards.extend(_shards_at(resolve(item, storage_options, retry, cache), top_level=True))
        return shards
    raise TypeError(
        "source must be a path or URL, a list of them, a dict {column: path_to_npy} "
        f"or a Dataset; got {type(source).__name__}"
    )


def _npy_columns_shard(
    mapping: Mapping[str, Any],
    storage_options: dict[str, Any] | None,
    retry: RetryPolicy | None = None,
    cache: FileCache | None = None,
) -> Shard:
    from ._npy import NpyShard

    if not mapping:
        raise SourceNotFoundError("an empty dict of columns was given")
    files: dict[str, FileSystemPath] = {}
    for name, path in mapping.items():
        location = resolve(path, storage_options, retry, cache)
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
        shards = shards_from_manifest(location)
        if location.cache is not None:
            _expect_manifest_files(location, location.cache)
        return shards
    refuse_incomplete_conversion(location)  # a convert DEST without its manifest is not a dataset
    isdir = location.isdir()
    store = directory_format(location, isdir)
    if store is not None and store.open_store is not None:
        return store.open_store(location)
    if isdir:
        return _shards_in_directory(location)
    return [_file_shard(location)]


def _expect_manifest_files(location: FileSystemPath, cache: FileCache) -> None:
    """Tell the cache each shard file's size and sha256 from the manifest, so that
    entries are checked against them (one more small request at open)."""
    from ._manifest import read_manifest, safe_relative

    manifest = read_manifest(location)
    root = location.path.rstrip("/")
    where = location.url
    for shard in manifest.get("shards", []):
        for entry in shard.get("files", []):
            if isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str):
                target = location.child(f"{root}/{safe_relative(entry['path'], where)}")
                cache.expect(target, int(entry["bytes"]), entry["sha256"])


def _file_shard(location: FileSystemPath) -> Shard:
    fmt = file_format(location)
    if fmt is None or fmt.open_file is None:
        raise SchemaError(
            f"{location.url}: unsupported file type; streambatch reads {known_suffixes()} "
            "(use `streambatch convert` for CSV)"
        )
    return fmt.open_file(location)


def _shards_in_directory(location: FileSystemPath) -> list[Shard]:
    """Data files directly in a directory that a format groups (``.npy``: one shard,
    a column per file) come first; then each other data file, store and
    sub-directory holding data is a shard, in name order. Symbolic links are
    followed; names starting with ``.`` or ``_`` are skipped."""
    visible = [(e, kind) for e, kind in list_directory(location) if not e.name().startswith((".", "_"))]
    grouped: dict[str, list[FileSystemPath]] = {}
    singles: list[tuple[FileSystemPath, str]] = []
    for entry, kind in visible:
        fmt = file_format(entry) if kind == "file" else None
        if fmt is not None and fmt.group is not None:
            grouped.setdefault(fmt.name, []).append(entry)
        else:
            singles.append((entry, kind))
    shards: list[Shard] = []
    for fmt in FORMATS:
        if fmt.name in grouped and fmt.group is not None:
            shards.append(fmt.group(grouped[fmt.name], location))
    for entry, kind in singles:
        if kind == "file" and file_format(entry) is not None:
            shards.append(_file_shard(entry))
        elif kind == "directory":
            try:
                shards.extend(_shards_at(entry, top_level=False))
            except SourceNotFoundError:
                continue  # a sub-directory without data files is not part of the dataset
    if not shards:
        raise SourceNotFoundError(f"directory {location.url} holds no data files ({known_suffixes()})")
    return shards


def _names(parameter: str, names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"{parameter} must be a list of names, got the string {names!r}")
    return tuple(dict.fromkeys(str(n) for n in names))


def _common_columns(
    shards: Sequence[Shard], columns: Sequence[str] | None, exclude: Sequence[str] = ()
) -> dict[str, ColumnSpec]:
    first = shards[0]
    for name in exclude:
        if name not in first.columns and name not in first.unreadable and name not in first.ignored:
            available = ", ".join(repr(c) for c in [*first.columns, *first.unreadable]) or "none"
            raise UnknownColumnError(f"exclude: unknown column {name!r} in {first.path}; columns: {available}")
    if columns is None:
        refused = {n: r for n, r in first.unreadable.items() if n not in exclude}
        if refused:
            raise SchemaError(_refusal(first.path, refused, list(first.columns)))
        names = [n for n in first.columns if n not in exclude]
        if not names:
            raise SchemaError(f"{first.path}: no columns left to read (exclude={list(exclude)})")
    else:
        names = [n for n in _names("columns", columns) if n not in exclude]
        if not names:
            raise SchemaError("columns is empty: select at least one column")
    first.check_columns(names)  # unknown, unreadable or not a column: named, with the reason
    selected = {name: first.columns[name] for name in names}
    for shard in shards[1:]:
        if columns is None:
            refused = {n: r for n, r in shard.unreadable.items() if n not in exclude}
            if refused:
                raise SchemaError(_refusal(shard.path, refused, list(shard.columns)))
        for name, spec in selected.items():
            other = shard.columns.get(name)
            if other is None:
                if name in shard.unreadable or name in shard.ignored:
                    shard.check_columns([name])
                raise SchemaError(f"column {name!r} is in {first.path} but missing from {shard.path}")
            if other != spec:
                raise SchemaError(
                    f"column {name!r} differs between shards: {first.path} has {spec}, "
                    f"{shard.path} has {other} (dtype, row shape)"
                )
    return selected


def _refusal(path: str, refused: Mapping[str, str], readable: list[str]) -> str:
    """The message for columns ``columns=None`` would have to drop silently."""
    lines = [f"{path}: {len(refused)} column(s) cannot be read, and columns=None means every column:"]
    lines += [f"  column {n!r}: {reason}" for n, reason in refused.items()]
    keep = ", ".join(repr(c) for c in readable) or "none"
    drop = ", ".join(repr(n) for n in refused)
    lines.append(
        f"Read the others with columns=[{keep}] or exclude=[{drop}] (--exclude for the CLI), "
        "or read a column with the cast= its reason names."
    )
    return "\n".join(lines)


def _common_metadata(shards: Sequence[Shard], columns: Mapping[str, ColumnSpec]) -> dict[str, dict[str, Any]]:
    """Column metadata (categories) of the selected columns, equal in every shard:
    codes from two shards mean the same value only if their categories are equal."""
    first = shards[0]
    found = {n: dict(first.column_metadata[n]) for n in columns if n in first.column_metadata}
    for shard in shards[1:]:
        for name in columns:
            here = dict(shard.column_metadata.get(name, {}))
            if here != found.get(name, {}):
                raise SchemaError(
                    f"column {name!r}: {shard.path} has metadata {_short(here)} but {first.path} has "
                    f"{_short(found.get(name, {}))}; the codes of a categorical column mean the same "
                    "value only when every file has the same categories (write them with the same categories)"
                )
    return found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "...}"


def _check_cast(shards: Sequence[Shard], cast: Mapping[str, Any]) -> dict[str, np.dtype]:
    """``cast`` validated: dtypes cast= can deliver (``parse_cast``), and names the
    first shard holds as a column, readable or not (else ``UnknownColumnError``)."""
    from ._cast import parse_cast

    checked = parse_cast(cast)
    first = shards[0]
    for name in checked:
        if name in first.columns or name in first.unreadable:
            continue
        if name in first.ignored:
            first.check_columns([name])  # not a column: named, with the reason
        available = ", ".join(repr(c) for c in [*first.columns, *first.unreadable]) or "none"
        raise UnknownColumnError(f"cast: unknown column {name!r} in {first.path}; columns: {available}")
    return checked


def _check_fill_nulls(shards: Sequence[Shard], fill_nulls: Mapping[str, Any]) -> dict[str, Any]:
    """``fill_nulls`` validated against the first shard: known columns, and scalar
    values their dtype holds (any real number for a float column, an exact value
    otherwise)."""
    if not isinstance(fill_nulls, Mapping):
        raise TypeError(f"fill_nulls must be a dict {{column: value}}, got {type(fill_nulls).__name__}")
    first = shards[0]
    checked: dict[str, Any] = {}
    for name, value in fill_nulls.items():
        spec = first.columns.get(name)
        if spec is None:
            first.check_columns([name])  # unknown or unreadable: named
            raise UnknownColumnError(f"fill_nulls: no column {name!r} in {first.path}")
        if spec.kind in ("str", "bytes"):  # a string column fills with a str, a binary one with bytes
            wanted = str if spec.kind == "str" else bytes
            if not isinstance(value, wanted):
                raise SchemaError(f"fill_nulls[{name!r}] = {value!r} is not a {wanted.__name__} (the column's values)")
            checked[name] = value
            continue
        try:
            given = np.asarray(value)
            converted = given.astype(spec.dtype)
            if spec.dtype.kind in "fc":  # any real number, rounded to the column's precision
                same = given.dtype.kind in "biuf" and given.ndim == 0
            else:  # integers, bools, datetimes: exactly representable
                same = given.ndim == 0 and bool(converted == value)
        except (TypeError, ValueError, OverflowError):
            same = False
        if not same:
            raise SchemaError(f"fill_nulls[{name!r}] = {value!r} is not a {spec.dtype} scalar (the column's dtype)")
        checked[name] = converted[()].item()
    return checked
