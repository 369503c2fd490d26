"""`streambatch convert` and `streambatch info`: round trips between every format,
the global shuffle, shard sizes, the manifest and its checks, crash-consistency
(kill -9 then --resume), refusals, disk full, CSV types, parallel runs and info."""

from __future__ import annotations

import errno
import json
import os
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest

import streambatch as sb
from streambatch import cli
from streambatch.convert import ConvertError, ConvertWriteError, convert, default_chunk_rows
from streambatch.errors import CorruptInputError, SchemaError, SourceNotFoundError
from streambatch.quality import shuffle_score

from .conftest import digest_tree, make_columns, write_dataset
from .convert_kill import run_killed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_FORMATS = ("npy", "parquet", "zarr", "csv")
OUT_FORMATS = ("parquet", "npy", "zarr")
N = 1000


def read_all(path) -> dict[str, np.ndarray]:
    """Every row of every column of ``path``, in dataset order."""
    ds = sb.open_dataset(path)
    out = {n: np.empty((ds.num_rows, *s.shape), s.dtype) for n, s in ds.columns.items()}
    for i, shard in enumerate(ds.shards):
        a, b = int(ds.shard_offsets[i]), int(ds.shard_offsets[i + 1])
        reader = shard.open_reader(list(ds.columns))
        try:
            reader.read_into(0, b - a, {n: v[a:b] for n, v in out.items()})
        finally:
            reader.close()
    return out


def csv_columns(n: int) -> dict[str, np.ndarray]:
    ids = np.arange(n, dtype=np.int64)
    return {"id": ids, "value": ids * 0.5 - 3.25, "flag": ids % 3 == 0}


def write_csv(path, columns: dict[str, np.ndarray], extra: dict[str, list[str]] | None = None) -> str:
    names = list(columns) + list(extra or {})
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for i in range(len(columns["id"])):
            cells = [
                ("true" if v else "false") if isinstance(v, np.bool_) else repr(v.item())
                for v in (c[i] for c in columns.values())
            ]
            cells += [e[i] for e in (extra or {}).values()]
            f.write(",".join(cells) + "\n")
    return str(path)


def make_source(fmt: str, tmp_path, n: int = N) -> tuple[str, dict[str, np.ndarray]]:
    if fmt == "csv":
        cols = csv_columns(n)
        return write_csv(tmp_path / "in.csv", cols), cols
    cols = make_columns(n)
    root = tmp_path / "src"
    root.mkdir(exist_ok=True)
    return write_dataset(fmt, root, cols, chunk_rows=128, shards=2), cols


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("out_fmt", OUT_FORMATS)
@pytest.mark.parametrize("in_fmt", IN_FORMATS)
def test_round_trip(tmp_path, in_fmt, out_fmt, shuffle):
    src, expected = make_source(in_fmt, tmp_path)
    dest = tmp_path / "out"
    result = convert(
        [src], str(dest), out_fmt, rows_per_shard=300, chunk_rows=64, shuffle=shuffle, seed=3, memory_limit="32KiB"
    )
    assert (result.rows, result.shards) == (N, 4)
    assert (dest / "manifest.json").exists()
    assert not [p for p in os.listdir(dest) if p.startswith(".")], "temporary files left behind"
    got = read_all(dest)
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        assert got[name].dtype == values.dtype and got[name].shape == values.shape, name
    if shuffle:
        order = np.argsort(got["id"])
        assert not np.array_equal(got["id"], expected["id"]), "shuffle left the order unchanged"
        got = {k: v[order] for k, v in got.items()}
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_several_sources_and_column_selection(tmp_path):
    a = write_dataset("npy", tmp_path / "a", make_columns(100), shards=1) if (tmp_path / "a").mkdir() is None else ""
    b = (
        write_dataset("parquet", tmp_path / "b", make_columns(50), chunk_rows=16)
        if (tmp_path / "b").mkdir() is None
        else ""
    )
    convert([a, b], str(tmp_path / "out"), "npy", columns=["id", "img"])
    got = read_all(tmp_path / "out")
    assert list(got) == ["id", "img"]
    np.testing.assert_array_equal(got["id"], np.r_[np.arange(100), np.arange(50)])


