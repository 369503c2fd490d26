"""The ``streambatch`` command: the demo runs end to end on a small dataset and
bad arguments are refused with the flag named."""

from __future__ import annotations

import pytest

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
