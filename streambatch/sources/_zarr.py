"""Zarr stores (format 3 or 2): the metadata of every array is read and checked
at open; rows are read one chunk along axis 0 at a time with zarr's own partial
read, decoding straight into the caller's arrays.

Layout
    A group gives one column per array directly inside it that lies along the
    row axis (sorted by name; sub-groups are skipped); a store holding a single
    array gives one column named after the store (``images.zarr`` -> ``images``).
    The row axis is axis 0. When arrays carry dimension names (zarr 3
    ``dimension_names``, or xarray's ``_ARRAY_DIMENSIONS``), the row dimension is
    the first dimension most arrays share (a tie: the one that starts the array
    of most dimensions, a data variable rather than a coordinate) and arrays along another first
    dimension (an xarray coordinate such as ``feature``) are not columns; without
    names, the row count is the length most arrays share. Arrays that are not
    columns (those, 0-d arrays, arrays of another length) are listed in
    ``shard.ignored`` with the reason and logged; they never block the others, and
    asking for one by name is an error (``RowCountError`` for another length).

Strings
    Variable-length string and bytes arrays are ``str``/``bytes`` columns, read
    as Parquet's are (:mod:`._zarr_strings`); fixed-width ``U``/``S`` arrays are
    fixed-width columns of that dtype.

Read units
    ``unit_bounds`` follows the chunk grid along axis 0; for sharded Zarr 3
    arrays that is the grid of inner chunks (zarr reads one inner chunk of a
    shard with a ranged request, after the shard's index). When
    the arrays of a group have different chunk lengths along axis 0, the largest
    one sets the units: reads of the other arrays then decode every chunk that
    overlaps the unit, which is correct but slower. Aligned chunks (the same
    chunk length along axis 0 for every array) are fastest.

Missing and corrupt chunks
    Zarr defines an absent chunk as ``fill_value``, and by default it does not
    even write chunks that hold only ``fill_value`` (``write_empty_chunks=False``):
    class-0 labels and zero padding are absent from ordinary stores. So by
    default an absent chunk reads as ``fill_value``, as zarr defines it (the first
    one of a store is logged at debug level). A deleted chunk looks the same on disk, so stores
    whose every chunk is known to exist -- those ``streambatch convert`` writes,
    whose manifest lists every chunk -- are opened with
    ``allow_missing_chunks=False``: the store is wrapped so that a chunk key it
    does not hold raises ``CorruptInputError`` naming the key, at no extra I/O
    (the check rides on the read zarr makes anyway). A chunk that does not decode raises
    ``CorruptInputError`` naming the array and chunk key. Zarr itself raises a
    bare ``RuntimeError`` here, so the chunk is found by reading the chunks of
    the failed range one at a time (only on the error path).

Threads (zarr 3.1, measured on 2 cores)
    Every read is a coroutine on zarr's single event-loop thread ``zarr_io``.
    Our threads block in ``zarr.core.sync.sync`` until it finishes. The loop
    hands file reads (``LocalStore``) and decompression (the zstd, gzip and
    blosc codecs, and the numcodecs and v2 wrappers) to its default executor
    via ``asyncio.to_thread``. That executor is asyncio's own
    ``ThreadPoolExecutor`` (threads ``asyncio_0``, ``asyncio_1`` ...,
    ``min(32, cpus + 4)`` of them), or, when the zarr config sets
    ``threading.max_workers``, one named ``zarr_pool_*``. The copy of each
    decoded chunk into ``out`` runs on the loop thread itself. Up to
    ``async.concurrency`` (default 10) chunks of one call are in flight at
    once. One call that covers one chunk therefore decodes on one thread, and
    calls from several of our threads decode in parallel in that executor.
    Measured on a 200 MB zstd float32 array (64 columns, 16384-row chunks,
    whole chunks read, best / median of 5 on a busy 2-core machine): 1 thread
    0.59 / 0.69 s, 2 threads 0.39 / 0.54 s, so about 1.3-1.5x (numcodecs zstd
    alone, without zarr: 0.42 s vs 0.24 s; it releases the GIL). Decoding into
    ``out`` saves one copy over ``np.copyto(out, array[start:stop])`` (0.59 s
    vs 0.62 s). The threads start when the first store is opened and stay
    (all daemons: ``zarr_io`` and the executor threads it starts).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.array import AsyncArray
from zarr.core.buffer import Buffer, BufferPrototype, cpu
from zarr.core.indexing import BasicIndexer
from zarr.core.sync import _get_loop, collect_aiterator, sync
from zarr.errors import NodeNotFoundError
from zarr.storage import FsspecStore, LocalStore, StorePath, WrapperStore

from ..errors import CorruptInputError, RemoteReadError, RowCountError, SchemaError, SourceNotFoundError
from ._base import ColumnSpec, FetchedUnit, NotAColumn, Shard, ShardReader
from ._fs import FileSystemPath
from ._retry import RetryPolicy, acall_with_retry, call_with_retry, check_stopped, is_transient, run_on_loop
from ._zarr_strings import copy_strings, sampled_row_nbytes, string_plan, string_type

__all__ = ["ZarrShard"]

logger = logging.getLogger("streambatch")

#: Keys zarr reads as metadata; any other key it asks for is a chunk (or shard).
_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})

#: The documents that make a prefix a Zarr node, in the order zarr looks for them.
_NODE_DOCUMENTS = ("zarr.json", ".zarray", ".zgroup")

# OSError subclasses that describe the storage, not the bytes: they pass through
# unchanged so that a retry layer above can still recognise them.
_TRANSIENT_OS_ERRORS = (ConnectionError, TimeoutError, FileNotFoundError, PermissionError, InterruptedError)


class _MissingChunkError(CorruptInputError):
    """A chunk key the store does not hold; the reader re-raises it naming the array."""

    def __init__(self, key: str, url: str) -> None:
        super().__init__(f"{url}: chunk {key}: {_MISSING_HINT}")
        self.key = key


_MISSING_HINT = (
    "missing from the store, which was written with every chunk present (write_empty_chunks=True, "
    "as `streambatch convert` writes): the store is damaged; write it again"
)


class _StrictChunkStore(WrapperStore):  # type: ignore[type-arg]
    """Delegates everything to the wrapped store, except that a ``get`` of a chunk
    key that returns nothing (zarr's cue to substitute ``fill_value``) raises
    ``CorruptInputError`` or, when missing chunks are allowed (zarr's own meaning:
    the chunk is ``fill_value``), logs the first such key of the store at debug
    level -- once, not once per key: sparse stores have millions of them.

    ``remote=True``: every metadata request (a metadata document's ``get``,
    ``exists``, ``list_dir``) is sent again on transient errors as ``retry``
    says; chunk reads are retried a level up, by the reader, which names the
    rows and chunks."""

    def __init__(
        self,
        store: Store,
        url: str = "",
        allow_missing: bool = False,
        retry: RetryPolicy | None = None,
        secrets: tuple[str, ...] = (),
        remote: bool = False,
    ) -> None:
        super().__init__(store)
        self._url = url
        self._allow_missing = allow_missing
        self._reported = False
        self._reported_lock = threading.Lock()
        self._retry, self._secrets, self._remote = retry, secrets, remote

    def _with_store(self, store: Store) -> _StrictChunkStore:
        return type(self)(store, self._url, self._allow_missing, self._retry, self._secrets, self._remote)

    def _bounded(self, awaitable: Any) -> Any:
        """``awaitable``, cancelled after ``RetryPolicy.timeout`` on a remote store."""
        timeout = self._retry.timeout if self._retry is not None and self._remote else None
        return awaitable if timeout is None else asyncio.wait_for(awaitable, timeout)

    async def _metadata(self, fn: Any, what: str) -> Any:
        if not self._remote:
            return await fn()
        return await acall_with_retry(
            lambda: self._bounded(fn()), self._retry, f"{self._url} ({what})", secrets=self._secrets
        )

    async def exists(self, key: str) -> bool:
        return bool(await self._metadata(lambda: self._store.exists(key), f"Zarr metadata {key}"))

    async def list_dir(self, prefix: str) -> Any:
        async def listing() -> list[str]:
            return [name async for name in self._store.list_dir(prefix)]

        for name in await self._metadata(listing, f"Zarr listing {prefix or '/'}"):
            yield name

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if key.rsplit("/", 1)[-1] in _METADATA_NAMES:
            return await self._metadata(lambda: self._store.get(key, prototype, byte_range), f"Zarr metadata {key}")
        value = await self._bounded(self._store.get(key, prototype, byte_range))  # retried by the reader
        if value is None and key.rsplit("/", 1)[-1] not in _METADATA_NAMES:
            self._missing(key)
        return value

    def _missing(self, key: str) -> None:
        if not self._allow_missing:
            raise _MissingChunkError(key, self._url)
        with self._reported_lock:
            if self._reported:
                return
            self._reported = True
        logger.debug(
            "%s: chunk %s (and maybe others) is not stored; reading fill_value, as zarr defines it", self._url, key
        )


class ZarrShard(Shard):
    """One Zarr store: a group (a column per array) or a single array (one column).

    Opening reads metadata documents only. An absent chunk reads as the array's
    ``fill_value``, as zarr defines it; ``allow_missing_chunks=False`` (stores
    whose manifest lists every chunk) makes it a ``CorruptInputError`` instead.
    """

    def __init__(self, location: FileSystemPath, allow_missing_chunks: bool = True) -> None:
        self.location = location
        self.path = location.url
        self.allow_missing_chunks = bool(allow_missing_chunks)
        self._store = _open_store(location, self.allow_missing_chunks)
        found = _open_arrays(self._store, location)
        self.num_rows, self.ignored = _row_axis(self.path, found)
        self.unreadable: dict[str, str] = {}
        self._arrays = {}
        self._text: dict[str, Any] = {}  # variable-length string/bytes columns -> their read plan
        for name, array in found.items():
            if name in self.ignored:
                continue
            if string_type(array) is not None:
                plan = string_plan(name, array)
                if isinstance(plan, str):
                    self.unreadable[name] = plan
                else:
                    self._arrays[name], self._text[name] = array, plan
                continue
            reason = _unreadable_reason(name, array)
            if reason is None:
                self._arrays[name] = array
            else:
                self.unreadable[name] = reason
        if self.ignored:
            logger.info(
                "%s: not columns, left out: %s", self.path, "; ".join(f"{n!r}: {r}" for n, r in self.ignored.items())
            )
        self.columns: dict[str, ColumnSpec] = {
            name: self._text[name].spec if name in self._text else ColumnSpec(array.dtype, tuple(array.shape[1:]))
            for name, array in self._arrays.items()
        }
        if not self._arrays:  # nothing to read rows from: units are one row range
            self.chunk_rows: dict[str, int] = {}
            self._bounds = np.array([0, self.num_rows], dtype=np.int64)
            self._bounds.flags.writeable = False
            return

        #: Rows per storage object along axis 0 (the shard length for sharded arrays).
        self.chunk_rows = {name: _rows_per_object(array) for name, array in self._arrays.items()}
        # read units follow the (inner) chunks: zarr reads one inner chunk of a shard with
        # a ranged request, so a sharded array has as many units as a plain one
        step = max(int(array.chunks[0]) for array in self._arrays.values())
        inner = np.arange(step, self.num_rows, step, dtype=np.int64)
        self._bounds = np.concatenate([[0], inner, [self.num_rows]]).astype(np.int64)
        self._bounds.flags.writeable = False  # shared with every caller of unit_bounds

    @property
    def unit_bounds(self) -> np.ndarray:
        """Row offsets of the largest chunk (or shard) grid along axis 0."""
        return self._bounds

    @property
    def fetches_units(self) -> bool:
        """A remote store's chunk objects are fetched, then decoded (sharded arrays
        are read as before: a shard object holds many units)."""
        return not self.location.is_local and any(a.shards is None for a in self._arrays.values())

    def open_reader(self, columns: list[str]) -> ShardReader:
        self.check_columns(columns)
        return _ZarrReader(self, {name: self._arrays[name] for name in columns})

    def variable_row_nbytes(self, name: str) -> int:
        """Bytes of values per row of a variable-length string/bytes array: the largest
        mean of up to three of its chunks along axis 0, decoded here (Zarr metadata
        holds no sizes; see :mod:`._zarr_strings`). Cached."""
        cache = self.__dict__.setdefault("_variable_nbytes", {})
        if name not in cache:
            reader = _ZarrReader(self, {name: self._arrays[name]})
            cache[name] = sampled_row_nbytes(self._arrays[name], lambda a, b: reader.decode(name, a, b))
        return cache[name]

    def describe_rows(self, start: int, stop: int) -> str:
        step = int(self._bounds[1]) if len(self._bounds) > 1 and self._bounds[1] > 0 else 1
        return f"{self.path} rows {start}:{stop} (unit {start // step} along axis 0)"

    def __reduce__(self) -> tuple[Any, ...]:
        # Reopen from the location (metadata only) rather than pickling zarr objects.
        return (type(self), (self.location, self.allow_missing_chunks))


class _ZarrReader(ShardReader):
    """Reads rows of the requested arrays. Zarr arrays are safe to read from several
    threads at once (each call is an independent coroutine on zarr's loop), so the
    reader holds no handles and no per-thread state."""

    def __init__(self, shard: ZarrShard, arrays: dict[str, Any]) -> None:
        self._shard = shard
        self._arrays = arrays
        self._prototype = cpu.buffer_prototype
        self._nd_buffer = cpu.NDBuffer
        self._closed = False
        self._remote = not shard.location.is_local
        self._retry: RetryPolicy | None = getattr(shard, "retry", None)
        self._text = {name: shard._text[name] for name in arrays if name in shard._text}
        # remote arrays whose chunks are fetched ahead of their decodes; a sharded array
        # is not (a shard object holds many units), nor a string array (no fixed chunk
        # size to reserve): they are read as before, in the decode
        self._fetched_arrays = (
            {n: a for n, a in arrays.items() if a.shards is None and n not in self._text} if self._remote else {}
        )

    def read_into(self, start: int, stop: int, out: Mapping[str, Any]) -> None:
        """Rows ``[start, stop)`` into ``out``: a fixed-width array is decoded straight
        into its ``out`` array; a string/bytes array (whose ``out`` is a variable-length
        target) into a NumPy array of strings first, then copied (``copy_strings``)."""
        self._check_out(start, stop, out)
        if stop <= start:
            return
        decoded = self._decoded_targets(start, stop, out)
        if self._remote and len(decoded) > 1:
            self._read_arrays_together(start, stop, decoded)
        else:
            for name, target in decoded.items():
                self._read_array_retried(name, self._arrays[name], start, stop, target)
        self._copy_strings(start, decoded, out)

    def _decoded_targets(self, start: int, stop: int, out: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Where zarr decodes each array to: ``out``'s own array, or for strings a
        NumPy array of them (then copied by :meth:`_copy_strings`)."""
        return {
            name: np.empty(stop - start, self._arrays[name].dtype) if name in self._text else target
            for name, target in out.items()
        }

    def _copy_strings(self, start: int, decoded: Mapping[str, np.ndarray], out: Mapping[str, Any]) -> None:
        for name in self._text.keys() & out.keys():
            copy_strings(decoded[name], self._text[name], out[name], self._shard.path, name, start)

    def decode(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name`` as the NumPy array zarr decodes them to."""
        target = np.empty((stop - start, *self._arrays[name].shape[1:]), self._arrays[name].dtype)
        if stop > start:
            self._read_array_retried(name, self._arrays[name], start, stop, target)
        return target

    # -- fetched ahead (remote stores): chunk objects first, decoded after ----
    def fetch_nbytes(self, starts: list[int], stops: list[int]) -> list[int] | None:
        """Per unit, the decoded size of the chunks :meth:`fetch` gets (their stored
        size is not known before they arrive; compressed, it is usually smaller);
        ``None`` for a local store or when no array is fetched ahead."""
        if not self._fetched_arrays:
            return None
        return [
            sum(len(_chunk_keys(a, start, stop)) * _chunk_nbytes(a) for a in self._fetched_arrays.values())
            for start, stop in zip(starts, stops)
        ]

    def fetch(self, starts: list[int], stops: list[int]) -> list[FetchedUnit]:
        """The chunk objects of every fetched array over each unit's rows, fetched in
        one gather on zarr's event loop through the shard's store (its cache and its
        missing-chunk check included); a request that failed transiently is sent
        again alone. Not decoded."""
        for start, stop in zip(starts, stops):
            if not 0 <= start <= stop <= self._shard.num_rows:
                raise ValueError(f"{self._shard.path}: rows {start}:{stop} are outside 0:{self._shard.num_rows}")
        wanted = {
            key: name
            for start, stop in zip(starts, stops)
            for name, array in self._fetched_arrays.items()
            for key in _chunk_keys(array, start, stop)
        }
        keys = list(wanted)
        store = next(iter(self._fetched_arrays.values())).async_array.store_path.store
        prototype = self._prototype

        async def get_all() -> list[Any]:
            return await asyncio.gather(*(store.get(k, prototype) for k in keys), return_exceptions=True)

        check_stopped()
        results = run_on_loop(get_all(), _get_loop()) if keys else []
        values: dict[str, Buffer | None] = {}
        for key, result in zip(keys, results):
            if isinstance(result, BaseException):
                result = self._get_retried(wanted[key], store, key, result)
            values[key] = result
        del results
        return [_FetchedChunks(self, start, stop, values) for start, stop in zip(starts, stops)]

    def _get_retried(self, name: str, store: Any, key: str, error: BaseException) -> Buffer | None:
        """Chunk ``key`` of array ``name`` after its batched request failed with ``error``
        (attempt 1): sent again alone as the policy says; a chunk missing from a store
        whose chunks all exist is ``CorruptInputError`` naming it."""
        if not isinstance(error, Exception):
            raise error  # CancelledError, KeyboardInterrupt: never retried

        def describe() -> str:
            return f"{self._shard.path} array {name!r} chunk {key}"

        try:
            return call_with_retry(
                lambda: run_on_loop(store.get(key, self._prototype), _get_loop()),
                self._retry,
                describe,
                secrets=self._shard.location.secrets,
                first_error=error,
            )
        except _MissingChunkError as e:
            raise CorruptInputError(f"{self._shard.path} array {name!r} chunk {e.key}: {_MISSING_HINT}") from None

    def _read_fetched(
        self, values: Mapping[str, Buffer | None], start: int, stop: int, out: Mapping[str, np.ndarray]
    ) -> None:
        """Rows ``[start, stop)`` decoded from fetched chunk objects (a chunk not among
        them is read from the store); a chunk that does not decode is read again
        from the store, as a retried read (see ``_read_arrays_together``)."""
        self._check_out(start, stop, out, open_only=False)  # the reader may be closed since the fetch
        if stop <= start:
            return
        store = _FetchedStore(next(iter(self._fetched_arrays.values())).async_array.store_path.store, values)
        sources = {}
        for name in out:
            array = self._arrays[name].async_array
            if name in self._fetched_arrays:
                array = AsyncArray(array.metadata, StorePath(store, array.store_path.path), array.config)
            sources[name] = array
        decoded = self._decoded_targets(start, stop, out)
        self._read_arrays_together(start, stop, decoded, sources)
        self._copy_strings(start, decoded, out)

    def _check_out(self, start: int, stop: int, out: Mapping[str, np.ndarray], open_only: bool = True) -> None:
        if open_only and self._closed:
            raise ValueError(f"reader of {self._shard.path} is closed")
        shard = self._shard
        if not 0 <= start <= stop <= shard.num_rows:
            raise ValueError(f"{shard.path}: rows {start}:{stop} are outside 0:{shard.num_rows}")
        for name, target in out.items():
            array = self._arrays.get(name)
            if array is None:
                raise SchemaError(f"{shard.path}: array {name!r} was not opened by this reader")
            if name in self._text:
                if len(target) != stop - start:
                    raise ValueError(f"{shard.path}: out[{name!r}] has {len(target)} rows, expected {stop - start}")
                continue
            spec = shard.columns[name]
            expected = (stop - start, *spec.shape)
            if target.shape != expected or target.dtype != spec.dtype:
                raise ValueError(
                    f"{shard.path}: out[{name!r}] is {target.dtype}{list(target.shape)}, "
                    f"expected {spec.dtype}{list(expected)}"
                )

    def _read_arrays_together(
        self, start: int, stop: int, out: Mapping[str, np.ndarray], sources: Mapping[str, AsyncArray] | None = None
    ) -> None:
        """Remote stores: every array's rows ``[start, stop)`` in one gather on zarr's
        event loop, so their requests overlap (one latency per unit, not one per
        array); ``sources``: the arrays to read from (over fetched chunks), by name.
        An array whose read fails is read again from the store on its own: a
        transient error counts as its first attempt, anything else goes through
        ``_read_array`` (which names the missing or corrupt chunk)."""
        names = list(out)
        arrays = {n: self._arrays[n].async_array for n in names} if sources is None else sources

        async def read_all() -> list[Any]:
            reads = [
                arrays[n]._get_selection(
                    BasicIndexer(slice(start, stop), arrays[n].shape, arrays[n].metadata.chunk_grid),
                    out=self._nd_buffer.from_numpy_array(out[n]),
                    prototype=self._prototype,
                )
                for n in names
            ]
            return await asyncio.gather(*reads, return_exceptions=True)

        results = sync(read_all())
        for name, result in zip(names, results):
            if not isinstance(result, BaseException):
                continue
            if isinstance(result, Exception) and is_transient(result) and not isinstance(result, CorruptInputError):
                self._read_array_retried(name, self._arrays[name], start, stop, out[name], first_error=result)
            elif isinstance(result, Exception):
                self._read_array_retried(name, self._arrays[name], start, stop, out[name])
            else:
                raise result

    def _read_array_retried(
        self, name: str, array: Any, start: int, stop: int, target: np.ndarray, first_error: Exception | None = None
    ) -> None:
        """``_read_array``, sent again on a remote store when it fails transiently
        (including a chunk that did not decode but decodes on a second read: its
        bytes were cut short in transit). Each attempt rewrites all of ``target``."""
        if not self._remote:
            self._read_array(name, array, start, stop, target)
            return
        rows = _rows_per_object(array)

        def describe() -> str:
            first, last = start // rows, (stop - 1) // rows
            where = f"chunk {first}" if first == last else f"chunks {first}-{last}"
            return f"{self._shard.path} array {name!r} rows {start}:{stop} ({where} along axis 0)"

        call_with_retry(
            lambda: self._read_array(name, array, start, stop, target),
            self._retry,
            describe,
            secrets=self._shard.location.secrets,
            first_error=first_error,
        )

    def _read_array(self, name: str, array: Any, start: int, stop: int, target: np.ndarray) -> None:
        """Decode rows ``[start, stop)`` of one array into ``target``: zarr copies each
        decoded chunk straight into it (no intermediate result array)."""
        try:
            array.get_basic_selection(
                slice(start, stop), out=self._nd_buffer.from_numpy_array(target), prototype=self._prototype
            )
        except _MissingChunkError as e:
            raise CorruptInputError(f"{self._shard.path} array {name!r} chunk {e.key}: {_MISSING_HINT}") from None
        except (MemoryError, *_TRANSIENT_OS_ERRORS):
            raise
        except Exception as e:
            if self._remote and is_transient(e):
                raise  # a connection or HTTP error: the retry layer sends the read again
            located = self._locate_corrupt_chunk(name, array, start, stop, e)
            if self._remote and isinstance(located, CorruptInputError) and not isinstance(located, _MissingChunkError):
                located.transient = True  # type: ignore[attr-defined]  # retried; raised as is if it persists
            raise located from e

    def _locate_corrupt_chunk(self, name: str, array: Any, start: int, stop: int, error: Exception) -> Exception:
        """Zarr's decode errors do not say which chunk failed: read the chunks covering
        rows ``[start, stop)`` one at a time and name the first that fails again."""
        path = self._shard.path
        grid = tuple(array.shards or array.chunks)
        rows = _rows_per_object(array)
        axes = [range(start // rows, (stop - 1) // rows + 1)]
        axes += [range(-(-size // step)) for size, step in zip(array.shape[1:], grid[1:], strict=True)]
        keys = []
        for coords in itertools.product(*axes):
            key = array.metadata.encode_chunk_key(coords)
            keys.append(key)
            region = tuple(slice(c * s, min((c + 1) * s, n)) for c, s, n in zip(coords, grid, array.shape, strict=True))
            try:
                array.get_basic_selection(region, prototype=self._prototype)
            except _MissingChunkError as e:  # deleted since the first read
                return CorruptInputError(f"{path} array {name!r} chunk {e.key}: {_MISSING_HINT}")
            except Exception as e:  # the same failure, now with its chunk known
                if self._remote and is_transient(e):
                    return e  # the storage failed this time: let the retry layer decide
                return CorruptInputError(
                    f"{path} array {name!r} chunk {_full_key(array, key)}: cannot decode ({type(e).__name__}: {e})"
                )
        listing = ", ".join(_full_key(array, k) for k in keys)
        return CorruptInputError(
            f"{path} array {name!r} rows {start}:{stop}: read failed ({type(error).__name__}: {error}), "
            f"but each of its chunks ({listing}) decoded on a second read"
        )

    def close(self) -> None:
        self._closed = True


class _FetchedChunks(FetchedUnit):
    """The fetched chunk objects (``values``: full key -> bytes, ``None`` where the
    store holds none) of rows ``[start, stop)``; ``values`` may be shared with
    the other units of one fetch."""

    def __init__(self, reader: _ZarrReader, start: int, stop: int, values: Mapping[str, Buffer | None]) -> None:
        self._reader = reader
        self._rows = (start, stop)
        keys = {k for a in reader._fetched_arrays.values() for k in _chunk_keys(a, start, stop)}
        self._values = {k: values[k] for k in keys}
        self.nbytes = sum(len(v) for v in self._values.values() if v is not None)

    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        self._reader._read_fetched(self._values, start, stop, out)


class _FetchedStore(WrapperStore):  # type: ignore[type-arg]
    """Serves the ``get`` of fetched keys from memory (a byte range sliced out of
    them), and delegates everything else to the store it wraps."""

    def __init__(self, store: Store, values: Mapping[str, Buffer | None]) -> None:
        super().__init__(store)
        self._values = values

    def _with_store(self, store: Store) -> _FetchedStore:
        return type(self)(store, self._values)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if key not in self._values:
            return await self._store.get(key, prototype, byte_range)
        value = self._values[key]
        if value is None or byte_range is None:
            return value
        size = len(value)
        if isinstance(byte_range, RangeByteRequest):
            lo, hi = byte_range.start, byte_range.end
        elif isinstance(byte_range, OffsetByteRequest):
            lo, hi = byte_range.offset, size
        else:
            lo, hi = max(0, size - byte_range.suffix), size
        return value[lo:hi]


def _chunk_keys(array: Any, start: int, stop: int) -> list[str]:
    """The store keys of every chunk object of ``array`` over rows ``[start, stop)``."""
    if stop <= start:
        return []
    grid = tuple(array.chunks)
    rows = grid[0]
    axes = [range(start // rows, (stop - 1) // rows + 1)]
    axes += [range(-(-size // step)) for size, step in zip(array.shape[1:], grid[1:], strict=True)]
    prefix = array.async_array.store_path.path
    keys = (array.metadata.encode_chunk_key(coords) for coords in itertools.product(*axes))
    return [f"{prefix}/{key}" if prefix else key for key in keys]


def _chunk_nbytes(array: Any) -> int:
    """Bytes of one decoded chunk of ``array``."""
    return int(np.prod(array.chunks, dtype=np.int64)) * np.dtype(array.dtype).itemsize


def _rows_per_object(array: Any) -> int:
    """Rows along axis 0 of one stored object: a shard when the array is sharded."""
    shards = getattr(array, "shards", None)
    return int(shards[0] if shards else array.chunks[0])


def _full_key(array: Any, key: str) -> str:
    """A chunk key relative to the store root (``labels/c/3``), as the store holds it."""
    return f"{array.path}/{key}" if array.path else key


class _CachedChunkStore(WrapperStore):  # type: ignore[type-arg]
    """A remote store whose chunk (and shard) objects are read through the local
    cache of ``location`` (``cache_dir=``; see :mod:`._cache`): the first read of
    an object downloads it whole, in a thread off zarr's event loop; a byte range
    (a sharded array's inner chunk) is then read from the copy. Metadata
    documents, listings and ``exists`` go to the store itself. An object the
    storage does not hold is ``None``, as from the store."""

    def __init__(self, store: Store, location: FileSystemPath) -> None:
        super().__init__(store)
        self._location = location

    def _with_store(self, store: Store) -> _CachedChunkStore:
        return type(self)(store, self._location)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        cache = self._location.cache
        if cache is None or key.rsplit("/", 1)[-1] in _METADATA_NAMES:
            return await self._store.get(key, prototype, byte_range)
        start: int | None = None
        end: int | None = None
        if isinstance(byte_range, RangeByteRequest):
            start, end = byte_range.start, byte_range.end
        elif isinstance(byte_range, OffsetByteRequest):
            start = byte_range.offset
        elif isinstance(byte_range, SuffixByteRequest):
            start = -byte_range.suffix
        target = self._location.child(f"{self._location.path.rstrip('/')}/{key}")
        try:
            data = await asyncio.to_thread(cache.cat, target, start, end)
        except FileNotFoundError:
            return None
        if data is None:  # not cacheable (too large, disk full): the store reads it
            return await self._store.get(key, prototype, byte_range)
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype, key_ranges: Any) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]


def _open_store(location: FileSystemPath, allow_missing: bool) -> Any:
    """A read-only zarr store for ``location``, wrapped by the strict-chunk check."""
    if not location.exists():
        raise SourceNotFoundError(f"no such Zarr store: {location.url}")
    if not location.isdir():
        raise CorruptInputError(
            f"{location.url}: not a Zarr store: it is a file, expected a directory holding "
            "zarr.json (format 3) or .zarray/.zgroup (format 2); zip stores are not supported"
        )
    if location.is_local:
        store: Store = LocalStore(location.path, read_only=True)
    else:
        store = FsspecStore(fs=_async_fs(location.fs), path=location.path.rstrip("/"), read_only=True)
        if location.cache is not None:
            store = _CachedChunkStore(store, location)
    return _StrictChunkStore(
        store, location.url, allow_missing, location.retry, location.secrets, remote=not location.is_local
    )


def _async_fs(fs: Any) -> Any:
    """The asynchronous form of an fsspec filesystem, which ``FsspecStore`` requires:
    async implementations (s3, gcs, http) are re-created with ``asynchronous=True``,
    synchronous ones (memory, sftp ...) are wrapped to run in threads."""
    if fs.async_impl:
        if fs.asynchronous:
            return fs
        import fsspec

        spec = json.loads(fs.to_json())
        spec["asynchronous"] = True
        return fsspec.AbstractFileSystem.from_json(json.dumps(spec))
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    return AsyncFileSystemWrapper(fs, asynchronous=True)


def _open_arrays(store: Any, location: FileSystemPath) -> dict[str, Any]:
    """Name -> ``zarr.Array`` of the store's columns, each validated."""
    url = location.url
    try:
        node = zarr.open(store=store, mode="r")
    except NodeNotFoundError as e:
        raise SourceNotFoundError(
            f"{url}: not a Zarr store: no zarr.json (format 3) or .zarray/.zgroup (format 2) at its root"
        ) from e
    except (*_TRANSIENT_OS_ERRORS, RemoteReadError):
        raise
    except Exception as e:  # JSONDecodeError, KeyError, MetadataValidationError ...
        raise CorruptInputError(f"{_document(store, '', url)}: unreadable Zarr metadata ({_describe(e)})") from e

    if isinstance(node, zarr.Array):
        if node.ndim == 0:
            raise SchemaError(f"{url}: the store is a 0-d array and has no row axis; need at least 1 dimension")
        name = location.name()
        name = name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > len(".zarr") else name
        arrays = {name: node}
    else:
        arrays = {}
        for key in _group_member_names(node):
            try:
                member = node[key]
            except (*_TRANSIENT_OS_ERRORS, RemoteReadError):
                raise
            except KeyError as e:
                if not _has_node_document(store, key):
                    continue  # a stray file or directory, not a Zarr node
                raise CorruptInputError(f"{_document(store, key, url)}: invalid Zarr metadata ({_describe(e)})") from e
            except Exception as e:
                raise CorruptInputError(
                    f"{_document(store, key, url)}: unreadable Zarr metadata ({_describe(e)})"
                ) from e
            if isinstance(member, zarr.Array):
                arrays[key] = member
        if not arrays:
            raise SourceNotFoundError(f"{url}: the Zarr group holds no arrays (sub-groups are not read)")
    return arrays


def _group_member_names(group: Any) -> list[str]:
    """Names directly under a group, sorted: from the store listing when it can list
    (so that a member with broken metadata is reported, not skipped as zarr's own
    ``members()`` does), else from zarr's members (consolidated metadata)."""
    store = group.store
    if not store.supports_listing:
        return sorted(name for name, _ in group.members())
    prefix = group.path
    names = collect_aiterator(store.list_dir(prefix))
    return sorted(n for n in set(names) if n not in _METADATA_NAMES and not n.startswith("."))


def _has_node_document(store: Any, key: str) -> bool:
    return any(sync(store.exists(f"{key}/{doc}")) for doc in _NODE_DOCUMENTS)


def _document(store: Any, key: str, url: str) -> str:
    """The metadata document of node ``key`` (``""`` for the root), for messages."""
    base = url.rstrip("/") + (f"/{key}" if key else "")
    for doc in _NODE_DOCUMENTS:
        try:
            if sync(store.exists(f"{key}/{doc}" if key else doc)):
                return f"{base}/{doc}"
        except Exception:  # only naming the file; the real error follows
            break
    return base


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _dimension_names(array: Any) -> tuple[str | None, ...] | None:
    """Dimension names of an array: zarr 3's ``dimension_names``, else xarray's
    ``_ARRAY_DIMENSIONS`` attribute (zarr 2 stores), else ``None``."""
    names = getattr(array.metadata, "dimension_names", None)
    if names:
        return tuple(names)
    attrs = array.attrs.get("_ARRAY_DIMENSIONS")
    if isinstance(attrs, list) and len(attrs) == array.ndim:
        return tuple(str(n) for n in attrs)
    return None


def _row_axis(url: str, arrays: dict[str, Any]) -> tuple[int, dict[str, NotAColumn]]:
    """``(rows, ignored)``: the row count of the store and the arrays that are not
    columns, each with why (see the module docstring)."""
    ignored: dict[str, NotAColumn] = {}
    candidates: dict[str, Any] = {}
    for name, array in arrays.items():
        if array.ndim == 0:
            ignored[name] = NotAColumn("a 0-d array has no row axis")
        else:
            candidates[name] = array
    if not candidates:
        raise SourceNotFoundError(f"{url}: the Zarr group holds no array with a row axis (all are 0-d)")
    firsts = {n: (_dimension_names(a) or (None,))[0] for n, a in candidates.items()}
    counts = Counter(d for d in firsts.values() if d is not None)
    # the dimension most arrays start with; a tie goes to the one that starts the array of most
    # dimensions (data variables, not 1-d coordinates), then to the longer one
    rank = {
        d: (
            n,
            max(a.ndim for k, a in candidates.items() if firsts[k] == d),
            max(a.shape[0] for k, a in candidates.items() if firsts[k] == d),
        )
        for d, n in counts.items()
    }
    row_dim = max(rank, key=lambda d: rank[d]) if rank else None
    on_dim = {n: a for n, a in candidates.items() if row_dim is not None and firsts[n] == row_dim}
    for name, array in candidates.items():
        if row_dim is not None and firsts[name] not in (row_dim, None):
            ignored[name] = NotAColumn(
                f"along dimension {firsts[name]!r} ({array.shape[0]} long), not the row dimension {row_dim!r}"
            )
    if on_dim:
        lengths = {n: int(a.shape[0]) for n, a in on_dim.items()}
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{n!r} has {r} rows" for n, r in lengths.items())
            raise RowCountError(f"{url}: arrays along the row dimension {row_dim!r} differ in length: {listing}")
        rows = next(iter(lengths.values()))
    else:
        lengths_seen = Counter(int(a.shape[0]) for n, a in candidates.items() if n not in ignored)
        rows = max(lengths_seen, key=lambda r: (lengths_seen[r], r))
    for name, array in candidates.items():
        if name not in ignored and int(array.shape[0]) != rows:
            ignored[name] = NotAColumn(
                f"it has {array.shape[0]} rows along axis 0, the other arrays {rows}", wrong_length=True
            )
    return rows, ignored


def _unreadable_reason(name: str, array: Any) -> str | None:
    """Why an array on the row axis cannot fill a batch, or ``None`` (variable-length
    strings and bytes are read: see :mod:`._zarr_strings`)."""
    dtype = np.dtype(array.dtype)
    if dtype.hasobject or dtype.kind == "T" or dtype.itemsize == 0:
        zarr_type = getattr(array.metadata, "data_type", None) or getattr(array.metadata, "dtype", None)
        return (
            f"dtype {dtype} (Zarr data type {zarr_type}): Python objects other than variable-length strings "
            f"('string', vlen-utf8) or bytes (vlen-bytes) are not read; exclude it with exclude=[{name!r}], "
            "or store strings, fixed-width 'S<n>'/'U<n>' or codes"
        )
    return None
