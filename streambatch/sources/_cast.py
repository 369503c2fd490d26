"""``cast=``: columns delivered as another dtype than they are stored in, cast by
Arrow on the decoded column (Parquet, Arrow IPC) in the reader thread, before
the copy into the loader's buffer -- so the ring, the budget and every batch see
the delivered dtype only.

What a stored Arrow type can be cast to (``pc.cast(..., safe=True)``, so a value
the dtype cannot hold is an error, never a wrapped or truncated number):

=============================================  =========================================================
stored Arrow type                              ``cast=`` dtypes
=============================================  =========================================================
bool, int8 ... uint64, float16/32/64           any integer or float dtype (a bool column also bool):
                                               integer overflow, a fractional or NaN float cast to an
                                               integer, an integer a float cannot hold exactly
                                               (beyond 2**53 for float64) and a float overflow
                                               (1e300 to float32, which Arrow would make ``inf``) are
                                               errors; float -> narrower float rounds (lossy); an
                                               integer is not cast to float16 (Arrow does not check it)
``decimal128/256(p, s)``                       ``float64`` / ``float32``: the nearest float (lossy;
                                               overflow is an error); an integer dtype: exact, a
                                               fractional part or overflow is an error
``timestamp[unit, tz=...]`` (and without tz),  ``datetime64[s|ms|us|ns]``: the instant in **UTC** (the
``date32`` / ``date64``                        zone is dropped, the value is not shifted); a coarser
                                               unit that would drop a nonzero part, or a finer one out
                                               of range, is an error
``duration[unit]``                             ``timedelta64[s|ms|us|ns]``, checked likewise
``time32/time64[unit]`` (time of day)          ``timedelta64[s|ms|us|ns]`` since midnight, or an integer
                                               dtype: the count of the stored unit since midnight
=============================================  =========================================================

The cast applies to scalar columns and to the values of fixed-size and ragged
lists of numbers (``list<int64>`` token ids to ``int32``); dictionary (categorical)
codes, strings, binary and ``fixed_size_binary`` tensors are not cast. Nulls stay
nulls through the cast (``fill_nulls`` then fills them with a value of the
delivered dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import CastError, SchemaError

__all__ = ["Cast", "cast_column", "cast_hint", "parse_cast", "plan_cast"]

#: The units of Arrow timestamps and durations (NumPy has more: D, h, m, ... are refused).
_UNITS = ("s", "ms", "us", "ns")

#: What one step does to a decoded array: reinterpret its buffers as another type of
#: the same layout ("view"; time of day as its integer count), or ``pc.cast`` it safely.
Step = tuple[str, pa.DataType]


@dataclass(frozen=True)
class Cast:
    """How one decoded column becomes ``dtype``: ``steps`` applied in order to the
    column (its list levels kept), ``leaf_steps`` the same on its scalar values (for
    the footer statistics). ``overflow`` says how a float result is checked for
    values Arrow turned into infinities: ``"any"`` (the source holds no infinity:
    decimals), ``"new"`` (more infinities than the source: floats), ``""`` (none
    can appear: Arrow refuses the cast itself)."""

    source: pa.DataType
    dtype: np.dtype
    steps: tuple[Step, ...]
    leaf_steps: tuple[Step, ...]
    overflow: str = ""

    def apply(self, arr: pa.Array) -> pa.Array:
        """The cast of ``arr``; ``pa.ArrowInvalid`` (or ``_Overflow``) when a value does not fit."""
        out = _run(arr, self.steps)
        if self.overflow:
            _check_overflow(arr, out, self.overflow)
        return out

    def check_bounds(self, low: Any, high: Any) -> str | None:
        """Why the values ``low`` and ``high`` (a column chunk's footer statistics) cannot
        be cast, or ``None`` (also when they cannot be built as the stored type)."""
        leaf = self.leaf_steps
        source = _leaf_type(self.source)
        if pa.types.is_decimal(source) and not (isinstance(low, Decimal) and isinstance(high, Decimal)):
            return None  # an unscaled integer would be read as the value itself
        try:
            bounds = pa.array([low, high], source)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return None
        try:
            out = _run(bounds, leaf)
            if self.overflow:
                _check_overflow(bounds, out, self.overflow)
        except (pa.ArrowInvalid, _Overflow) as e:
            return str(e)
        return None


class _Overflow(ValueError):
    """A finite value became an infinity in a float cast."""


def _run(arr: pa.Array, steps: tuple[Step, ...]) -> pa.Array:
    import pyarrow.compute as pc  # here, not at import: it costs ~0.1 s, paid only by a cast

    for op, t in steps:
        arr = arr.view(t) if op == "view" else pc.cast(arr, t, safe=True)
    return arr


def _check_overflow(source: pa.Array, out: pa.Array, mode: str) -> None:
    found = _count_inf(out)
    if found and (mode == "any" or found > _count_inf(source)):
        raise _Overflow("a value is out of the range of the float dtype (Arrow would make it an infinity)")


def _count_inf(arr: pa.Array) -> int:
    while _is_list(arr.type):
        arr = arr.flatten()
    if not pa.types.is_floating(arr.type):
        return 0
    import pyarrow.compute as pc

    return int(pc.sum(pc.is_inf(arr)).as_py() or 0)


def parse_cast(cast: Mapping[str, Any]) -> dict[str, np.dtype]:
    """``cast`` validated as ``{column: dtype}``: a dict whose keys are column names and
    whose values NumPy reads as a dtype cast= can deliver (bool, integer, float,
    ``datetime64[unit]``, ``timedelta64[unit]`` in native byte order)."""
    if not isinstance(cast, Mapping):
        raise TypeError(f"cast must be a dict {{column: dtype}}, got {type(cast).__name__}")
    parsed: dict[str, np.dtype] = {}
    for name, value in cast.items():
        if not isinstance(name, str):
            raise TypeError(f"cast keys must be column names, got {name!r}")
        try:
            dtype = np.dtype(value)
        except (TypeError, ValueError) as e:
            raise SchemaError(f"cast[{name!r}] = {value!r} is not a NumPy dtype ({e})") from None
        problem = _deliverable(dtype)
        if problem:
            raise SchemaError(f"cast[{name!r}] = {value!r}: {problem}")
        parsed[name] = dtype
    return parsed


def _deliverable(dtype: np.dtype) -> str | None:
    if dtype.kind not in "biufmM" or dtype.fields is not None or dtype.subdtype is not None:
        return (
            f"{dtype} is not a dtype cast= delivers: give a bool, integer or float dtype, "
            "datetime64[unit] or timedelta64[unit]"
        )
    if not dtype.isnative:
        return f"{dtype.str} is not in native byte order; give {dtype.newbyteorder('=')}"
    if dtype.kind in "mM":
        unit, count = np.datetime_data(dtype)
        if unit == "generic" or count != 1:
            name = "datetime64" if dtype.kind == "M" else "timedelta64"
            return f"{dtype} has no unit: give {name}[s], [ms], [us] or [ns]"
    return None


def plan_cast(source: pa.DataType, dtype: np.dtype) -> Cast | str:
    """How a column of Arrow type ``source`` (a scalar, or a list of scalars at any
    depth) is cast to ``dtype``, or why it cannot be."""
    leaf = _leaf_type(source)
    route = _leaf_route(leaf, dtype)
    if isinstance(route, str):
        return route
    steps = tuple((op, _with_leaf(source, t)) for op, t in route)
    overflow = ""
    if dtype.kind == "f":
        overflow = "any" if pa.types.is_decimal(leaf) else "new" if pa.types.is_floating(leaf) else ""
    return Cast(source, dtype, steps, route, overflow)


def _leaf_route(t: pa.DataType, dtype: np.dtype) -> tuple[Step, ...] | str:
    kind = dtype.kind
    if isinstance(t, pa.ExtensionType):
        return f"extension type {t} is not cast; store its storage type {t.storage_type}"
    numeric = pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
    if numeric or pa.types.is_decimal(t):
        if kind == "b" and not pa.types.is_boolean(t):
            return "a number is not cast to bool (nonzero would silently become True); compare it in your code"
        if kind not in "biuf":
            return f"a {'decimal' if pa.types.is_decimal(t) else 'number'} casts to an integer or float dtype"
        if pa.types.is_decimal(t) and dtype == np.float16:
            return "Arrow has no cast from decimals to float16; cast to float32"
        if pa.types.is_integer(t) and dtype == np.float16:
            # Arrow checks int -> float32/64 for exactness, not int -> float16 (2049 becomes 2048, 70000 inf)
            return (
                "Arrow does not check an integer cast to float16 (it rounds beyond 2048, overflows beyond 65504): "
                "cast to float32"
            )
        return (("cast", pa.from_numpy_dtype(dtype)),)
    unit = np.datetime_data(dtype)[0] if kind in "mM" else ""
    if kind in "mM" and unit not in _UNITS:
        return f"Arrow timestamps and durations have units s, ms, us, ns, not {unit!r}"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if kind != "M":
            return "a timestamp or date casts to datetime64[unit] (the instant in UTC)"
        return (("cast", pa.timestamp(unit)),)
    if pa.types.is_duration(t):
        if kind != "m":
            return "a duration casts to timedelta64[unit]"
        return (("cast", pa.duration(unit)),)
    if pa.types.is_time(t):
        # no Arrow cast from time of day to a duration: its buffer is the count of its
        # unit since midnight (int32 for time32, int64 for time64), viewed as such
        count = pa.int32() if pa.types.is_time32(t) else pa.int64()
        if kind in "iu":
            return (("view", count), ("cast", pa.from_numpy_dtype(dtype)))
        if kind == "m":
            widen: tuple[Step, ...] = (("cast", pa.int64()),) if count == pa.int32() else ()
            return (("view", count), *widen, ("view", pa.duration(t.unit)), ("cast", pa.duration(unit)))
        return "a time of day casts to timedelta64[unit] (since midnight) or an integer dtype (a count of its unit)"
    return f"Arrow type {t} has no cast to {dtype}"


def cast_hint(name: str, t: pa.DataType) -> str | None:
    """The cast that reads a column of Arrow type ``t`` that has no NumPy equivalent
    (decimals, tz-aware timestamps, time of day), as advice; ``None`` for others."""
    if pa.types.is_decimal(t):
        dtype, what = "float64", "the nearest float64; an integer dtype is exact or an error"
    elif pa.types.is_timestamp(t) and t.tz is not None:
        dtype, what = f"datetime64[{t.unit}]", "the instant in UTC"
    elif pa.types.is_time(t):
        dtype, what = f"timedelta64[{t.unit}]", "the time since midnight"
    else:
        return None
    return f"read it with cast={{{name!r}: {dtype!r}}} ({what}; --cast {name}={dtype} for the CLI)"


def cast_column(
    column: pa.ChunkedArray | pa.Array,
    cast: Cast,
    name: str,
    first_row: int,
    describe_rows: Callable[[int, int], str],
) -> pa.ChunkedArray | pa.Array:
    """``column`` (whose row 0 is row ``first_row`` of its file) cast, chunk by chunk.
    A value that does not fit is a ``CastError`` naming ``describe_rows(row, row + 1)``
    (file, row group or record batch), the column, the value and Arrow's reason; the
    row is found by bisecting the failed chunk (only on the error path)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    row = first_row
    for chunk in chunks:
        try:
            out.append(cast.apply(chunk))
        except (pa.ArrowInvalid, _Overflow) as e:
            bad = _first_bad_row(chunk, cast)
            value, reason = _value_text(chunk, bad), str(e)
            try:
                cast.apply(chunk.slice(bad, 1))
            except (pa.ArrowInvalid, _Overflow) as one:
                reason = str(one)
            raise CastError(
                f"{describe_rows(row + bad, row + bad + 1)}: column {name!r} value {value} cannot be cast from "
                f"{cast.source} to {cast.dtype} ({reason}): cast to a dtype that holds it, or fix the value"
            ) from e
        row += len(chunk)
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array(out, type=out[0].type if out else _cast_type(cast))
    return out[0]


def _cast_type(cast: Cast) -> pa.DataType:
    return cast.steps[-1][1]


def _first_bad_row(chunk: pa.Array, cast: Cast) -> int:
    """The first row of ``chunk`` whose cast fails: bisection, each step casting the
    front half of what is left (about two casts of the chunk in all)."""
    lo, hi = 0, len(chunk)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            cast.apply(chunk.slice(lo, mid - lo))
        except (pa.ArrowInvalid, _Overflow):
            hi = mid
        else:
            lo = mid
    return lo


def _value_text(chunk: pa.Array, row: int) -> str:
    try:
        text = repr(chunk[row].as_py())
    except (pa.ArrowException, ValueError, OverflowError):
        text = str(chunk.slice(row, 1).to_string())
    return text if len(text) <= 80 else text[:77] + "..."


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _leaf_type(t: pa.DataType) -> pa.DataType:
    while _is_list(t):
        t = t.value_type
    return t


def _with_leaf(t: pa.DataType, leaf: pa.DataType) -> pa.DataType:
    """``t`` with its scalar values' type replaced by ``leaf`` (list levels and their
    value fields kept)."""
    if not _is_list(t):
        return leaf
    inner = pa.field(t.value_field.name, _with_leaf(t.value_type, leaf), t.value_field.nullable)
    if pa.types.is_fixed_size_list(t):
        return pa.list_(inner, t.list_size)
    return pa.large_list(inner) if pa.types.is_large_list(t) else pa.list_(inner)