def test_tensor_columns_are_written_plain_and_scalars_may_use_a_dictionary(tmp_path):
    """Tensor rows (FixedSizeBinary) rarely repeat: a dictionary would hold the whole
    column chunk and every read would gather it back, so they are written PLAIN;
    a low-cardinality scalar (a label) keeps its dictionary."""
    n = 3000
    rng = np.random.default_rng(0)
    columns = {
        "x": rng.standard_normal((n, 64), dtype=np.float32),
        "label": np.repeat(np.arange(3, dtype=np.int64), n // 3),
    }
    src = write_dataset("npy", tmp_path / "src", columns)
    convert([src], str(tmp_path / "out"), "parquet", chunk_rows=1000)
    path = sb.open_dataset(tmp_path / "out").shards[0].path
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(j).name for j in range(metadata.num_columns)]
    for g in range(metadata.num_row_groups):
        chunks = {name: metadata.row_group(g).column(j) for j, name in enumerate(names)}
        assert chunks["x"].dictionary_page_offset is None
        assert "RLE_DICTIONARY" not in chunks["x"].encodings and "PLAIN_DICTIONARY" not in chunks["x"].encodings
        assert chunks["label"].dictionary_page_offset is not None
    got = read_all(tmp_path / "out")
    np.testing.assert_array_equal(got["x"], columns["x"])


