"""The conversion driver: validate options, claim ``DEST``, stage CSV, shuffle
pass 1, run the shard tasks (here, in processes, or on Dask), journal each one,
write the manifest last, clean up."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._units import format_bytes, parse_bytes
from ..errors import CorruptInputError, EmptyDatasetError, SchemaError, SourceNotFoundError, StreambatchError
from ..sources import ColumnSpec
from ..sources._fs import resolve
from ..sources._manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION
from ..sources._retry import redact
from ..writers import refuse_variable
from . import _inputs
from ._dest import open_dest
from ._execute import progress_bar, run_dask, run_processes
from ._inputs import DatasetPart, Part, RawPart
from ._journal import JOURNAL_NAME
from ._shards import ConvertWriteError, ShardTask, remove_path, write_shard
from ._shuffle import bucket_dir, plan_buckets, scatter_to_buckets

__all__ = ["ConvertError", "ConvertOptions", "ConvertResult", "convert", "default_chunk_rows"]

FORMATS = ("parquet", "npy", "zarr")
#: what each output format's writer accepts (Parquet: pyarrow's codecs; Zarr: the zstd
#: codec or Blosc-lz4; npy: raw files)
COMPRESSIONS = {
    "parquet": ("none", "snappy", "gzip", "brotli", "lz4", "zstd"),
    "zarr": ("none", "zstd", "lz4"),
    "npy": ("none",),
}
#: ``compression=None``: Parquet snappy (near-free to read back: measured as fast as
#: uncompressed on float data, where zstd read half as fast; smaller on compressible data);
#: Zarr uncompressed, as before
DEFAULT_COMPRESSION = {"parquet": "snappy", "zarr": "none", "npy": "none"}
#: Errors that say the input is bad: fixing it changes the input fingerprint, so a
#: first run that fails with one leaves DEST as it found it (nothing to resume).
_INPUT_ERRORS = (SchemaError, CorruptInputError, SourceNotFoundError)
_DEFAULT_SHARD_SIZE = "256MiB"
#: Target bytes of one Parquet row group / Zarr chunk (see default_chunk_rows).
_CHUNK_TARGET_BYTES = 128 << 10
_SHUFFLED_CHUNK_TARGET_BYTES = 1 << 20


class ConvertError(StreambatchError, ValueError):
    """The conversion cannot start or resume as asked (e.g. inputs changed since the journal)."""


def default_chunk_rows(row_nbytes: int, shuffled: bool = False) -> int:
    """Rows per Parquet row group / Zarr chunk: ~128 KiB (~1 MiB with ``--shuffle``),
    within [64, 65536] rows.

    The loader shuffles by holding many read units in a window, and a unit is a
    whole row group: smaller groups mean more distinct units in the same memory,
    so a better shuffle (1.35 at 128 KiB vs 3.0 at 1 MiB, loader at ~6 % of the
    data), at a cost in loader rows/s (0.41 M vs 1.07 M) -- docs/convert.md.
    ``--shuffle`` output is already a full permutation, so the loader can read it
    in order (score 1.0 at any chunk size) and larger chunks only add speed."""
    target = _SHUFFLED_CHUNK_TARGET_BYTES if shuffled else _CHUNK_TARGET_BYTES
    return int(min(65536, max(64, target // max(1, row_nbytes))))


@dataclass(frozen=True)
class ConvertOptions:
    """Validated options of :func:`convert`; messages name the option and the value."""

    shard_format: str
    columns: tuple[str, ...] | None = None
    shard_size: int | None = None
    rows_per_shard: int | None = None
    chunk_rows: int | None = None
    #: None: the format's default (DEFAULT_COMPRESSION)
    compression: str | None = None
    shuffle: bool = False
    seed: int = 0
    memory_limit: int = 1 << 30
    workers: int = 1
    scheduler: str | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        if self.shard_format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.shard_format!r}")
        if self.compression is None:
            object.__setattr__(self, "compression", DEFAULT_COMPRESSION[self.shard_format])
        offered = COMPRESSIONS[self.shard_format]
        if self.compression not in offered:
            why = " (raw files)" if self.shard_format == "npy" else ""
            raise ValueError(
                f"compression={self.compression!r} is not available for {self.shard_format} output{why}; "
                f"choose from {', '.join(offered)}"
            )
        if self.shard_size is not None and self.rows_per_shard is not None:
            raise ValueError("give shard_size or rows_per_shard, not both")
        for name in ("rows_per_shard", "chunk_rows", "shard_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.overwrite and self.resume:
            raise ValueError("give overwrite or resume, not both")
        if self.columns is not None and not self.columns:
            raise ValueError("columns is empty: select at least one column")

    def output_params(self) -> dict[str, Any]:
        """What decides the output bytes (recorded in the manifest and journal)."""
        return {
            "format": self.shard_format,
            "columns": list(self.columns) if self.columns else None,
            "shard_size": self.shard_size,
            "rows_per_shard": self.rows_per_shard,
            "chunk_rows": self.chunk_rows,
            "compression": self.compression,
            "shuffle": self.shuffle,
            "seed": self.seed if self.shuffle else None,
            "memory_limit": self.memory_limit if self.shuffle else None,
        }


@dataclass
class ConvertResult:
    dest: str
    rows: int
    shards: int
    bytes: int
    seconds: float
    resumed_shards: int = 0
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else float("inf")
        resumed = f" ({self.resumed_shards} already done)" if self.resumed_shards else ""
        return (
            f"converted {self.rows:,} rows into {self.shards} shard(s){resumed}, "
            f"{format_bytes(self.bytes)} in {self.seconds:.1f} s ({rate:.0f} MB/s) -> {self.dest}"
        )


def convert(
    sources: str | Sequence[str],
    dest: str,
    shard_format: str = "parquet",
    *,
    columns: Sequence[str] | None = None,
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
        self.fresh = False  # DEST held nothing when this run claimed it
        self.finished = 0  # shards journaled by this run

    # ------------------------------------------------------------------ main line

    def run(self) -> ConvertResult:
        started = time.monotonic()
        header = {
            "fingerprint": _inputs.fingerprint_sources(self.sources, self.storage_options),
            "sources": self.sources,
            "params": self.options.output_params(),
        }
        try:
            done = self._claim_dest(header)
            if isinstance(done, ConvertResult):
                return done
            try:
                return self._convert(header, done, started)
            except BaseException as e:
                self._after_failure(e)
                raise
        finally:
            self.target.close()

    def _after_failure(self, error: BaseException) -> None:
        """Leave DEST as found when nothing can be kept (see ``convert``), else say how
        to finish. A failure of this clean-up never masks ``error``: it becomes a note."""
        notes = getattr(error, "add_note", None) if isinstance(error, Exception) else None
        rollback = self.fresh and (isinstance(error, _INPUT_ERRORS) or not self.finished)
        try:
            self.target.remove_temporaries()
            if rollback:
                for name in self._written:
                    self.target.remove(name)
                self.journal.remove()
                self.target.remove_if_created()
        except Exception as cleanup:
            if notes is not None:
                secrets = getattr(getattr(self.target, "location", None), "secrets", ())
                notes(f"cleaning up {self.dest} failed too: {redact(f'{type(cleanup).__name__}: {cleanup}', secrets)}")
        if not rollback and notes is not None:
            notes(
                f"{self.dest} keeps the shards finished so far and the journal: once the cause is fixed, "
                "run the same command with --resume to finish (or with --overwrite if the inputs changed)"
            )

    def _convert(self, header: dict[str, Any], done: dict[int, dict[str, Any]], started: float) -> ConvertResult:
        o = self.options
        staged = bool(done.pop(-1, None))
        parts, columns = self._inputs(staged)
        total = sum(p.num_rows for p in parts)
        if total == 0:
            raise EmptyDatasetError(f"the inputs {self.sources} hold zero rows")
        row_nbytes = sum(s.row_nbytes for s in columns.values())
        chunk_rows = o.chunk_rows or default_chunk_rows(row_nbytes, o.shuffle)
        per_shard = o.rows_per_shard or max(1, (o.shard_size or parse_bytes(_DEFAULT_SHARD_SIZE)) // max(1, row_nbytes))
        if not o.rows_per_shard and per_shard > chunk_rows:
            per_shard -= per_shard % chunk_rows  # whole row groups / chunks per shard
        bounds = [*range(0, total, per_shard), total]
        shard_rows = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        bar = progress_bar(self.progress, total, row_nbytes)
        try:
            tasks = self._tasks(parts, columns, bounds, chunk_rows, row_nbytes, staged, bar)
            if not staged:
                self.journal.append({"event": "staged"})
            resumed = sum(shard_rows[i] for i in done)
            if bar is not None and resumed:
                bar.update(resumed)
            entries = dict(done)
            pending = [t for t in tasks if t.index not in done]
            for entry in self._execute(pending):
                self._written.append(entry["path"])
                self.target.publish(entry)
                self.journal.append({"event": "shard", "entry": entry})
                self.finished += 1
                entries[entry["index"]] = entry
                if bar is not None:
                    bar.update(entry["rows"])
        finally:
            if bar is not None:
                bar.close()
        manifest = self._manifest(
            header, columns, [entries[i] for i in range(len(tasks))], chunk_rows, per_shard, total
        )
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

    # ------------------------------------------------------------------ DEST

    def _claim_dest(self, header: dict[str, Any]) -> dict[int, dict[str, Any]] | ConvertResult:
        """Check ``DEST`` against overwrite/resume; returns the journaled shards to
        keep (key -1 marks staging as done), or the result of a finished conversion."""
        o = self.options
        self._written: list[str] = []  # shards this run wrote (removed again if it fails on bad input)
        entries = self.target.prepare()
        self.fresh = not entries
        manifest_path = f"{self.dest}/{MANIFEST_NAME}"
        ours = MANIFEST_NAME in entries or JOURNAL_NAME in entries
        if entries and not (o.overwrite or o.resume):
            raise FileExistsError(
                f"{self.dest} is not empty: pass --overwrite to replace a previous conversion, "
                "or --resume to finish an interrupted one"
            )
        if entries and not ours:
            raise FileExistsError(
                f"{self.dest} is not empty and holds no streambatch manifest or journal: "
                "refusing to write into it (choose an empty or new directory)"
            )
        if o.resume and MANIFEST_NAME in entries:
            manifest = self.target.read_json(MANIFEST_NAME)
            self._check_same(manifest.get("input", {}), header, manifest_path)
            return ConvertResult(
                self.dest,
                manifest["rows"],
                len(manifest["shards"]),
                sum(s["bytes"] for s in manifest["shards"]),
                0.0,
                len(manifest["shards"]),
                manifest,
            )
        previous, events = self.journal.read()
        done: dict[int, dict[str, Any]] = {}
        if o.resume and previous is not None:
            self._check_same(previous, header, self.journal.path)
            for event in events:
                if event.get("event") == "staged":
                    done[-1] = {}
                elif event.get("event") == "shard" and _shard_intact(self.target, event["entry"]):
                    done[event["entry"]["index"]] = event["entry"]
            if not self.target.is_local:  # staging lived in a work directory that is gone: stage again
                done.pop(-1, None)
            elif -1 not in done:  # staging was interrupted: shuffle bucket files are incomplete
                done = {}
            self._remove_temporaries(keep_stage=-1 in done)
            if not done:
                self.journal.start(header)
            return done
        if o.overwrite:
            # shards of the previous (complete or interrupted) conversion that the new one may not rewrite
            self._old_files = {e["entry"]["path"] for e in events if e.get("event") == "shard"}
            if MANIFEST_NAME in entries:
                self._old_files |= {e["path"] for e in self.target.read_json(MANIFEST_NAME).get("shards", [])}
                self.target.remove(MANIFEST_NAME)  # DEST is no longer a complete dataset from here on
        self._remove_temporaries()
        self.journal.start(header)
        return done

    def _check_same(self, recorded: dict[str, Any], header: dict[str, Any], where: str) -> None:
        for key in ("fingerprint", "sources", "params"):
            if recorded.get(key) != header[key]:
                what = "the input files changed" if key == "fingerprint" else f"{key} differ"
                raise ConvertError(
                    f"cannot resume into {self.dest}: {what} since {where} was written "
                    f"(recorded {recorded.get(key)!r}, now {header[key]!r}); use --overwrite to start again"
                )

    def _remove_temporaries(self, keep_stage: bool = False) -> None:
        self.target.remove_temporaries(keep_stage)

    # ------------------------------------------------------------------ inputs and tasks

    def _inputs(self, staged: bool) -> tuple[list[Part], dict[str, ColumnSpec]]:
        o = self.options
        parts: list[Part] = []
        columns: dict[str, ColumnSpec] | None = None
        so = tuple(sorted(self.storage_options.items()))
        for i, source in enumerate(self.sources):
            if _inputs.is_csv_source(source):
                specs = _inputs.csv_columns(source, o.columns)
                directory = os.path.join(self.stage, f"csv-{i:04d}")
                if staged:
                    rows = (
                        os.path.getsize(os.path.join(directory, f"{next(iter(specs))}.bin"))
                        // next(iter(specs.values())).row_nbytes
                    )
                    part: Part = RawPart(directory, tuple((n, s.dtype.str, s.shape) for n, s in specs.items()), rows)
                else:
                    part = _inputs.stage_csv(source, directory, o.columns, specs)
            else:
                from ..sources import open_dataset

                ds = open_dataset(source, o.columns, storage_options=self.storage_options or None)
                specs = dict(ds.columns)
                refuse_variable(specs, o.shard_format)  # strings/ragged lists: loadable, not yet convertible
                part = DatasetPart(source, o.columns, ds.num_rows, so)
            if columns is None:
                columns = specs
            elif specs != columns:
                raise SchemaError(f"{source}: columns {specs} differ from those of {self.sources[0]}: {columns}")
            parts.append(part)
        assert columns is not None
        return parts, columns

    def _tasks(
        self,
        parts: list[Part],
        columns: dict[str, ColumnSpec],
        bounds: list[int],
        chunk_rows: int,
        row_nbytes: int,
        staged: bool,
        bar: Any,
    ) -> list[ShardTask]:
        o = self.options
        specs = tuple((n, s.dtype.str, s.shape) for n, s in columns.items())
        budget_rows = max(1, o.memory_limit // 4 // max(1, row_nbytes))
        common = dict(
            dest=self.target.work,
            shard_format=o.shard_format,
            columns=specs,
            chunk_rows=chunk_rows,
            compression=o.compression,
        )
        shard_rows = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if not o.shuffle:
            unit = _inputs.largest_unit_rows(parts)
            block = max(unit, budget_rows // (2 * o.workers))
            block = max(chunk_rows, block - block % chunk_rows)
            return [
                ShardTask(index=i, rows=n, block_rows=block, parts=tuple(parts), start=a, stop=a + n, **common)
                for i, (a, n) in enumerate(zip(bounds[:-1], shard_rows))
            ]
        plan = plan_buckets(shard_rows, budget_rows)
        capacities = [n for sizes in plan for n in sizes]
        # pass 1 block: bounded by the budget only (not by workers), so the output is independent of them
        scatter_block = max(1, min(65536, o.memory_limit // 8 // max(1, row_nbytes)))
        if not staged:
            remove_path(os.path.join(self.stage, "buckets"))
            try:
                scatter_to_buckets(
                    parts,
                    columns,
                    capacities,
                    os.path.join(self.stage, "buckets"),
                    o.seed,
                    scatter_block,
                    on_rows=(lambda n: None) if bar is None else bar.scatter,
                )
            except OSError as e:
                if isinstance(e, ConvertWriteError):
                    raise
                where = getattr(e, "filename", None) or self.stage
                raise ConvertWriteError(
                    e.errno or 5, f"shuffle pass 1 failed writing under {where}: {e.strerror or e}"
                ) from e
        tasks, b = [], 0
        block = max(chunk_rows, scatter_block - scatter_block % chunk_rows)
        for i, sizes in enumerate(plan):
            buckets = tuple(
                (bucket_dir(os.path.join(self.stage, "buckets"), b + j), n, b + j) for j, n in enumerate(sizes)
            )
            b += len(sizes)
            tasks.append(
                ShardTask(index=i, rows=shard_rows[i], block_rows=block, buckets=buckets, seed=o.seed, **common)
            )
        return tasks

    def _execute(self, tasks: list[ShardTask]) -> Iterator[dict[str, Any]]:
        o = self.options
        if not tasks:
            return iter(())
        if o.scheduler:
            return run_dask(o.scheduler, tasks)
        if o.workers > 1:
            return run_processes(o.workers, tasks)
        return map(write_shard, tasks)

    # ------------------------------------------------------------------ manifest

    def _manifest(
        self,
        header: dict[str, Any],
        columns: dict[str, ColumnSpec],
        entries: list[dict[str, Any]],
        chunk_rows: int,
        per_shard: int,
        total: int,
    ) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "shard_format": self.options.shard_format,
            "written_by": f"streambatch {__version__}",
            "rows": total,
            "schema": {
                "columns": [{"name": n, "dtype": s.dtype.str, "shape": list(s.shape)} for n, s in columns.items()]
            },
            "params": {**self.options.output_params(), "chunk_rows": chunk_rows, "rows_per_shard": per_shard},
            "input": header,
            "shards": [{k: e[k] for k in ("path", "rows", "bytes", "sha256", "unit_rows", "files")} for e in entries],
        }

    def _finish(self, manifest: dict[str, Any]) -> None:
        self.target.write_manifest(json.dumps(manifest, indent=1, sort_keys=True) + "\n")  # the commit point
        keep = {s["path"] for s in manifest["shards"]}
        for old in getattr(self, "_old_files", set()) - keep:  # shards of an overwritten, larger conversion
            self.target.remove(old)
        self._remove_temporaries()
        self.journal.remove()


def _shard_intact(target: Any, entry: dict[str, Any]) -> bool:
    """A journaled shard is kept on resume if every file still has its recorded size."""
    try:
        return all(target.size(f["path"]) == f["bytes"] for f in entry["files"])
    except FileNotFoundError:
        return False
