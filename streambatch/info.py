"""``streambatch info PATH``: what a dataset holds, from metadata only (headers,
footers, Zarr documents, or the convert manifest when there is one)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._units import format_bytes
from .sources._dataset import inspect_dataset
from .sources._fs import resolve
from .sources._manifest import has_manifest, read_manifest, verify_manifest

__all__ = ["describe", "format_info", "verify"]


def describe(
    path: str, storage_options: dict[str, Any] | None = None, cast: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Rows, columns, shards, bytes on storage and read-unit sizes of ``path``, plus
    the manifest's format and convert parameters when ``path`` is a convert output;
    columns as ``cast`` (``open_dataset(cast=)``) delivers them, listed in ``cast``.

    Unlike ``open_dataset``, a column that cannot be read does not fail the
    description: ``unreadable`` lists it with the reason (its type and the cast
    that would read it, the nulls its footer counts, or the value its cast cannot
    take), and ``not_columns`` lists what is not on the row axis."""
    ds, unreadable = inspect_dataset(path, storage_options=storage_options, cast=cast)
    location = resolve(path, storage_options)
    manifest = read_manifest(location) if location.isdir() and has_manifest(location) else None
    shards = []
    for i, shard in enumerate(ds.shards):
        bounds = shard.unit_bounds
        units = np.diff(np.asarray(bounds)) if bounds is not None and len(bounds) > 1 else None
        stored = manifest["shards"][i]["bytes"] if manifest else _stored_bytes(shard)
        shards.append(
            {
                "path": shard.path,
                "rows": int(shard.num_rows),
                "bytes": stored,
                "units": len(units) if units is not None else None,
                "unit_rows": [int(units.min()), int(np.median(units)), int(units.max())]
                if units is not None and len(units)
                else None,
            }
        )
    info: dict[str, Any] = {
        "path": location.url,
        "rows": ds.num_rows,
        "columns": {
            n: {"dtype": str(s.dtype), "shape": list(s.shape), **({"kind": s.kind} if s.variable else {})}
            for n, s in ds.columns.items()
        },
        "unreadable": unreadable,
        "cast": {n: str(d) for n, d in ds.cast.items()},
        "not_columns": dict(ds.ignored),
        "column_metadata": {n: {k: _short(v) for k, v in m.items()} for n, m in ds.column_metadata.items()},
        "row_bytes": ds.row_nbytes,
        "data_bytes": ds.nbytes,
        "stored_bytes": sum(s["bytes"] or 0 for s in shards) if all(s["bytes"] is not None for s in shards) else None,
        "shards": shards,
    }
    if manifest is not None:
        info["manifest"] = {
            k: manifest.get(k) for k in ("format", "format_version", "shard_format", "written_by", "params")
        }
    return info


def _short(value: Any) -> Any:
    """Category lists and the like, cut to 20 entries for display."""
    if isinstance(value, list) and len(value) > 20:
        return [*value[:20], f"... {len(value) - 20} more"]
    return value


def verify(path: str, storage_options: dict[str, Any] | None = None) -> int:
    """Check every shard file of the convert output ``path`` against its recorded
    sha256; returns the number of files checked."""
    location = resolve(path, storage_options)
    if not (location.isdir() and has_manifest(location)):
        raise ValueError(f"{location.url} has no streambatch manifest: nothing to verify against")
    return verify_manifest(location)


def _stored_bytes(shard: Any) -> int | None:
    location = getattr(shard, "location", None)
    try:
        if location is not None:
            if location.isdir():
                sizes = location.call(lambda: location.fs.du(location.path, total=False), "listing")
                return int(sum(sizes.values()))
            return int(location.size())
        files = getattr(shard, "_files", None)
        if files:
            return int(sum(f.size() for f in files.values()))
    except OSError:
        return None
    return None


def format_info(info: dict[str, Any]) -> str:
    """The human-readable text ``streambatch info`` prints."""
    lines = [f"{info['path']}", f"  rows     {info['rows']:,}"]
    stored = f", {format_bytes(info['stored_bytes'])} stored" if info["stored_bytes"] is not None else ""
    lines.append(f"  bytes    {format_bytes(info['data_bytes'])} in memory ({info['row_bytes']} per row){stored}")
    lines.append(f"  columns  {len(info['columns'])}")
    for name, spec in info["columns"].items():
        shape = "x".join(map(str, spec["shape"])) if spec["shape"] else "scalar"
        if "kind" in spec:  # variable-length: str, bytes, or a list of dtype values per row
            shape = {"str": "str per row", "bytes": "bytes per row", "list": "list per row (Ragged)"}[spec["kind"]]
        meta = info.get("column_metadata", {}).get(name)
        extra = f"  categories {meta['categories']}" if meta and "categories" in meta else ""
        if name in info.get("cast", {}):
            extra += "  (cast)"
        lines.append(f"    {name:<16} {spec['dtype']:<10} {shape}{extra}")
    unreadable = info.get("unreadable") or {}
    if unreadable:
        lines.append(f"  cannot be read ({len(unreadable)}; open_dataset refuses them unless excluded or cast)")
        for name, reason in unreadable.items():
            lines.append(f"    {name:<16} {reason}")
    ignored = info.get("not_columns") or {}
    if ignored:
        lines.append(f"  not columns ({len(ignored)}; not along the row axis)")
        for name, reason in ignored.items():
            lines.append(f"    {name:<16} {reason}")
    shards = info["shards"]
    lines.append(f"  shards   {len(shards)}")
    for s in shards[:20]:
        units = (
            f", {s['units']} units of {s['unit_rows'][0]}/{s['unit_rows'][1]}/{s['unit_rows'][2]} rows (min/median/max)"
            if s["unit_rows"]
            else ", random access (no read units)"
        )
        size = format_bytes(s["bytes"]) if s["bytes"] is not None else "? bytes"
        lines.append(f"    {s['path']}: {s['rows']:,} rows, {size}{units}")
    if len(shards) > 20:
        lines.append(f"    ... {len(shards) - 20} more")
    manifest = info.get("manifest")
    if manifest:
        lines.append(
            f"  manifest {manifest['format']} v{manifest['format_version']}, {manifest['shard_format']} shards, "
            f"{manifest['written_by']}"
        )
        params = manifest.get("params") or {}
        lines.append("    " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None))
    return "\n".join(lines)
