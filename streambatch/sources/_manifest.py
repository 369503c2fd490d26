"""The manifest ``streambatch convert`` writes last into its output directory,
and the shards built from it.

``DEST/manifest.json`` lists every shard with its files (relative paths, bytes,
sha256), rows and unit sizes, plus the schema and the convert parameters.
``open_dataset(DEST)`` builds the shards from it instead of scanning footers,
after checking that every listed file exists with the recorded size and that no
path points outside ``DEST``.

The manifest is the commit point of a conversion: a directory that holds
convert's journal (``.convert-journal.jsonl``) or its temporary names
(``.tmp-part-*``, ``.tmp-stage``, ``.tmp-manifest.json``) but no manifest is a
killed, failed or still running conversion, and ``open_dataset`` refuses it
(:func:`refuse_incomplete_conversion`) instead of reading the shards that
happen to be there.
"""

from __future__ import annotations

import functools
import json
import posixpath
from typing import Any

from ..errors import CorruptInputError, IncompleteConversionError, SchemaError, SourceNotFoundError
from ._base import ColumnSpec, Shard
from ._fs import FileSystemPath

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "has_manifest",
    "read_manifest",
    "refuse_incomplete_conversion",
    "shards_from_manifest",
    "verify_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "streambatch"
MANIFEST_VERSION = 1
SHARD_FORMATS = ("parquet", "npy", "zarr")
#: The progress journal ``streambatch convert`` keeps in DEST until the manifest is written.
JOURNAL_NAME = ".convert-journal.jsonl"
#: Names convert gives to what it is still writing in DEST (``convert._shards.TMP_PREFIX`` + ...).
_CONVERT_TEMPORARY = (".tmp-part-", ".tmp-stage", ".tmp-manifest.json", ".tmp-old-part-", JOURNAL_NAME)


def _manifest_location(location: FileSystemPath) -> FileSystemPath:
    return location.child(f"{location.path.rstrip('/')}/{MANIFEST_NAME}")


def has_manifest(location: FileSystemPath) -> bool:
    """Whether ``location`` is a directory holding a streambatch ``manifest.json``."""
    if not location.is_local:  # a listing cached by fsspec may predate the manifest (or its removal)
        location.fs.invalidate_cache(location.path)
    if not location.isdir():
        return False
    manifest = _manifest_location(location)
    if not manifest.exists():
        return False
    try:
        return read_manifest(location).get("format") == MANIFEST_FORMAT
    except CorruptInputError:
        return True  # claims to be ours: let shards_from_manifest report it


def refuse_incomplete_conversion(location: FileSystemPath) -> None:
    """``IncompleteConversionError`` if the directory ``location`` (which has no
    manifest) holds convert's journal or temporary names; a plain directory of
    data files, or a file, passes."""
    if not location.isdir():
        return
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in location.ls()]
    marks = sorted(n for n in names if n.startswith(_CONVERT_TEMPORARY))
    if marks:
        raise IncompleteConversionError(
            f"{location.url} is an incomplete `streambatch convert` output: it holds "
            f"{', '.join(marks[:3])}{' ...' if len(marks) > 3 else ''} but no {MANIFEST_NAME} (the conversion was "
            "killed, failed or is still running); finish it with `streambatch convert SRC ... "
            f"{location.url} --resume` (same inputs and options), or start again with --overwrite",
            location.url,
        )


