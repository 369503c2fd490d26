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

    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
