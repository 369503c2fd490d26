"""A decoded Arrow column into the ring: one copy per chunk from a view of Arrow's
buffers, variable-length columns into their targets, dictionary codes re-coded to
the shard's categories, nulls and list lengths checked, casts applied (Parquet and
Arrow IPC sources alike; read plans from :mod:`._arrow_plans`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptInputError, SchemaError
from ._arrow_plans import _is_binary, _is_list, _Plan
from ._cast import cast_column
from ._fs import FileSystemPath


def _leaf_view(arr: pa.Array, storage: np.dtype, is_bool: bool) -> np.ndarray:
    """The values of a null-free fixed-width array as a 1-D NumPy array; a view of
    Arrow's data buffer except for bit-packed booleans, which must be unpacked."""
    if is_bool:
        return arr.to_numpy(zero_copy_only=False)
    if len(arr) == 0:
        return np.empty(0, dtype=storage)
    buf = arr.buffers()[1]
    return np.frombuffer(buf, dtype=storage, count=arr.offset + len(arr))[arr.offset :]


def _to_numpy(arr: pa.Array, plan: _Plan) -> np.ndarray:
    """A NumPy view (shape ``(len(arr), *plan.spec.shape)``) of a chunk without nulls,
    or whose leaf nulls ``plan.fill`` fills (then a filled copy). A dictionary
    chunk gives its indices, which must already be in the dataset's categories
    (:func:`copy_column` re-codes them)."""
    rows = len(arr)
    shape = (rows, *plan.spec.shape)
    if plan.kind == "dict":
        arr = arr.indices if pa.types.is_dictionary(arr.type) else arr
        return _leaf_view(_filled(arr, plan), plan.storage, False)
    if plan.kind == "fsb":
        width = arr.type.byte_width
        if width == 0:
            return np.empty(shape, dtype=plan.storage)
        raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=(arr.offset + rows) * width)
        return raw[arr.offset * width :].view(plan.storage).reshape(shape)
    if plan.kind == "fsl":
        for _ in range(plan.list_depth):
            arr = arr.flatten()  # honours the slice offset (and list offsets); zero-copy without nulls
        return _leaf_view(_filled(arr, plan), plan.storage, plan.leaf_is_bool).reshape(shape)
    return _leaf_view(_filled(arr, plan), plan.storage, plan.leaf_is_bool)


def _filled(arr: pa.Array, plan: _Plan) -> pa.Array:
    if plan.fill is None or not arr.null_count:
        return arr
    import pyarrow.compute as pc  # here, not at import: it costs ~0.1 s of the first batch

    return pc.fill_null(arr, pa.scalar(plan.fill, arr.type))


def copy_column(
    column: pa.ChunkedArray | pa.Array,
    plan: _Plan,
    target: np.ndarray,
    categories: pa.Array | None = None,
    path: str = "",
    name: str = "",
    first_row: int = 0,
    describe_rows: Callable[[int, int], str] | None = None,
) -> None:
    """Copy a decoded column slice (any ``RecordBatch``/``Table`` column) into
    ``target`` (``len(column)`` rows): one copy per chunk, from a view of Arrow's
    buffers; dictionary chunks are re-coded to ``categories`` first, a cast column
    (``plan.cast``) is cast first. A variable-length column goes to a
    ``VariableTarget`` (offsets and values); ``name`` and ``first_row`` (the file
    row of the slice's first row) name a row too large for the budget or a value
    the cast cannot take, ``describe_rows(start, stop)`` where that row lives
    (default: the file and row)."""
    if plan.cast is not None:
        where = describe_rows or (lambda start, stop: f"{path} row {start}")
        column = cast_column(column, plan.cast, name, first_row, where)
    if plan.kind in ("text", "ragged"):
        _copy_variable(column, plan, target, path, name, first_row)
        return
    if plan.storage != plan.spec.dtype:  # date32: int32 days into datetime64[D]
        target = target.view(np.int64)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    pos = 0
    for chunk in chunks:
        n = len(chunk)
        if n:
            if plan.kind == "dict" and categories is not None:
                chunk = _recode(chunk, categories, path)
            np.copyto(target[pos : pos + n], _to_numpy(chunk, plan), casting="safe")
            pos += n


def _copy_variable(
    column: pa.ChunkedArray | pa.Array,
    plan: _Plan,
    target,
    path: str,
    name: str,
    first_row: int,  # type: ignore[no-untyped-def]
) -> None:
    from ..columns import RowTooLarge
    from ..errors import BudgetError

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    pos = 0
    for chunk in chunks:
        n = len(chunk)
        if not n:
            continue
        offsets, values = _variable_buffers(chunk, plan)
        try:
            target[pos : pos + n].write(offsets, values)
        except RowTooLarge as e:
            raise BudgetError(
                f"{path}: column {name!r} row {first_row + pos + e.row} holds {e.nbytes:,} bytes of values, more "
                f"than the {e.limit:,} bytes its share of memory_limit holds; raise memory_limit or exclude the column"
            ) from None
        pos += n


