"""The ``manifest.json`` a conversion writes last: schema, parameters, inputs and
every shard's files and checksums (read back by ``sources._manifest``)."""

from __future__ import annotations

from typing import Any

from ..sources import ColumnSpec
from ..sources._manifest import MANIFEST_FORMAT, MANIFEST_VERSION
from ._options import ConvertOptions
from ._planning import Layout

__all__ = ["build_manifest"]


def build_manifest(
    options: ConvertOptions,
    header: dict[str, Any],
    columns: dict[str, ColumnSpec],
    entries: list[dict[str, Any]],
    shape: Layout,
) -> dict[str, Any]:
    from .. import __version__

    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "shard_format": options.shard_format,
        "written_by": f"streambatch {__version__}",
        "rows": shape.total,
        "schema": {"columns": [column_entry(n, s) for n, s in columns.items()]},
        "params": {
            **options.output_params(),
            "chunk_rows": shape.chunk_rows,
            "rows_per_shard": shape.per_shard,
            **({"chunk_bytes": shape.chunk_bytes} if shape.chunk_bytes is not None else {}),
        },
        "input": header,
        "shards": [{k: e[k] for k in _SHARD_KEYS if k in e} for e in entries],
    }


#: What a shard's manifest entry holds; ``values_per_row`` only with variable-length columns.
_SHARD_KEYS = ("path", "rows", "bytes", "sha256", "unit_rows", "files", "values_per_row")


def column_entry(name: str, spec: ColumnSpec) -> dict[str, Any]:
    """A column of the manifest's schema. A variable-length column adds its ``kind``
    (``"str"``, ``"bytes"``, ``"list"``); its ``dtype`` is ``"T"`` (NumPy's
    ``StringDType``) for strings, ``"|O"`` for binary, the values' dtype for lists."""
    if not spec.variable:
        return {"name": name, "dtype": spec.dtype.str, "shape": list(spec.shape)}
    dtype = "T" if spec.kind == "str" else spec.dtype.str
    return {"name": name, "dtype": dtype, "shape": [], "kind": spec.kind}
