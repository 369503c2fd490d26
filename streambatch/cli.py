"""The ``streambatch`` command: a thin shell over library functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streambatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate an example dataset and stream it in every format")
    demo.add_argument("--rows", type=int, default=2_000_000, help="rows per format (default 2,000,000 = 1 GB)")
    demo.add_argument("--dir", default=None, help="keep the data here instead of a temporary directory")
    demo.add_argument("--memory-limit", default="256MiB", help="the loader's budget (default 256MiB)")
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--formats", default="npy,parquet,zarr", help="comma-separated subset of npy,parquet,zarr")
    demo.add_argument("--chunk-rows", type=int, default=8192, help="Parquet row group / Zarr chunk rows")

    _add_convert(commands)
    info = commands.add_parser("info", help="rows, columns, shards, bytes and chunk sizes of a dataset")
    info.add_argument("path", help="anything open_dataset reads (a convert output shows its manifest)")
    info.add_argument(
        "--verify", action="store_true", help="also check every sha256 the manifest records (reads all data)"
    )
    _add_storage_options(info)

    args = parser.parse_args(argv)
    if args.command == "convert":
        return _convert(parser, args)
    if args.command == "info":
        from .info import describe, format_info, verify

        try:
            options = _storage_options(parser, args.storage_option)
            print(format_info(describe(args.path, options)))
            if args.verify:
                print(f"  verified {verify(args.path, options)} file(s): every sha256 matches the manifest")
        except (OSError, ValueError, TypeError) as e:
            print(f"streambatch info: error: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        from .demo import FORMATS, run_demo

        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            parser.error(f"--formats: unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
        if args.rows <= 0:
            parser.error(f"--rows must be positive, got {args.rows}")
        run_demo(args.rows, args.dir, args.memory_limit, args.batch_size, formats, args.chunk_rows)
    return 0


def _add_convert(commands) -> None:
    c = commands.add_parser("convert", help="rewrite datasets into loader-friendly shards plus a manifest")
    c.add_argument("paths", nargs="+", metavar="SRC [SRC ...] DEST",
                   help="inputs (.npy, .parquet, .zarr, .csv, directories, globs) then the output: "
                   "a directory or an fsspec URL such as s3://bucket/prefix")
    c.add_argument("--format", required=True, choices=("parquet", "npy", "zarr"), help="output shard format")
    c.add_argument("--columns", default=None, help="comma-separated columns to keep (default: all)")
    size = c.add_mutually_exclusive_group()
    size.add_argument("--shard-size", default=None, help="target bytes per shard, e.g. 256MiB (the default)")
    size.add_argument("--rows-per-shard", type=int, default=None, help="exact rows per shard (the last may be short)")
    c.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per Parquet row group / Zarr chunk "
                   "(default ~128 KiB of rows, ~1 MiB with --shuffle: docs/convert.md)")
    c.add_argument("--compression", default="none", choices=("none", "zstd", "lz4"))
    c.add_argument("--shuffle", action="store_true", help="write a global random permutation of the rows")
    c.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    c.add_argument("--memory-limit", default="1GiB", help="memory budget of the conversion (default 1GiB)")
    c.add_argument("--workers", type=int, default=1, help="write shards in N processes (default 1)")
    c.add_argument("--scheduler", default=None, help="run the shard tasks on a dask.distributed scheduler (tcp://host:port)")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a previous conversion in DEST")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted conversion into DEST")
    c.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    _add_storage_options(c)


def _add_storage_options(command) -> None:
    command.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="an fsspec storage option for every URL (sources and DEST), e.g. endpoint_url=http://127.0.0.1:9000; "
        "repeatable; true/false become booleans, other values stay strings",
    )


def _storage_options(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, object] | None:
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--storage-option must be KEY=VALUE, got {item.split('=')[0]!r}=...")
        options[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
    return options or None


def _convert(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .convert import convert

    if len(args.paths) < 2:
        parser.error("convert needs at least one SRC and a DEST")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    storage_options = _storage_options(parser, args.storage_option)
    try:
        result = convert(
            args.paths[:-1], args.paths[-1], args.format, columns=columns, shard_size=args.shard_size,
            rows_per_shard=args.rows_per_shard, chunk_rows=args.chunk_rows, compression=args.compression,
            shuffle=args.shuffle, seed=args.seed, memory_limit=args.memory_limit, workers=args.workers,
            scheduler=args.scheduler, overwrite=args.overwrite, resume=args.resume,
            progress=False if args.quiet else None, storage_options=storage_options,
        )
    except KeyboardInterrupt:
        print("streambatch convert: interrupted; run again with --resume to finish", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, ImportError) as e:
        print(f"streambatch convert: error: {e}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):
            print(f"streambatch convert: {note}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