def test_rows_per_shard_and_shard_size(tmp_path):
    src, _ = make_source("npy", tmp_path)
    convert([src], str(tmp_path / "rows"), "parquet", rows_per_shard=300, chunk_rows=64)
    manifest = json.loads((tmp_path / "rows" / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [300, 300, 300, 100]
    assert [s.num_rows for s in sb.open_dataset(tmp_path / "rows").shards] == [300, 300, 300, 100]
    assert manifest["shards"][0]["unit_rows"] == [64, 64, 64, 64, 44], "row groups of --chunk-rows rows"

    row_bytes = sb.open_dataset(src).row_nbytes  # 48
    convert([src], str(tmp_path / "size"), "npy", shard_size=f"{row_bytes * 250 + 7}B")
    shards = json.loads((tmp_path / "size" / "manifest.json").read_text())["shards"]
    assert [s["rows"] for s in shards] == [250, 250, 250, 250]
    assert all(s["rows"] * row_bytes <= row_bytes * 250 + 7 for s in shards)


def test_shuffle_is_deterministic_by_seed_and_independent_of_workers(tmp_path):
    src, _ = make_source("parquet", tmp_path)
    opts = dict(rows_per_shard=250, shuffle=True, memory_limit="16KiB", chunk_rows=50)
    convert([src], str(tmp_path / "a"), "parquet", seed=1, **opts)
    convert([src], str(tmp_path / "b"), "parquet", seed=1, workers=2, **opts)
    convert([src], str(tmp_path / "c"), "parquet", seed=2, **opts)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert not np.array_equal(read_all(tmp_path / "a")["id"], read_all(tmp_path / "c")["id"])


def test_shuffled_output_read_in_order_scores_like_a_full_shuffle(tmp_path):
    n, classes = 40_000, 10
    labels = np.repeat(np.arange(classes, dtype=np.int64), n // classes)  # class-sorted
    x = np.arange(n * 8, dtype=np.float32).reshape(n, 8)
    src = tmp_path / "sorted"
    src.mkdir()
    np.save(src / "label.npy", labels)
    np.save(src / "x.npy", x)
    # the input (~1.6 MB) is ~25x the memory limit: many buckets
    convert(
        [str(src)], str(tmp_path / "out"), "parquet", shuffle=True, seed=0, memory_limit="64KiB", rows_per_shard=8192
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["params"]["shuffle"] is True and manifest["params"]["seed"] == 0

    def score(path):
        with sb.Loader(str(path), batch_size=256, shuffle=False, memory_limit="8MiB", num_threads=1) as loader:
            return shuffle_score((b["label"] for b in loader), classes)

    assert score(src) > 5  # unshuffled sorted input
    assert score(tmp_path / "out") <= 1.1


# --------------------------------------------------------------------------- manifest checks


@pytest.fixture
def converted(tmp_path):
    src, _ = make_source("npy", tmp_path)
    dest = tmp_path / "out"
    convert([src], str(dest), "parquet", rows_per_shard=400, chunk_rows=100)
    return dest


def test_manifest_is_used_and_checked_missing_shard(converted):
    assert sb.open_dataset(converted).num_rows == N
    os.remove(converted / "part-00001.parquet")
    with pytest.raises(SourceNotFoundError, match=r"part-00001\.parquet"):
        sb.open_dataset(converted)


def test_manifest_wrong_size_is_a_clear_error(converted):
    with open(converted / "part-00002.parquet", "ab") as f:
        f.write(b"junk")
    with pytest.raises(CorruptInputError, match=r"part-00002.parquet.*bytes"):
        sb.open_dataset(converted)


@pytest.mark.parametrize("bad", ["../outside.parquet", "/etc/passwd", "a/../../x.parquet"])
def test_manifest_paths_outside_dest_are_refused(converted, bad):
    path = converted / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["files"][0]["path"] = bad
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptInputError, match=r"outside|'\.\.'"):
        sb.open_dataset(converted)


def test_info_verify_catches_a_flipped_byte(converted, capsys):
    assert cli.main(["info", str(converted), "--verify"]) == 0
    assert "verified 3 file(s)" in capsys.readouterr().out
    path = converted / "part-00001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: open_dataset's size check cannot see it
    path.write_bytes(bytes(data))
    assert sb.open_dataset(converted).num_rows == N
    assert cli.main(["info", str(converted), "--verify"]) == 1
    assert "part-00001.parquet: sha256 differs" in capsys.readouterr().err


def test_manifest_shards_need_no_footer_scan(converted, monkeypatch):
    from streambatch.sources import _parquet

    def no_footer(*args, **kwargs):
        raise AssertionError("footer read while opening a manifest dataset")

    monkeypatch.setattr(_parquet, "_read_footer", no_footer)
    ds = sb.open_dataset(converted)
    assert [s.num_rows for s in ds.shards] == [400, 400, 200]
    assert ds.shards[0].unit_bounds.tolist() == [0, 100, 200, 300, 400]


# --------------------------------------------------------------------------- crash, resume, refusal


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path, shuffle):
    src, _ = make_source("zarr", tmp_path)
    args = [
        "--format",
        "parquet",
        "--rows-per-shard",
        "150",
        "--chunk-rows",
        "50",
        "--quiet",
        "--memory-limit",
        "16KiB",
    ] + (["--shuffle", "--seed", "7"] if shuffle else [])
    clean, dest = str(tmp_path / "clean"), str(tmp_path / "dest")
    opts = dict(rows_per_shard=150, chunk_rows=50, memory_limit="16KiB", shuffle=shuffle, seed=7)
    convert([src], clean, "parquet", **opts)

    killed = run_killed(["convert", src, dest, *args], str(tmp_path / "hook"), "between_shards", 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not os.path.exists(os.path.join(dest, "manifest.json"))
    finals = sorted(p for p in os.listdir(dest) if not p.startswith("."))
    assert finals == [f"part-0000{i}.parquet" for i in range(3)]
    for name in finals:  # every file under a final name is complete and matches the clean run
        assert pq.read_metadata(os.path.join(dest, name)).num_rows == 150
    with pytest.raises(FileExistsError, match="--resume"):
        convert([src], dest, "parquet", **opts)

    result = convert([src], dest, "parquet", resume=True, **opts)
    assert result.resumed_shards == 3 and result.shards == 7
    assert digest_tree(dest) == digest_tree(clean)
    again = convert([src], dest, "parquet", resume=True, **opts)
    assert again.resumed_shards == 7 and digest_tree(dest) == digest_tree(clean)


def test_kill_in_shuffle_pass_1_then_resume_equals_an_uninterrupted_run(tmp_path):
    src, _ = make_source("npy", tmp_path)
    opts = dict(rows_per_shard=300, memory_limit="8KiB", shuffle=True, seed=1)
    clean, dest = str(tmp_path / "clean"), str(tmp_path / "dest")
    convert([src], clean, "npy", **opts)
    args = ["--format", "npy", "--rows-per-shard", "300", "--memory-limit", "8KiB", "--shuffle", "--seed", "1"]
    killed = run_killed(["convert", src, dest, *args, "--quiet"], str(tmp_path / "hook"), "pass1_block", 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(os.listdir(dest)) == [".convert-journal.jsonl", ".tmp-stage"], "only the journal and staging"
    result = convert([src], dest, "npy", resume=True, **opts)
    assert result.resumed_shards == 0 and result.rows == N
    assert digest_tree(dest) == digest_tree(clean)


def test_progress_bar_and_summary(tmp_path, capsys):
    pytest.importorskip("tqdm")
    src, _ = make_source("npy", tmp_path)
    result = convert([src], str(tmp_path / "out"), "parquet", progress=True, shuffle=True, memory_limit="16KiB")
    err = capsys.readouterr().err
    assert "rows" in err and "/s" in err and "1.00k/1.00k" in err, err
    assert result.summary().startswith("converted 1,000 rows into 1 shard(s)")


def test_resume_refuses_changed_inputs_or_parameters(tmp_path):
    src, _ = make_source("npy", tmp_path)
    dest = str(tmp_path / "dest")
    convert([src], dest, "npy", rows_per_shard=300)
    with pytest.raises(ConvertError, match="params"):
        convert([src], dest, "npy", rows_per_shard=200, resume=True)
    np.save(os.path.join(src, "shard-000", "id.npy"), np.arange(500, dtype=np.int64) + 1)
    with pytest.raises(ConvertError, match="input files changed"):
        convert([src], dest, "npy", rows_per_shard=300, resume=True)


def test_dest_inside_a_source_is_refused(tmp_path):
    src, _ = make_source("npy", tmp_path)
    with pytest.raises(ValueError, match="inside the source"):
        convert([src], os.path.join(src, "converted"), "npy")
    assert not os.path.exists(os.path.join(src, "converted"))


def test_non_empty_dest_is_refused_and_overwrite_replaces(tmp_path):
    src, _ = make_source("npy", tmp_path)
    dest = tmp_path / "dest"
    convert([src], str(dest), "parquet", rows_per_shard=200)
    with pytest.raises(FileExistsError, match=r"not empty.*--overwrite"):
        convert([src], str(dest), "parquet", rows_per_shard=200)
    convert([src], str(dest), "parquet", rows_per_shard=500, overwrite=True)
    assert sorted(os.listdir(dest)) == ["manifest.json", "part-00000.parquet", "part-00001.parquet"]
    assert read_all(dest)["id"].tolist() == list(range(N))

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no streambatch manifest"):
        convert([src], str(foreign), "parquet", overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_disk_full_aborts_with_path_and_no_temporaries(tmp_path, monkeypatch, shuffle):
    from streambatch import writers

    src, _ = make_source("npy", tmp_path)
    calls = {"n": 0}
    original = writers.NpyWriter.write

    def full(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, block)

    monkeypatch.setattr(writers.NpyWriter, "write", full)
    dest = tmp_path / "dest"
    with pytest.raises(ConvertWriteError, match=r"part-0000\d") as info:
        convert([src], str(dest), "npy", rows_per_shard=200, shuffle=shuffle, memory_limit="16KiB")
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    if not dest.exists():  # no shard was finished: DEST is left as it was found (absent)
        return
    left = os.listdir(dest)
    assert "manifest.json" not in left and not [p for p in left if p.startswith(".tmp-")], left
    assert ".convert-journal.jsonl" in left and "--resume" in " ".join(info.value.__notes__)


# --------------------------------------------------------------------------- CSV


def test_csv_mixed_types_and_string_column(tmp_path):
    cols = csv_columns(300)
    path = write_csv(tmp_path / "mixed.csv", cols, {"name": [f"row{i}" for i in range(300)]})
    with pytest.raises(SchemaError, match=r"'name'.*--columns"):
        convert([path], str(tmp_path / "a"), "parquet")
    convert([path], str(tmp_path / "b"), "parquet", columns=["id", "value", "flag"])
    ds = sb.open_dataset(tmp_path / "b")
    assert {n: str(s.dtype) for n, s in ds.columns.items()} == {"id": "int64", "value": "float64", "flag": "bool"}
    got = read_all(tmp_path / "b")
    for name, values in cols.items():
        np.testing.assert_array_equal(got[name], values)


def test_csv_with_empty_cells_is_refused(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("id,value\n1,2.0\n2,\n3,4.0\n")
    with pytest.raises(SchemaError, match=r"'value'.*empty"):
        convert([str(path)], str(tmp_path / "out"), "npy")


# --------------------------------------------------------------------------- parallel


@pytest.mark.slow
def test_dask_local_cluster_equals_local_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    src, _ = make_source("parquet", tmp_path)
    opts = dict(rows_per_shard=200, chunk_rows=50, shuffle=True, seed=5, memory_limit="16KiB")
    convert([src], str(tmp_path / "local"), "zarr", **opts)
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        local_directory=str(tmp_path / "dask"),
    ) as cluster:
        convert([src], str(tmp_path / "dask-out"), "zarr", scheduler=cluster.scheduler_address, **opts)
    assert digest_tree(tmp_path / "dask-out") == digest_tree(tmp_path / "local")


# --------------------------------------------------------------------------- CLI and info


def test_cli_convert_and_info(tmp_path, capsys):
    src, _ = make_source("zarr", tmp_path)
    dest = str(tmp_path / "out")
    assert (
        cli.main(["convert", src, dest, "--format", "parquet", "--rows-per-shard", "600", "--chunk-rows", "100"]) == 0
    )
    assert "converted 1,000 rows into 2 shard(s)" in capsys.readouterr().out
    assert cli.main(["info", dest]) == 0
    text = capsys.readouterr().out
    assert "rows     1,000" in text
    assert "img              int32      3x2" in text
    assert "shards   2" in text
    assert "part-00000.parquet: 600 rows" in text and "6 units of 100/100/100 rows" in text
    assert "manifest streambatch v1, parquet shards" in text
    assert cli.main(["info", src]) == 0
    assert "4 units of 116/128/128 rows" in capsys.readouterr().out  # a plain dataset without a manifest
    assert cli.main(["convert", src, dest, "--format", "parquet", "--quiet"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_default_chunk_rows_is_about_128_kib_or_1_mib_when_shuffled():
    assert default_chunk_rows(520) == 252
    assert default_chunk_rows(520, shuffled=True) == 2016
    assert default_chunk_rows(1) == 65536
    assert default_chunk_rows(10 << 20) == 64
