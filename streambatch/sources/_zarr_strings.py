"""Variable-length string and bytes arrays of a Zarr store, as columns of the
same kinds Parquet's strings and binary are (see :mod:`._parquet`).

Which Zarr data types are variable-length columns:

==========================================================  ==================================
Zarr data type (numpy dtype zarr reads it as)               ``ColumnSpec``
==========================================================  ==================================
``string`` / v2 ``|O`` + ``vlen-utf8`` (``StringDType``)    ``(StringDType, (), kind="str")``
``variable_length_bytes`` / v2 ``|O`` + ``vlen-bytes``      ``(object, (), kind="bytes")``
(``object`` holding ``bytes``)
==========================================================  ==================================

Fixed-width ``U<n>`` (``fixed_length_utf32``) and ``S<n>`` (``null_terminated_bytes``)
arrays stay fixed-width NumPy columns (exact, and as fast as numbers). A
variable-length array of more than one dimension (several strings a row) and any
other object array are refused by name.

A read decodes the rows with zarr into a NumPy array of strings (or ``bytes``),
turns it into an Arrow ``large_string`` (``large_binary``) array and copies it
with Parquet's ``copy_column`` into the ring's variable-length target: one path for
every format's strings. A chunk the store does not hold reads as the array's
``fill_value`` (``""`` unless set), as zarr defines it.

The budget needs the bytes of a row's values before any is read, and Zarr
metadata does not hold them: :func:`sampled_row_nbytes` decodes up to three
chunks along the row axis (the first, a middle and the last) and takes the
largest mean; reads are then admitted by the bytes really held, so longer rows
elsewhere slow the read-ahead rather than grow memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SchemaError

__all__ = ["copy_strings", "sampled_row_nbytes", "string_plan", "string_type"]

#: Chunks along axis 0 decoded to estimate the bytes of a row.
_SAMPLED_CHUNKS = 3


def string_type(array: Any) -> str | None:
    """``"str"`` or ``"bytes"`` for an array of variable-length strings or bytes (by its
    Zarr data type: ``metadata.data_type`` in format 3, ``metadata.dtype`` in 2), else ``None``."""
    zarr_type = getattr(array.metadata, "data_type", None) or getattr(array.metadata, "dtype", None)
    name = type(zarr_type).__name__
    if name == "VariableLengthUTF8":
        return "str"
    if name == "VariableLengthBytes":
        return "bytes"
    return None


def string_plan(name: str, array: Any) -> Any:
    """The read plan of a variable-length string/bytes array (Parquet's ``"text"``
    plan, so the spec is the one Parquet gives), or the reason it cannot be read."""
    import pyarrow as pa

    from ._arrow_plans import _plan_for

    kind = string_type(array)
    if array.ndim != 1:
        return (
            f"an array of {array.ndim} dimensions of variable-length {'strings' if kind == 'str' else 'bytes'}: "
            f"a row would hold {int(np.prod(array.shape[1:]))} of them, and a variable-length column holds one "
            f"value a row; exclude it with exclude=[{name!r}], store one array per position, or fixed-width 'U<n>'"
        )
    return _plan_for(pa.field(name, pa.large_string() if kind == "str" else pa.large_binary()))


def sampled_row_nbytes(array: Any, read: Any) -> int:
    """The largest mean bytes of values per row of up to ``_SAMPLED_CHUNKS`` chunks
    (first, middle, last) along axis 0; ``read(start, stop)`` decodes rows."""
    rows = int(array.shape[0])
    step = int(array.chunks[0])
    chunks = -(-rows // step) if rows else 0
    picks = sorted({0, chunks // 2, chunks - 1}) if chunks else []
    estimate = 0
    for c in picks[:_SAMPLED_CHUNKS]:
        start, stop = c * step, min(rows, (c + 1) * step)
        offsets = _offsets(_arrow(read(start, stop), string_type(array)))
        estimate = max(estimate, -(-int(offsets[-1] - offsets[0]) // max(1, stop - start)))
    return estimate


def copy_strings(values: np.ndarray, plan: Any, target: Any, path: str, name: str, first_row: int) -> None:
    """Decoded strings (or ``bytes``) into a variable-length ``target``, through the
    Arrow copy Parquet's strings take; a ``None`` among them (an object array) is a
    ``SchemaError`` naming the row."""
    from ._arrow_copy import copy_column

    arrow = _arrow(values, plan.spec.kind)
    if arrow.null_count:
        row = first_row + int(np.flatnonzero(~np.asarray(arrow.is_valid()))[0])
        raise SchemaError(
            f"{path}: array {name!r} row {row} holds None, not a {plan.spec.kind}: streambatch needs every value "
            "present; write the missing values as empty strings"
        )
    copy_column(arrow, plan, target, None, path, name, first_row)


def _arrow(values: np.ndarray, kind: str | None) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.large_string() if kind == "str" else pa.large_binary())


def _offsets(arrow: Any) -> np.ndarray:
    n = len(arrow)
    return np.frombuffer(arrow.buffers()[1], np.int64, count=arrow.offset + n + 1)[arrow.offset :]
