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
        "schema": {"columns": [{"name": n, "dtype": s.dtype.str, "shape": list(s.shape)} for n, s in columns.items()]},
        "params": {**options.output_params(), "chunk_rows": shape.chunk_rows, "rows_per_shard": shape.per_shard},
        "input": header,
        "shards": [{k: e[k] for k in ("path", "rows", "bytes", "sha256", "unit_rows", "files")} for e in entries],
    }
