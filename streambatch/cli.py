"""The streambatch command: a thin shell over library functions (``main(argv) -> int``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

_DESCRIPTION = """\
Stream datasets far larger than memory (.npy, Parquet, Zarr) into fixed-size,
shuffled NumPy batches under a hard memory limit. In Python: streambatch.Loader.
These commands try it out, rewrite data into loader-friendly shards and describe
a dataset."""

_EXAMPLES = """\
examples:
  streambatch demo --rows 200000                 try it on generated data (~100 MB per format)
  streambatch convert raw.csv out/ --format parquet --shuffle
  streambatch info out/                          rows, columns, shards and bytes

'streambatch COMMAND --help' shows each command's options."""

_DEMO_EXAMPLES = """\
examples:
  streambatch demo                               1 GB per format in a temporary directory
  streambatch demo --rows 200000 --formats npy   a quick run, .npy only
  streambatch demo --dir demo-data               keep the generated data"""

_CONVERT_EXAMPLES = """\
examples:
  streambatch convert raw.csv out/ --format parquet --shuffle
  streambatch convert 'day-*.parquet' out/ --format npy --columns x,label
  streambatch convert data/ out/ --format zarr --rows-per-shard 1000000    data/ holds x.npy, label.npy
  streambatch convert raw/ out/ --format parquet --resume      finish an interrupted run
  streambatch convert duck.parquet out/ --format npy --cast price=float64 --cast ts=datetime64[us]

The shards stream fast and, with --shuffle, are already a global permutation of the
rows. See docs/convert.md."""