def _variable_buffers(arr: pa.Array, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, values)`` of a variable-length chunk (``len(arr) + 1`` offsets into
    ``values``, views of Arrow's buffers where possible), nulls filled by ``plan.fill``."""
    if plan.kind == "text":
        if str(arr.type) in ("string_view", "binary_view"):
            arr = arr.cast(pa.large_binary() if _is_binary(arr.type) else pa.large_string())
        arr = _filled(arr, plan)
        wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
        buffers = arr.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32, count=arr.offset + len(arr) + 1)[
            arr.offset :
        ]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
        return offsets, data
    # the offsets buffer itself (``ListArray.offsets.to_numpy()`` costs ~1 ms a call here)
    wide = pa.types.is_large_list(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32, count=arr.offset + len(arr) + 1)[
        arr.offset :
    ]
    lo, hi = int(offsets[0]), int(offsets[-1])
    values = _leaf_view(_filled(arr.values.slice(lo, hi - lo), plan), plan.storage, plan.leaf_is_bool)
    if plan.storage != plan.spec.dtype:  # date32 days: widen to datetime64[D]
        values = values.astype(plan.spec.dtype)
    return offsets - lo, values


def _recode(chunk: pa.DictionaryArray, categories: pa.Array, path: str) -> pa.Array:
    """The indices of ``chunk`` as positions in ``categories`` (the same array when
    the chunk's dictionary is ``categories``, the common case)."""
    dictionary = chunk.dictionary
    if dictionary is categories or dictionary.equals(categories):
        return chunk.indices
    import pyarrow.compute as pc

    mapping = pc.index_in(dictionary, value_set=categories)
    if mapping.null_count:
        extra = [v for v, m in zip(dictionary.to_pylist(), mapping.to_pylist()) if m is None][:5]
        raise SchemaError(
            f"{path}: a dictionary holds values {extra} that are not among the categories read at "
            f"open ({len(categories)} of them); write every file with the same categories"
        )
    codes = mapping.cast(chunk.indices.type).take(chunk.indices)
    return codes


def _count_nulls(column: pa.ChunkedArray, leaves: bool = True) -> int:
    """Nulls at every level of a decoded column: its list slots, and when ``leaves``
    (no fill value) its values too."""
    total = 0
    for chunk in column.chunks:
        arr: pa.Array = chunk
        while _is_list(arr.type):
            total += arr.null_count
            arr = arr.flatten()  # the values of this chunk only (unlike .values)
        if leaves:
            total += arr.null_count
    return total


def _check_list_lengths(column: pa.ChunkedArray, plan: _Plan, error) -> None:  # type: ignore[no-untyped-def]
    """Raise ``error(row, length, expected)`` for the first row of ``column`` whose
    list (at any variable level) has another length than ``plan.checked_lengths``
    says. One vectorised comparison of the offsets per level (they must be evenly
    spaced); reads the offsets buffer only."""
    base = 0
    for chunk in column.chunks:
        arr: pa.Array = chunk
        per_row = 1  # values of this level per top-level row
        for expected in plan.checked_lengths:
            if not len(arr):
                break
            if expected:
                wide = pa.types.is_large_list(arr.type)
                offsets = np.frombuffer(
                    arr.buffers()[1], dtype=np.int64 if wide else np.int32, count=arr.offset + len(arr) + 1
                )[arr.offset :]
                lengths = np.diff(offsets)
                bad = np.flatnonzero(lengths != expected)
                if bad.size:
                    k = int(bad[0])
                    raise error(base + k // per_row, int(lengths[k]), expected)
            per_row *= arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else (expected or 1)
            arr = arr.flatten()
        base += len(chunk)


def _first_row(location: FileSystemPath, verify: bool, metadata: pq.FileMetaData, name: str, group: int) -> pa.Array:
    """Row 0 of row group ``group`` of column ``name``, decoding its first page only
    and reading the column chunk through a 1 MiB buffer (unbuffered, pyarrow would
    read the whole column chunk first)."""
    raw = pa.OSFile(location.path, "r") if location.is_local else location.fs.open(location.path, "rb")
    try:
        pf = pq.ParquetFile(
            raw, metadata=metadata, page_checksum_verification=verify, pre_buffer=False, buffer_size=1 << 20
        )
    except BaseException:
        raw.close()
        raise
    try:
        batch = next(pf.iter_batches(batch_size=1, row_groups=[group], columns=[name], use_threads=False))
        return batch.column(0)
    except (pa.ArrowException, OSError, StopIteration) as e:
        raise CorruptInputError(f"{location.url} row group {group}: cannot read column {name!r} ({e})") from e
    finally:
        pf.close()
        raw.close()


def _null_message(path: str, name: str, group: int, nulls: int, filled: bool = False) -> str:
    if filled:
        return (
            f"{path}: column {name!r} row group {group} has {nulls} null lists; fill_nulls fills values, "
            "but a null list has no length: drop or fill those rows before loading"
        )
    return (
        f"{path}: column {name!r} row group {group} has {nulls} nulls; streambatch needs every "
        f"value present: pass fill_nulls={{{name!r}: value}} to read them as a value, or drop them"
    )
