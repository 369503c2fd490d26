"""The ``streambatch`` command, in process (``main(argv) -> int``): the demo runs end to
end on a small dataset, help reads as plain text with examples, convert takes
``SRC [SRC ...] DEST`` and the codecs each format can write, bad arguments are refused
with the flag named, and a closed stdout pipe ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pyarrow.parquet as pq
import pytest

import streambatch
import streambatch as sb
from streambatch.cli import main


def test_demo_streams_every_format_and_reports_each(tmp_path, capsys):
    argv = ["demo", "--rows", "30000", "--memory-limit", "16MiB", "--chunk-rows", "1024"]
    argv += ["--dir", str(tmp_path / "demo")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for fmt in ("npy", "parquet", "parquet, converted --shuffle", "zarr"):
        line = next(line for line in out.splitlines() if line.startswith(fmt + " "))
        rows_per_s, score = line.split()[-6], float(line.split()[-1])
        assert float(rows_per_s.replace(",", "")) > 0
        assert 0.5 < score < 13, line
    converted = next(line for line in out.splitlines() if line.startswith("parquet, converted"))
    assert float(converted.split()[-1]) < 1.3  # the converted copy is mixed on disk
    assert (tmp_path / "demo" / "npy" / "x.npy").exists()  # --dir keeps the data


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["demo", "--rows", "0"], "--rows"), (["demo", "--formats", "csv"], "--formats")],
)
def test_bad_demo_arguments_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def _npy_dataset(root) -> str:
    root.mkdir()
    np.save(root / "x.npy", np.arange(400, dtype=np.float32).reshape(100, 4))
    np.save(root / "label.npy", np.arange(100, dtype=np.int64))
    return str(root)


def test_help_is_plain_text_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out  # no reST markup
    assert "examples:" in out and "streambatch convert raw.csv out/" in out
    for command in ("demo", "convert", "info"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"streambatch {command}" in text.split("examples:")[1], command


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"streambatch {metadata.version('streambatch')}"
    assert streambatch.__version__ == metadata.version("streambatch")


def test_convert_usage_reads_src_then_dest(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "SRC [SRC ...] DEST\n" in out and "DEST [SRC" not in out
    out = " ".join(out.split())  # help text is wrapped to the terminal
    for codec in ("snappy (default)", "gzip", "brotli", "lz4", "zstd"):
        assert codec in out


def test_convert_takes_several_sources_and_the_last_path_as_dest(tmp_path, capsys):
    a, b = _npy_dataset(tmp_path / "a"), _npy_dataset(tmp_path / "b")
    dest = tmp_path / "out"
    assert main(["convert", a, b, str(dest), "--format", "parquet", "--quiet"]) == 0
    assert sb.open_dataset(str(dest)).num_rows == 200
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", a, "--format", "parquet"])
    assert exit_info.value.code == 2 and "DEST" in capsys.readouterr().err


@pytest.mark.parametrize("codec", ["none", "snappy", "gzip", "brotli", "lz4", "zstd"])
def test_convert_writes_parquet_with_every_codec_it_offers(tmp_path, codec):
    src = _npy_dataset(tmp_path / "src")
    dest = tmp_path / "out"
    assert main(["convert", src, str(dest), "--format", "parquet", "--compression", codec, "--quiet"]) == 0
    shard = next(dest.glob("*.parquet"))
    written = pq.ParquetFile(shard).metadata.row_group(0).column(0).compression
    assert written == {"none": "UNCOMPRESSED"}.get(codec, codec.upper())
    with sb.Loader(str(dest), batch_size=100, shuffle=False) as loader:
        assert np.array_equal(next(iter(loader))["label"], np.arange(100))


def test_parquet_is_snappy_by_default_zarr_and_npy_uncompressed(tmp_path):
    src = _npy_dataset(tmp_path / "src")
    assert main(["convert", src, str(tmp_path / "pq"), "--format", "parquet", "--quiet"]) == 0
    shard = next((tmp_path / "pq").glob("*.parquet"))
    assert pq.ParquetFile(shard).metadata.row_group(0).column(0).compression == "SNAPPY"
    assert main(["convert", src, str(tmp_path / "npy"), "--format", "npy", "--quiet"]) == 0


@pytest.mark.parametrize(
    ("fmt", "codec"), [("npy", "zstd"), ("npy", "snappy"), ("zarr", "snappy"), ("zarr", "gzip"), ("zarr", "brotli")]
)
def test_a_codec_the_format_cannot_write_is_refused_with_the_choices(tmp_path, capsys, fmt, codec):
    src = _npy_dataset(tmp_path / "src")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", src, str(tmp_path / "out"), "--format", fmt, "--compression", codec])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--compression {codec} is not available for --format {fmt}" in err and "choose from none" in err
    assert not (tmp_path / "out").exists()


def test_info_into_a_closed_pipe_exits_quietly(tmp_path):
    """``streambatch info PATH | head`` once head has exited: no traceback, no
    "error: [Errno 32] Broken pipe" (the reader of the pipe is gone before we write)."""
    src = _npy_dataset(tmp_path / "src")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "streambatch.cli", "info", src],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.stderr.decode() == ""
    assert done.returncode == 1  # what Python itself does on EPIPE (docs: "Note on SIGPIPE")
