"""How a column of an Arrow type is read: its read plan (``_Plan``) and the mapping
from Arrow types to a ``ColumnSpec`` (the table is in :mod:`._parquet`'s docstring and
docs/formats.md), with ``fill_nulls`` and ``cast=`` applied. Shared by the Parquet
and Arrow IPC sources, and by the Zarr source for its strings."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import SchemaError
from ._base import ColumnSpec
from ._cast import Cast, cast_hint, plan_cast
from ._tensor import DTYPE_KEY, SHAPE_KEY


@dataclass(frozen=True)
class _Plan:
    """How to turn one decoded Arrow column into a NumPy view of shape ``(rows, *shape)``.

    ``storage`` is the dtype of the values as they sit in Arrow's data buffer; it
    differs from ``spec.dtype`` only for ``date32`` (int32 days widened to
    ``datetime64[D]`` by the final copy).
    """

    #: "primitive", "bool", "fsb", "fsl" (any nesting of lists), "dict" (the codes), or the
    #: variable-length "text" (strings, binary) and "ragged" (a list<T> of varying length)
    kind: str
    spec: ColumnSpec
    storage: np.dtype
    list_depth: int = 0  # list levels above the leaf values
    leaf_is_bool: bool = False
    #: Per list level, the length every row must have where the type does not fix it
    #: (``list``/``large_list``), 0 where it does (``fixed_size_list``).
    checked_lengths: tuple[int, ...] = ()
    #: The value nulls (of the leaf values) are read as; ``None``: nulls are an error.
    fill: object = None
    #: ``cast=``: how the decoded column is cast before the copy; ``spec``, ``storage``
    #: and ``leaf_is_bool`` then describe the cast values (see :mod:`._cast`).
    cast: Cast | None = None


def _scalar_dtype(t: pa.DataType) -> tuple[np.dtype, np.dtype] | str:
    """``(numpy dtype, storage dtype)`` of a fixed-width scalar Arrow type, or why not."""
    if pa.types.is_boolean(t):
        return np.dtype(np.bool_), np.dtype(np.bool_)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        dtype = np.dtype(t.to_pandas_dtype())
        return dtype, dtype
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            return f"time-zone-aware timestamps (tz={t.tz!r}) have no numpy equivalent"
        dtype = np.dtype(f"datetime64[{t.unit}]")
        return dtype, dtype
    if pa.types.is_duration(t):
        dtype = np.dtype(f"timedelta64[{t.unit}]")
        return dtype, dtype
    if pa.types.is_date32(t):
        return np.dtype("datetime64[D]"), np.dtype(np.int32)
    if pa.types.is_date64(t):
        dtype = np.dtype("datetime64[ms]")
        return dtype, dtype
    if _is_text(t):
        return (
            "variable-length strings/binary are not delivered yet (a later version reads them); "
            "exclude the column, or store fixed-size values (fixed_size_binary, or integer codes)"
        )
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "variable-length lists cannot form fixed-size rows; write a fixed_size_list or fixed_size_binary"
    if pa.types.is_dictionary(t):
        return "dictionary values inside a list or another type; store the integer codes"
    if pa.types.is_struct(t):
        return "structs are not supported; store each field as its own column"
    if pa.types.is_decimal(t):
        return "decimals have no numpy equivalent"
    if pa.types.is_time(t):
        return "time of day has no numpy equivalent"
    if pa.types.is_null(t):
        return "a column of nulls holds no values"
    return "not a fixed-width numeric, boolean or temporal type"


def _is_text(t: pa.DataType) -> bool:
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    return any(k(t) for k in kinds) or str(t) in ("string_view", "binary_view")  # views: pyarrow >= 16


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or str(t) == "binary_view"


def _ragged_plan(t: pa.DataType) -> _Plan | None:
    """The plan of a ``list<T>``/``large_list<T>`` of a fixed-width scalar ``T`` whose
    rows vary in length (delivered as ``Ragged``); ``None`` for other types (nested
    variable lists, lists of strings), which stay refused."""
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return None
    scalar = _scalar_dtype(t.value_type)
    if isinstance(scalar, str):
        return None
    dtype, storage = scalar
    return _Plan("ragged", ColumnSpec(dtype, (), "list"), storage, list_depth=1, leaf_is_bool=dtype == np.bool_)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _list_levels(t: pa.DataType) -> tuple[list[int | None], pa.DataType]:
    """Per list level, its fixed size (``None`` for ``list``/``large_list``), and the leaf type."""
    sizes: list[int | None] = []
    while _is_list(t):
        sizes.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = t.value_type
    return sizes, t


def _has_variable_list(t: pa.DataType) -> bool:
    sizes, leaf = _list_levels(t)
    return any(s is None for s in sizes) and not _is_list(leaf)


def _variable_reason(name: str, evidence: str) -> str:
    return (
        f"variable-length lists ({evidence}); only lists whose rows all hold the same number of "
        f"values, or a single-level list of numbers (list<T>, delivered as Ragged), are delivered: "
        f"exclude it with exclude=[{name!r}]"
    )


def _plan_for(field: pa.Field, list_lengths: list[int] | None = None) -> _Plan | str:
    """The read plan of one top-level field, or the reason it cannot be read.
    ``list_lengths`` gives the length of every list level (found from a footer)
    for ``list``/``large_list`` levels, whose type does not fix it."""
    t = field.type
    meta = field.metadata or {}
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if pa.types.is_fixed_size_binary(t) and not pa.types.is_decimal(t):
        return _fsb_plan(t.byte_width, meta)
    if _is_list(t):
        return _fsl_plan(t, meta, list_lengths)
    if _is_text(t):
        text_kind = "bytes" if _is_binary(t) else "str"
        dtype = np.dtype(object) if text_kind == "bytes" else np.dtypes.StringDType()
        return _Plan("text", ColumnSpec(dtype, (), text_kind), np.dtype(np.uint8))
    if pa.types.is_dictionary(t):
        if not pa.types.is_integer(t.index_type):
            return f"dictionary indices of type {t.index_type}"
        dtype = np.dtype(t.index_type.to_pandas_dtype())
        return _Plan("dict", ColumnSpec(dtype, ()), dtype)
    scalar = _scalar_dtype(t)
    if isinstance(scalar, str):
        return scalar
    dtype, storage = scalar
    return _Plan(
        "bool" if dtype == np.bool_ else "primitive", ColumnSpec(dtype, ()), storage, leaf_is_bool=dtype == np.bool_
    )


def _fsb_plan(width: int, meta: Mapping[bytes, bytes]) -> _Plan | str:
    has_dtype, has_shape = DTYPE_KEY in meta, SHAPE_KEY in meta
    if not has_dtype and not has_shape:
        return _Plan("fsb", ColumnSpec(np.dtype(np.uint8), (width,)), np.dtype(np.uint8))
    if not (has_dtype and has_shape):
        return "fixed_size_binary field metadata needs both 'dtype' and 'shape' keys, or neither"
    try:
        dtype = np.dtype(meta[DTYPE_KEY].decode())
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        return f"field metadata dtype={meta[DTYPE_KEY]!r} is not a numpy dtype ({e})"
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        return f"field metadata dtype {dtype} must be a plain fixed-size numpy dtype"
    shape = _parse_shape(meta[SHAPE_KEY])
    if isinstance(shape, str):
        return shape
    expected = dtype.itemsize * math.prod(shape)
    if expected != width:
        return (
            f"field metadata says dtype {dtype.str} and shape {list(shape)}, i.e. {expected} bytes "
            f"per row, but each value holds {width} bytes"
        )
    return _Plan("fsb", ColumnSpec(dtype, shape), dtype)


def _fsl_plan(t: pa.DataType, meta: Mapping[bytes, bytes], list_lengths: list[int] | None = None) -> _Plan | str:
    sizes, inner = _list_levels(t)
    depth = len(sizes)
    scalar = _scalar_dtype(inner)
    if isinstance(scalar, str):
        return f"list values of type {inner}: {scalar}"
    if any(s is None for s in sizes) and list_lengths is None:
        return _variable_reason("the column", "the length of a list<T> is not part of its type")
    lengths = list_lengths if list_lengths is not None else [int(s) for s in sizes if s is not None]
    if len(lengths) != depth or any(s is not None and s != n for s, n in zip(sizes, lengths)):
        return f"list lengths {lengths} do not fit the type {t}"
    shape = list(lengths)
    checked = tuple(n if s is None else 0 for s, n in zip(sizes, lengths))
    dtype, storage = scalar
    final: tuple[int, ...] = tuple(shape)
    if SHAPE_KEY in meta:
        parsed = _parse_shape(meta[SHAPE_KEY])
        if isinstance(parsed, str):
            return parsed
        if math.prod(parsed) != math.prod(shape):
            return (
                f"field metadata shape {list(parsed)} holds {math.prod(parsed)} values per row "
                f"but the list holds {math.prod(shape)}"
            )
        final = parsed
    return _Plan(
        "fsl",
        ColumnSpec(dtype, final),
        storage,
        list_depth=depth,
        leaf_is_bool=dtype == np.bool_,
        checked_lengths=checked,
    )


def _parse_shape(raw: bytes) -> tuple[int, ...] | str:
    try:
        shape = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        shape = None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"field metadata shape={raw!r} is not a JSON list of non-negative integers such as [32, 32, 3]"
    return tuple(shape)


def cast_plans(
    path: str,
    fields: Mapping[str, pa.Field],
    plans: Mapping[str, _Plan],
    columns: Mapping[str, ColumnSpec],
    unreadable: Mapping[str, str],
    cast: Mapping[str, np.dtype],
) -> tuple[dict[str, _Plan], dict[str, ColumnSpec], dict[str, str]]:
    """The plans, column specs and unreadable columns of a file (Parquet or Arrow)
    with ``cast`` applied to them as stored: each cast column gets a plan that casts
    the decoded column, a column unreadable as stored (a decimal, a tz-aware
    timestamp, a time of day) becomes readable. A cast to the dtype a column has
    already changes nothing; a cast the column cannot reach is a ``SchemaError``
    naming the file, the column, its Arrow type and the dtype."""
    plans, columns, unreadable = dict(plans), dict(columns), dict(unreadable)
    for name, dtype in cast.items():
        field = fields.get(name)
        if field is None:
            continue  # not in this file, or named twice in its schema: the dataset's checks name it
        stored = plans.get(name)
        if stored is not None and stored.spec.dtype == dtype:
            continue
        plan = _cast_plan(field, stored, dtype)
        if isinstance(plan, str):
            raise SchemaError(f"{path}: column {name!r} (Arrow type {field.type}) cannot be cast to {dtype}: {plan}")
        plans[name] = plan
        columns[name] = plan.spec
        unreadable.pop(name, None)
    in_schema_order = {n: columns[n] for n in fields if n in columns}
    return plans, in_schema_order, unreadable


def _cast_plan(field: pa.Field, stored: _Plan | None, dtype: np.dtype) -> _Plan | str:
    """The plan that reads ``field`` (read as ``stored``, or unreadable: ``None``) cast
    to ``dtype``, or why it cannot be cast."""
    refused = {
        "dict": "the codes of a dictionary (categorical) column are not cast; its categories are in column_metadata",
        "text": "strings and binary are not cast (parse them in your own code)",
        "fsb": "fixed_size_binary values are raw bytes to Arrow (a tensor's dtype is in the field metadata), not cast",
    }
    if stored is not None and stored.kind in refused:
        return refused[stored.kind]
    if stored is None and _is_list(field.type):
        return "a list column that cannot be read as stored is not cast: exclude it"
    cast = plan_cast(field.type, dtype)
    if isinstance(cast, str):
        return cast
    is_bool = dtype == np.bool_
    if stored is None:  # a scalar with no NumPy equivalent: the cast makes it one
        return _Plan("bool" if is_bool else "primitive", ColumnSpec(dtype, ()), dtype, leaf_is_bool=is_bool, cast=cast)
    kind = ("bool" if is_bool else "primitive") if stored.kind in ("bool", "primitive") else stored.kind
    spec = ColumnSpec(dtype, stored.spec.shape, stored.spec.kind)
    return dataclasses.replace(stored, kind=kind, spec=spec, storage=dtype, leaf_is_bool=is_bool, cast=cast)


def unreadable_reason(field: pa.Field, reason: str) -> str:
    """Why a column is refused, naming its Arrow type, and the cast that reads it
    when there is one (decimals, tz-aware timestamps, time of day)."""
    hint = cast_hint(field.name, field.type)
    return f"Arrow type {field.type}: {reason}" + (f"; {hint}" if hint else "")


def plans_to_read(plans: Mapping[str, _Plan], columns: list[str], fill_nulls: Mapping[str, Any]) -> dict[str, _Plan]:
    """The read plans of ``columns``, each carrying its ``fill_nulls`` value (Parquet
    and Arrow readers alike)."""
    chosen = {c: plans[c] for c in columns}
    for c, value in fill_nulls.items():
        if c in chosen:
            chosen[c] = dataclasses.replace(chosen[c], fill=value)
    return chosen
