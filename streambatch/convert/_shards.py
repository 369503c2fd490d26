"""One output shard = one task: read its rows (an input range, or shuffle buckets),
write them under ``DEST/.tmp-<name>``, fsync, checksum, then ``os.replace`` to
the final name. A task is a small picklable object run by :func:`write_shard`
in this process, a worker process, or a Dask worker alike, so the bytes do not
depend on where it runs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StreambatchError
from ..sources import ColumnSpec
from ._inputs import InputReader, Part
from ._values import Value, held_kinds, load_rows, row_limit, take_pieces, take_values

__all__ = ["ConvertWriteError", "ShardTask", "shard_name", "write_shard"]

TMP_PREFIX = ".tmp-"
_HASH_BLOCK = 8 << 20


class ConvertWriteError(StreambatchError, OSError):
    """Writing the output failed (disk full, permission ...); ``errno`` is kept and the path named."""


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to write shard ``index`` of ``dest``.

    ``start``/``stop`` select input rows (unshuffled), or ``buckets`` lists the
    shuffle buckets ``(directory, rows, bucket id)`` whose permuted rows, in order,
    make up the shard (``seed`` decides each permutation). ``chunk_bytes``: Parquet
    row groups are cut at that many bytes (``_planning.Layout``).
    ``memory_limit`` bounds a variable-length row (``_values.row_limit``) and the
    pieces its permutation is taken in (``_values.take_pieces``); 0: no bound."""

    index: int
    dest: str
    shard_format: str
    columns: tuple[tuple[str, ColumnSpec], ...]
    rows: int
    chunk_rows: int
    block_rows: int
    compression: str
    parts: tuple[Part, ...] = ()
    start: int = 0
    stop: int = 0
    buckets: tuple[tuple[str, int, int], ...] = ()
    seed: int = 0
    chunk_bytes: int | None = None
    memory_limit: int = 0

    @property
    def specs(self) -> dict[str, ColumnSpec]:
        return dict(self.columns)


def shard_name(index: int, shard_format: str) -> str:
    return f"part-{index:05d}" + {"parquet": ".parquet", "zarr": ".zarr", "npy": ""}[shard_format]


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry."""
    name = shard_name(task.index, task.shard_format)
    final = os.path.join(task.dest, name)
    tmp = os.path.join(task.dest, TMP_PREFIX + name)
    remove_path(tmp)
    try:
        values_per_row = _write(task, tmp)
        files = _files_of(tmp)
        for path in files:
            _fsync_file(os.path.join(tmp, path) if os.path.isdir(tmp) else tmp)
        entry = _entry(task, name, tmp, files)
        if values_per_row:
            entry["values_per_row"] = values_per_row
        _replace(tmp, final)
        fsync_dir(task.dest)
        return entry
    except OSError as e:
        remove_path(tmp)
        if isinstance(e, ConvertWriteError):
            raise
        code = e.errno or errno.EIO
        where = getattr(e, "filename", None) or tmp
        raise ConvertWriteError(code, f"writing shard {final} failed at {where}: {e.strerror or e}") from e
    except BaseException:
        remove_path(tmp)
        raise


def _write(task: ShardTask, tmp: str) -> dict[str, int]:
    """Write the shard to ``tmp``; returns, per variable-length column, the largest
    per-row mean of values of any row group (the manifest's ``values_per_row``)."""
    from .. import writers

    specs = task.specs
    compression = None if task.compression == "none" else task.compression
    if task.shard_format == "parquet":
        writer: Any = writers.ParquetWriter(
            tmp, specs, task.chunk_rows, compression=compression, row_group_bytes=task.chunk_bytes
        )
    elif task.shard_format == "zarr":
        writer = writers.ZarrWriter(tmp, specs, task.rows, min(task.chunk_rows, task.rows), compression=compression)
    else:
        writer = writers.NpyWriter(tmp, specs, task.rows)
    blocks = _bucket_blocks(task) if task.buckets else _range_blocks(task)
    try:
        for block in blocks:
            writer.write(block)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            writer.close()
        raise
    writer.close()
    written = writer.rows
    if written != task.rows:
        raise RuntimeError(f"shard {task.index}: wrote {written} rows, expected {task.rows}")
    return dict(writer.values_per_row) if isinstance(writer, writers.ParquetWriter) else {}


def _range_blocks(task: ShardTask) -> Iterator[dict[str, Value]]:
    with InputReader(task.parts, task.specs, row_limit(task.memory_limit) if task.memory_limit else 0) as reader:
        for a in range(task.start, task.stop, task.block_rows):
            yield reader.read(a, min(task.stop, a + task.block_rows))


def _bucket_blocks(task: ShardTask) -> Iterator[dict[str, Value]]:
    """Each bucket's rows, permuted through the columns' kinds, in blocks of at most
    ``block_rows`` rows (and of bounded values: ``_values.take_pieces``)."""
    specs = task.specs
    kinds = held_kinds(specs)
    max_values = take_values(task.memory_limit) if task.memory_limit else 1 << 62
    for directory, rows, bucket in task.buckets:
        data = {n: load_rows(directory, n, s, rows) for n, s in specs.items()}
        order = np.random.default_rng(np.random.SeedSequence([task.seed, 2, bucket])).permutation(rows)
        for a in range(0, rows, task.block_rows):
            yield from take_pieces(kinds, data, order[a : a + task.block_rows], max_values)
        del data


def _files_of(path: str) -> list[str]:
    """Files of a shard relative to it (``[""]`` for a single file), sorted."""
    if not os.path.isdir(path):
        return [""]
    found = []
    for root, _, names in os.walk(path):
        for n in names:
            found.append(os.path.relpath(os.path.join(root, n), path).replace(os.sep, "/"))
    return sorted(found)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(task: ShardTask, name: str, tmp: str, files: list[str]) -> dict[str, Any]:
    listed = []
    for rel in files:
        path = os.path.join(tmp, rel) if rel else tmp
        listed.append(
            {"path": f"{name}/{rel}" if rel else name, "bytes": os.path.getsize(path), "sha256": sha256_file(path)}
        )
    combined = hashlib.sha256("".join(f"{f['path']} {f['sha256']}\n" for f in listed).encode()).hexdigest()
    if task.shard_format == "parquet":
        import pyarrow.parquet as pq

        md = pq.ParquetFile(tmp).metadata
        units = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    elif task.shard_format == "zarr":
        units = [min(task.chunk_rows, task.rows - a) for a in range(0, task.rows, task.chunk_rows)]
    else:
        units = [task.rows]
    return {
        "index": task.index,
        "path": name,
        "rows": task.rows,
        "bytes": sum(f["bytes"] for f in listed),
        "sha256": combined,
        "unit_rows": units,
        "files": listed,
    }


def _replace(tmp: str, final: str) -> None:
    """``os.replace`` for files; for a directory, the old one (from ``--overwrite``)
    is moved aside first, since a directory cannot replace a non-empty one."""
    if os.path.isdir(tmp) and os.path.lexists(final):
        aside = os.path.join(os.path.dirname(final), TMP_PREFIX + "old-" + os.path.basename(final))
        remove_path(aside)
        os.replace(final, aside)
        os.replace(tmp, final)
        remove_path(aside)
    else:
        os.replace(tmp, final)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