def read_manifest(location: FileSystemPath) -> dict[str, Any]:
    """The parsed manifest of the directory ``location``; ``CorruptInputError`` if unreadable."""
    manifest = _manifest_location(location)
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise SourceNotFoundError(f"no manifest: {manifest.url}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptInputError(f"{manifest.url}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CorruptInputError(f"{manifest.url}: expected a JSON object, got {type(data).__name__}")
    return data


def manifest_columns(manifest: dict[str, Any], where: str) -> dict[str, ColumnSpec]:
    """The schema's columns; a variable-length column's entry has a ``kind``
    (``convert._manifest.column_entry``), a fixed-size one none."""
    try:
        return {
            str(c["name"]): ColumnSpec(c["dtype"], tuple(c["shape"]), c.get("kind", "fixed"))
            for c in manifest["schema"]["columns"]
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptInputError(f"{where}: malformed schema in the manifest ({e!r})") from e


def safe_relative(path: Any, where: str) -> str:
    """``path`` if it is a relative POSIX path staying inside the dataset directory."""
    if not isinstance(path, str) or not path:
        raise CorruptInputError(f"{where}: a shard path must be a non-empty string, got {path!r}")
    normal = posixpath.normpath(path)
    if path.startswith(("/", "\\")) or "\\" in path or ":" in path or normal == ".." or normal.startswith("../"):
        raise CorruptInputError(f"{where}: shard path {path!r} points outside the dataset directory; refused")
    if any(part == ".." for part in path.split("/")):
        raise CorruptInputError(f"{where}: shard path {path!r} contains '..'; refused")
    return normal


def shards_from_manifest(location: FileSystemPath) -> list[Shard]:
    """The shards listed in ``location/manifest.json``, checked against the files
    on disk (presence and byte size; :func:`verify_manifest` checks the checksums)."""
    manifest = read_manifest(location)
    where = _manifest_location(location).url
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptInputError(f"{where}: not a streambatch manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != MANIFEST_VERSION:
        raise CorruptInputError(
            f"{where}: manifest format_version {version!r} is not supported (expected {MANIFEST_VERSION})"
        )
    shard_format = manifest.get("shard_format")
    if shard_format not in SHARD_FORMATS:
        raise CorruptInputError(f"{where}: unknown shard_format {shard_format!r}; expected one of {SHARD_FORMATS}")
    columns = manifest_columns(manifest, where)
    entries = manifest.get("shards")
    if not isinstance(entries, list) or not entries:
        raise CorruptInputError(f"{where}: the manifest lists no shards")
    root = location.path.rstrip("/")
    shards: list[Shard] = []
    for i, entry in enumerate(entries):
        try:
            shard_path = safe_relative(entry["path"], where)
            files = entry["files"]
            rows = int(entry["rows"])
            units = [int(u) for u in entry["unit_rows"]]
            values_per_row = _values_per_row(entry, columns) if shard_format == "parquet" else {}
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptInputError(f"{where}: shard {i} is malformed ({e!r})") from e
        for f in files:
            _check_file(location, root, f, where)
        shard_location = location.child(f"{root}/{shard_path}")
        shard = _build_shard(shard_format, shard_location, columns, units, values_per_row)
        if shard.num_rows != rows or sum(units) != rows:
            raise CorruptInputError(
                f"{shard_location.url}: the manifest says {rows} rows, the shard holds {shard.num_rows}"
            )
        if dict(shard.columns) != columns:
            raise SchemaError(
                f"{shard_location.url}: columns {dict(shard.columns)} differ from the manifest's {columns}"
            )
        shards.append(shard)
    return shards


def verify_manifest(location: FileSystemPath) -> int:
    """Recompute the sha256 of every file the manifest lists (reads all the data);
    ``CorruptInputError`` naming the first file that differs. Returns the file count."""
    manifest = read_manifest(location)
    where = _manifest_location(location).url
    root = location.path.rstrip("/")
    count = 0
    for shard in manifest.get("shards", []):
        for entry in shard.get("files", []):
            _check_file(location, root, entry, where)
            target = location.child(f"{root}/{safe_relative(entry['path'], where)}")
            if target.call(functools.partial(_sha256, target), "checksum") != entry.get("sha256"):
                raise CorruptInputError(f"shard file {target.url}: sha256 differs from the one recorded in {where}")
            count += 1
    return count


def _sha256(target: FileSystemPath) -> str:
    """The file's sha256, read from the start (a retry starts over)."""
    import hashlib

    digest = hashlib.sha256()
    with target.fs.open(target.path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_file(location: FileSystemPath, root: str, entry: Any, where: str) -> None:
    try:
        rel = safe_relative(entry["path"], where)
        expected = int(entry["bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptInputError(f"{where}: malformed file entry {entry!r} ({e!r})") from e
    target = location.child(f"{root}/{rel}")
    try:
        size = target.size()
    except (FileNotFoundError, OSError) as e:
        if isinstance(e, FileNotFoundError) or not target.exists():
            raise SourceNotFoundError(f"shard file {target.url} listed in {where} is missing") from e
        raise
    if size != expected:
        raise CorruptInputError(
            f"shard file {target.url} is {size} bytes but {where} records {expected} bytes "
            "(truncated, replaced or still being written)"
        )


def _values_per_row(entry: dict[str, Any], columns: dict[str, ColumnSpec]) -> dict[str, int]:
    """A Parquet shard's ``values_per_row``: per variable-length column, the largest
    per-row mean of values (list items, bytes of strings) of any row group, which the
    budget reserves per row; required for every such column (a Zarr shard estimates
    its strings from its chunks, as any Zarr store)."""
    variable = [n for n, s in columns.items() if s.variable]
    if not variable:
        return {}
    recorded = entry["values_per_row"]
    return {name: int(recorded[name]) for name in variable}


def _build_shard(
    shard_format: str,
    location: FileSystemPath,
    columns: dict[str, ColumnSpec],
    units: list[int],
    values_per_row: dict[str, int],
) -> Shard:
    if shard_format == "parquet":
        from ._parquet import ParquetShard

        return ParquetShard.from_manifest(location, columns, units, verify=True, values_per_row=values_per_row)
    if shard_format == "zarr":
        from ._zarr import ZarrShard

        return ZarrShard(location, allow_missing_chunks=False)  # convert writes every chunk
    from ._npy import NpyShard

    root = location.path.rstrip("/")
    files = {name: location.child(f"{root}/{name}.npy") for name in columns}
    return NpyShard(files, location.url)
