"""The conversion driver: claim ``DEST``, stage CSV, shuffle pass 1, run the shard
tasks (here, in processes, or on Dask), journal each one, write the manifest
last, clean up. The options, the DEST policy, the planning and the manifest
live in ``_options``, ``_resume``, ``_planning`` and ``_manifest``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._units import parse_bytes
from ..errors import EmptyDatasetError
from ..sources import ColumnSpec
from ..sources._fs import resolve
from ..writers import refuse_unstorable
from . import _inputs, _planning
from ._dest import open_dest
from ._execute import progress_bar, run_dask, run_processes
from ._inputs import Part
from ._manifest import build_manifest
from ._options import ConvertOptions, ConvertResult
from ._resume import Claim, after_failure, claim_dest
from ._shards import ConvertWriteError, ShardTask, remove_path, write_shard
from ._shuffle import scatter_to_buckets

__all__ = ["convert"]


def convert(
    sources: str | Sequence[str],
    dest: str,
    shard_format: str = "parquet",
    *,
    columns: Sequence[str] | None = None,
    cast: Mapping[str, Any] | None = None,
    shard_size: int | str | None = None,
    rows_per_shard: int | None = None,
    chunk_rows: int | None = None,
    compression: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    memory_limit: int | str = "1GiB",
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ConvertResult:
    """Convert ``sources`` into shards of ``shard_format`` under ``dest``, a local
    directory or an fsspec URL (``s3://bucket/prefix``: see ``convert._dest``).

    Refuses a non-empty ``dest`` (``FileExistsError``) unless ``overwrite`` (only a
    previous convert output is overwritten) or ``resume`` (finish an interrupted
    run with the same inputs and options; a complete one is left as it is).
    ``storage_options`` go to every fsspec filesystem made for a URL, the
    sources' and ``dest``'s alike (``endpoint_url``, ``key``, ``secret`` ...).
    ``progress=None`` shows a bar when stderr is a terminal and tqdm is installed.
    ``compression=None`` is the format's default: ``snappy`` for Parquet, none for
    Zarr and npy (``COMPRESSIONS`` lists what each format accepts).
    ``cast={"price": "float64"}`` reads those columns of Parquet and Arrow inputs as
    that dtype, exactly as ``open_dataset(cast=)`` does (a value it cannot hold is a
    ``CastError``), and writes them so; CSV inputs are not cast.

    A failure leaves ``dest`` as it found it when nothing durable can be kept: a
    first run that fails on bad input (``SchemaError``, ``CorruptInputError``,
    ``SourceNotFoundError``: fixing the input changes it, so there is nothing to
    resume) or before any shard is finished. Otherwise the finished shards and
    the journal stay, and the error carries a note naming ``--resume``.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [os.fspath(sources)]
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise ValueError("sources is empty: give at least one input path")
    options = ConvertOptions(
        shard_format=shard_format,
        columns=tuple(columns) if columns is not None else None,
        cast=_cast_pairs(cast),
        shard_size=parse_bytes(shard_size, "shard_size") if shard_size is not None else None,
        rows_per_shard=rows_per_shard,
        chunk_rows=chunk_rows,
        compression=compression,
        shuffle=bool(shuffle),
        seed=int(seed),
        memory_limit=parse_bytes(memory_limit),
        workers=int(workers),
        scheduler=scheduler,
        overwrite=overwrite,
        resume=resume,
    )
    return _Conversion(sources, dest, options, progress, storage_options or {}).run()


def _cast_pairs(cast: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """``cast`` as the ``(column, dtype name)`` pairs the options record (JSON-safe)."""
    if cast is None:
        return ()
    from ..sources._cast import parse_cast

    return tuple((name, str(dtype)) for name, dtype in parse_cast(cast).items())


class _Conversion:
    def __init__(
        self,
        sources: list[str],
        dest: str,
        options: ConvertOptions,
        progress: bool | None,
        storage_options: dict[str, Any],
    ) -> None:
        location = resolve(dest, storage_options or None)
        if not location.is_local and options.scheduler:
            raise ValueError(
                "scheduler with an object-storage dest is not supported: Dask workers would write "
                "into a work directory on their own hosts; use workers=N instead"
            )
        for source in sources:
            src = resolve(source, storage_options or None)
            same_fs = src.is_local == location.is_local and (src.is_local or src.fs.protocol == location.fs.protocol)
            inside = location.path == src.path or location.path.startswith(src.path.rstrip("/" + os.sep) + "/")
            if same_fs and inside:
                raise ValueError(f"dest {location.url} is inside the source {source}: its shards would become input")
        self.target = open_dest(location)
        self.dest = self.target.url
        self.sources = sources
        self.options = options
        self.progress = progress
        self.storage_options = storage_options
        self.journal = self.target.journal
        self.stage = self.target.stage
        self.claim = Claim()
        self.finished = 0  # shards journaled by this run
        self.written: list[str] = []  # shards this run wrote (removed again if it fails on bad input)

    def run(self) -> ConvertResult:
        started = time.monotonic()
        header = {
            "fingerprint": _inputs.fingerprint_sources(self.sources, self.storage_options),
            "sources": self.sources,
            "params": self.options.output_params(),
        }
        try:
            self.claim = claim_dest(self.target, self.options, header)
            if self.claim.finished is not None:
                return self.claim.finished
            try:
                return self._convert(header, self.claim.done, started)
            except BaseException as e:
                after_failure(self.target, e, self.claim, self.finished, self.written)
                raise
        finally:
            self.target.close()

    def _convert(self, header: dict[str, Any], done: dict[int, dict[str, Any]], started: float) -> ConvertResult:
        staged = bool(done.pop(-1, None))
        parts, columns, column_nbytes = _inputs.open_parts(
            self.sources, self.options.columns, self.stage, staged, self.storage_options, dict(self.options.cast)
        )
        refuse_unstorable(columns, self.options.shard_format)  # e.g. strings into npy: named, with the remedy
        total = sum(p.num_rows for p in parts)
        if total == 0:
            raise EmptyDatasetError(f"the inputs {self.sources} hold zero rows")
        shape = _planning.layout(total, columns, self.options, column_nbytes)
        shard_rows = shape.shard_rows
        bar = progress_bar(self.progress, total, shape.row_nbytes)
        try:
            if self.options.shuffle and not staged:
                self._shuffle_pass_one(parts, columns, shape, bar)
            tasks = _planning.plan_tasks(parts, columns, shape, self.options, self.target.work, self.stage)
            if not staged:
                self.journal.append({"event": "staged"})
            resumed = sum(shard_rows[i] for i in done)
            if bar is not None and resumed:
                bar.update(resumed)
            entries = dict(done)
            pending = [t for t in tasks if t.index not in done]
            for entry in self._execute(pending):
                self.written.append(entry["path"])
                self.target.publish(entry)
                self.journal.append({"event": "shard", "entry": entry})
                self.finished += 1
                entries[entry["index"]] = entry
                if bar is not None:
                    bar.update(entry["rows"])
        finally:
            if bar is not None:
                bar.close()
        manifest = build_manifest(self.options, header, columns, [entries[i] for i in range(len(tasks))], shape)
        self._finish(manifest)
        return ConvertResult(
            self.dest,
            total,
            len(tasks),
            sum(e["bytes"] for e in entries.values()),
            time.monotonic() - started,
            len(done),
            manifest,
        )

    def _shuffle_pass_one(
        self, parts: list[Part], columns: dict[str, ColumnSpec], shape: _planning.Layout, bar: Any
    ) -> None:
        """Scatter every input row into the buckets under the stage directory."""
        o = self.options
        buckets = os.path.join(self.stage, "buckets")
        remove_path(buckets)
        try:
            scatter_to_buckets(
                parts,
                columns,
                [n for sizes in _planning.bucket_capacities(shape, o) for n in sizes],
                buckets,
                o.seed,
                _planning.scatter_block_rows(o, shape.row_nbytes),
                on_rows=(lambda n: None) if bar is None else bar.scatter,
                memory_limit=o.memory_limit,
            )
        except OSError as e:
            if isinstance(e, ConvertWriteError):
                raise
            where = getattr(e, "filename", None) or self.stage
            raise ConvertWriteError(
                e.errno or 5, f"shuffle pass 1 failed writing under {where}: {e.strerror or e}"
            ) from e

    def _execute(self, tasks: list[ShardTask]) -> Iterator[dict[str, Any]]:
        o = self.options
        if not tasks:
            return iter(())
        if o.scheduler:
            return run_dask(o.scheduler, tasks)
        if o.workers > 1:
            return run_processes(o.workers, tasks)
        return map(write_shard, tasks)

    def _finish(self, manifest: dict[str, Any]) -> None:
        self.target.write_manifest(json.dumps(manifest, indent=1, sort_keys=True) + "\n")  # the commit point
        keep = {s["path"] for s in manifest["shards"]}
        for old in self.claim.old_files - keep:  # shards of an overwritten, larger conversion
            self.target.remove(old)
        self.target.remove_temporaries()
        self.journal.remove()