_INFO_EXAMPLES = """\
examples:
  streambatch info data/                 a directory of .npy files
  streambatch info out/ --verify         a convert output, checking every sha256
  streambatch info duck.parquet --cast price=float64    the columns as --cast would deliver them"""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except BrokenPipeError:
        # the reader went away (`streambatch info ... | head`): stop quietly, the way the
        # Python docs recommend; later writes and the flush at exit go to /dev/null
        _silence_stdout()
        return 1
    return code


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (in-process tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "convert":
        return _convert(args.command_parser, args)
    if args.command == "info":
        return _info(args.command_parser, args)
    return _demo(args.command_parser, args)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="streambatch", description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_convert(commands)
    _add_info(commands)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; option help wrapped as usual."""


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="generate an example dataset and stream it in every format",
        description="Generate a class-sorted example dataset in each format, stream one shuffled epoch\n"
        "of each under a memory limit, and print rows/s, peak RSS and a shuffle score\n"
        "(1.0 = as good as a full random permutation).",
        epilog=_DEMO_EXAMPLES,
        formatter_class=_Formatter,
    )
    demo.set_defaults(command_parser=demo)  # errors name the subcommand in their usage line
    demo.add_argument("--rows", type=int, default=2_000_000, help="rows per format (default 2,000,000 = 1 GB)")
    demo.add_argument("--dir", default=None, help="keep the data here instead of a temporary directory")
    demo.add_argument("--memory-limit", default="256MiB", help="the loader's budget (default 256MiB)")
    demo.add_argument("--batch-size", type=int, default=256, help="rows per batch (default 256)")
    demo.add_argument("--formats", default="npy,parquet,zarr", help="comma-separated subset of npy,parquet,zarr")
    demo.add_argument("--chunk-rows", type=int, default=8192, help="Parquet row group / Zarr chunk rows")


def _add_convert(commands) -> None:
    from .convert import COMPRESSIONS, DEFAULT_COMPRESSION

    c = commands.add_parser(
        "convert",
        help="rewrite datasets into loader-friendly shards plus a manifest",
        description="Rewrite one or more datasets (.npy, Parquet, Zarr, CSV; files, directories, globs\n"
        "or fsspec URLs) into shards of one format plus a manifest, in bounded memory,\n"
        "atomically and resumably. The last path is the output directory.",
        epilog=_CONVERT_EXAMPLES,
        formatter_class=_Formatter,
    )
    c.set_defaults(command_parser=c)
    c.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="inputs (.npy, .parquet, .zarr, .csv, directories, globs), concatenated in order",
    )
    c.add_argument(
        "dest",
        metavar="DEST",
        help="the output: a directory (new or empty) or an fsspec URL such as s3://bucket/prefix",
    )
    c.add_argument("--format", required=True, choices=("parquet", "npy", "zarr"), help="output shard format")
    c.add_argument("--columns", default=None, metavar="A,B", help="comma-separated columns to keep (default: all)")
    c.add_argument(
        "--exclude",
        default=None,
        help="comma-separated columns to leave out (e.g. strings, which npy and zarr output cannot store)",
    )
    _add_cast(c)
    size = c.add_mutually_exclusive_group()
    size.add_argument(
        "--shard-size", default=None, metavar="BYTES", help="target bytes per shard, e.g. 256MiB (the default)"
    )
    size.add_argument(
        "--rows-per-shard", type=int, default=None, metavar="N", help="exact rows per shard (the last may be short)"
    )
    c.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        metavar="N",
        help="rows per Parquet row group / Zarr chunk "
        "(default ~128 KiB of rows, ~1 MiB with --shuffle: docs/convert.md)",
    )
    offered = sorted({name for names in COMPRESSIONS.values() for name in names})
    per_format = "; ".join(
        f"{fmt}: " + ", ".join(f"{n} (default)" if n == DEFAULT_COMPRESSION[fmt] else n for n in names)
        for fmt, names in COMPRESSIONS.items()
    )
    c.add_argument(
        "--compression", default=None, choices=offered, metavar="CODEC", help=f"compression of the shards; {per_format}"
    )
    c.add_argument("--shuffle", action="store_true", help="write a global random permutation of the rows")
    c.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --shuffle (default 0)")
    c.add_argument(
        "--memory-limit", default="1GiB", metavar="BYTES", help="memory budget of the conversion (default 1GiB)"
    )
    c.add_argument("--workers", type=int, default=1, metavar="N", help="write shards in N processes (default 1)")
    c.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the shard tasks on a dask.distributed scheduler (tcp://host:port)",
    )
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a previous conversion in DEST")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted conversion into DEST")
    c.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    _add_storage_options(c)


def _add_info(commands) -> None:
    info = commands.add_parser(
        "info",
        help="rows, columns, shards, bytes and chunk sizes of a dataset",
        description="Describe a dataset without reading its rows: rows, columns (dtype and row shape),\n"
        "shards, bytes and read-unit sizes; for a convert output, its manifest.",
        epilog=_INFO_EXAMPLES,
        formatter_class=_Formatter,
    )
    info.set_defaults(command_parser=info)
    info.add_argument("path", metavar="PATH", help="anything open_dataset reads (a convert output shows its manifest)")
    info.add_argument(
        "--verify", action="store_true", help="also check every sha256 the manifest records (reads all data)"
    )
    _add_cast(info)
    _add_storage_options(info)


def _add_storage_options(command) -> None:
    command.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec storage option for every URL (sources and DEST), e.g. endpoint_url=http://127.0.0.1:9000; "
        "repeatable; true/false become booleans, other values stay strings",
    )


def _add_cast(command) -> None:
    command.add_argument(
        "--cast",
        action="append",
        default=[],
        metavar="COL=DTYPE",
        help="read column COL of Parquet/Arrow inputs as DTYPE (Loader(cast=...)): a decimal as float64, a "
        "tz-aware timestamp as datetime64[ns] (UTC), a time of day as timedelta64[us], float64 as float32 ...; "
        "a value DTYPE cannot hold is an error; repeatable",
    )


def _cast(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str] | None:
    cast: dict[str, str] = {}
    for item in items:
        name, sep, dtype = item.partition("=")
        if not sep or not name.strip() or not dtype.strip():
            parser.error(f"--cast must be COL=DTYPE (e.g. price=float64), got {item!r}")
        if name.strip() in cast:
            parser.error(f"--cast names column {name.strip()!r} more than once")
        cast[name.strip()] = dtype.strip()
    return cast or None


def _storage_options(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, object] | None:
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--storage-option must be KEY=VALUE, got {item.split('=')[0]!r}=...")
        options[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
    return options or None


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .demo import FORMATS, run_demo

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"--formats: unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if args.rows <= 0:
        parser.error(f"--rows must be positive, got {args.rows}")
    run_demo(args.rows, args.dir, args.memory_limit, args.batch_size, formats, args.chunk_rows)
    return 0


def _info(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .info import describe, format_info, verify

    options = _storage_options(parser, args.storage_option)
    cast = _cast(parser, args.cast)
    try:
        print(format_info(describe(args.path, options, cast)))
        if args.verify:
            print(f"  verified {verify(args.path, options)} file(s): every sha256 matches the manifest")
    except BrokenPipeError:
        raise  # handled in main: not an error of the dataset
    except (OSError, ValueError, TypeError) as e:
        print(f"streambatch info: error: {e}", file=sys.stderr)
        return 1
    return 0


def _convert(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .convert import COMPRESSIONS, convert

    if args.compression is not None and args.compression not in COMPRESSIONS[args.format]:
        parser.error(
            f"--compression {args.compression} is not available for --format {args.format}; "
            f"choose from {', '.join(COMPRESSIONS[args.format])}"
        )
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    storage_options = _storage_options(parser, args.storage_option)
    cast = _cast(parser, args.cast)
    try:
        if args.exclude:
            from .convert._inputs import columns_excluding

            exclude = [c.strip() for c in args.exclude.split(",") if c.strip()]
            columns = columns_excluding(args.sources, exclude, columns, storage_options, cast)
        result = convert(
            args.sources,
            args.dest,
            args.format,
            columns=columns,
            cast=cast,
            shard_size=args.shard_size,
            rows_per_shard=args.rows_per_shard,
            chunk_rows=args.chunk_rows,
            compression=args.compression,
            shuffle=args.shuffle,
            seed=args.seed,
            memory_limit=args.memory_limit,
            workers=args.workers,
            scheduler=args.scheduler,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=False if args.quiet else None,
            storage_options=storage_options,
        )
    except KeyboardInterrupt:
        print("streambatch convert: interrupted; run again with --resume to finish", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
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
