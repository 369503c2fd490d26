"""A killed or failed conversion never opens as a dataset, and ``convert`` writes
to object storage (moto's S3 server on 127.0.0.1).

``convert`` is killed with SIGKILL from the test (``tests/convert_kill.py``) at
each point of its life: before the first shard, in the middle of a shard,
between shards, while the manifest is written (and, on S3, in the middle of a
shard's upload). After each kill, ``open_dataset``, ``Loader`` and
``streambatch info`` refuse DEST as an incomplete conversion naming
``--resume``; ``--resume`` then finishes it, equal to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os

import numpy as np
import pytest

import streambatch as sb
from streambatch.convert import convert
from streambatch.errors import SchemaError

from .conftest import BUCKET, SECRET, digest_tree, make_columns, write_dataset
from .convert_kill import POINTS, run_cli, run_killed, was_killed

N = 1000
_PREFIXES = itertools.count()
OPTS = dict(rows_per_shard=300, chunk_rows=100)
ARGS = ["--rows-per-shard", "300", "--chunk-rows", "100", "--quiet"]


def _source(tmp_path) -> str:
    return write_dataset("npy", tmp_path / "src", make_columns(N), 100, 2)


def _ids(source, **kw) -> np.ndarray:
    with sb.Loader(source, batch_size=100, memory_limit="1MiB", shuffle=False, **kw) as loader:
        return np.concatenate([b["id"] for b in loader])


def _assert_refused(dest: str, storage_options=None) -> None:
    """``open_dataset``, ``Loader`` and ``streambatch info`` all refuse ``dest``."""
    with pytest.raises(sb.IncompleteConversionError, match="--resume") as info:
        sb.open_dataset(dest, storage_options=storage_options)
    assert dest.rstrip("/") in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(sb.IncompleteConversionError, match="incomplete"):
        sb.Loader(dest, batch_size=10, storage_options=storage_options)
    args = ["info", dest] + [f"--storage-option={k}={v}" for k, v in (storage_options or {}).items()]
    shown = run_cli(args)
    assert shown.returncode == 1 and "--resume" in shown.stderr and "incomplete" in shown.stderr, shown.stderr
    if storage_options:
        assert SECRET not in shown.stderr + str(info.value)


# --------------------------------------------------------------------------- local


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
@pytest.mark.parametrize("point", POINTS)
def test_killed_local_conversion_is_refused_then_resumed(tmp_path, point, fmt):
    src = _source(tmp_path)
    clean, dest = str(tmp_path / "clean"), str(tmp_path / "dest")
    convert([src], clean, fmt, **OPTS)
    n = 1 if point == "manifest" else 2  # the 2nd shard; the manifest is written once
    killed = run_killed(["convert", src, dest, "--format", fmt, *ARGS], str(tmp_path / "hook"), point, n)
    assert was_killed(killed), (killed.returncode, killed.stderr)
    left = sorted(os.listdir(dest))
    assert "manifest.json" not in left and ".convert-journal.jsonl" in left, left
    if point == "mid_shard":
        assert any(n.startswith(".tmp-part-") for n in left), left
    if point == "manifest":
        assert ".tmp-manifest.json" in left and len([n for n in left if n.startswith("part-")]) == 4, left
    _assert_refused(dest)

    result = convert([src], dest, fmt, resume=True, **OPTS)
    assert result.rows == N
    assert digest_tree(dest) == digest_tree(clean)
    np.testing.assert_array_equal(_ids(dest), np.arange(N))


def test_a_plain_directory_without_journal_still_opens(tmp_path):
    """Data files (even a partial conversion's shards copied elsewhere) without
    the journal or temporary names are a user's directory: opened as today."""
    src = _source(tmp_path)
    out = str(tmp_path / "out")
    convert([src], out, "parquet", **OPTS)
    os.remove(os.path.join(out, "manifest.json"))
    with open(os.path.join(out, ".hidden-notes"), "w") as f:
        f.write("not data")
    np.testing.assert_array_equal(_ids(out), np.arange(N))


def test_a_nested_incomplete_conversion_is_refused(tmp_path):
    src = _source(tmp_path)
    root = tmp_path / "datasets"
    killed = run_killed(
        ["convert", src, str(root / "b"), "--format", "parquet", *ARGS], str(tmp_path / "hook"), "between_shards", 1
    )
    assert was_killed(killed)
    with pytest.raises(sb.IncompleteConversionError, match=str(root / "b")):
        sb.open_dataset(str(root))


# --------------------------------------------------------------------------- failure on bad input


def _csv(path, n: int, empty_at: int | None = None) -> str:
    with open(path, "w") as f:
        f.write("id,value\n")
        for i in range(n):
            f.write(f"{i},{'' if i == empty_at else i * 0.5}\n")
    return str(path)


@pytest.mark.parametrize("dest_exists", [False, True], ids=["new-dest", "empty-dest"])
def test_failed_first_run_on_bad_input_leaves_dest_as_found_and_names_the_row(tmp_path, dest_exists):
    path = _csv(tmp_path / "in.csv", 300_000, empty_at=250_000)
    dest = tmp_path / "dest"
    if dest_exists:
        dest.mkdir()
    with pytest.raises(SchemaError) as info:
        convert([path], str(dest), "parquet")
    message = str(info.value)
    assert "row 250000" in message and "'value'" in message and path in message, message
    assert dest.exists() == dest_exists and (not dest_exists or os.listdir(dest) == [])

    _csv(tmp_path / "in.csv", 300_000)  # fixed: a plain rerun works, no --overwrite or --resume
    assert convert([path], str(dest), "parquet").rows == 300_000


def test_a_failure_after_finished_shards_keeps_them_and_says_resume(tmp_path, monkeypatch):
    from streambatch.convert import _run

    src = _source(tmp_path)
    dest = str(tmp_path / "dest")
    original, calls = _run.write_shard, []

    def fail_third(task):
        calls.append(task.index)
        if len(calls) == 3:
            raise OSError(5, "I/O error")
        return original(task)

    monkeypatch.setattr(_run, "write_shard", fail_third)
    with pytest.raises(OSError) as info:
        convert([src], dest, "npy", **OPTS)
    assert any("--resume" in note for note in info.value.__notes__)
    monkeypatch.setattr(_run, "write_shard", original)
    assert convert([src], dest, "npy", resume=True, **OPTS).resumed_shards == 2


def test_the_cli_prints_how_to_finish(tmp_path):
    src = _source(tmp_path)
    dest = str(tmp_path / "dest")
    killed = run_killed(["convert", src, dest, "--format", "npy", *ARGS], str(tmp_path / "hook"), "between_shards", 1)
    assert was_killed(killed)
    again = run_cli(["convert", src, dest, "--format", "npy", *ARGS])
    assert again.returncode == 1 and "--resume" in again.stderr
    assert run_cli(["convert", src, dest, "--format", "npy", *ARGS, "--resume"]).returncode == 0


# --------------------------------------------------------------------------- object storage


@pytest.fixture
def s3(s3_endpoint, tmp_path, monkeypatch):
    """``(storage_options, s3fs filesystem, fresh prefix)`` on the moto server. The
    conversions' local work directories go under ``tmp_path/work``, which must be
    empty again after each test."""
    import tempfile

    import s3fs

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    _, options = s3_endpoint
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    prefix = f"{BUCKET}/convert-{os.getpid()}-{next(_PREFIXES)}"
    yield options, fs, prefix
    assert os.listdir(work) == [], "a conversion left its work directory behind"
    fs.invalidate_cache()
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)


def _digests_remote(fs, prefix: str) -> dict[str, str]:
    fs.invalidate_cache()
    return {
        p[len(prefix) + 1 :]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(prefix) if not p.endswith("/")
    }


def _options_args(options) -> list[str]:
    return [f"--storage-option={k}={v}" for k, v in options.items()]


@pytest.mark.parametrize("fmt", ["parquet", "npy", "zarr"])
def test_convert_to_s3_equals_local_and_opens(tmp_path, s3, fmt):
    options, fs, prefix = s3
    src = _source(tmp_path)
    clean = str(tmp_path / "clean")
    convert([src], clean, fmt, **OPTS)
    result = convert([src], f"s3://{prefix}", fmt, storage_options=options, **OPTS)
    assert result.rows == N and result.shards == 4
    assert _digests_remote(fs, prefix) == digest_tree(clean)
    np.testing.assert_array_equal(_ids(f"s3://{prefix}", storage_options=options), np.arange(N))


def test_convert_to_s3_refuses_non_empty_and_overwrites(tmp_path, s3):
    options, fs, prefix = s3
    src = _source(tmp_path)
    url = f"s3://{prefix}"
    convert([src], url, "parquet", storage_options=options, rows_per_shard=200)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert([src], url, "parquet", storage_options=options, rows_per_shard=200)
    convert([src], url, "parquet", storage_options=options, rows_per_shard=500, overwrite=True)
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(prefix)) == [
        "manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    fs.pipe_file(f"{BUCKET}/foreign-{os.getpid()}/x.bin", b"x")
    with pytest.raises(FileExistsError, match="no streambatch manifest"):
        convert([src], f"s3://{BUCKET}/foreign-{os.getpid()}", "npy", storage_options=options, overwrite=True)
    fs.rm(f"{BUCKET}/foreign-{os.getpid()}", recursive=True)


def test_overwrite_on_s3_leaves_nothing_of_the_previous_layout(tmp_path, s3):
    """Zarr shards rewritten with another chunking and fewer columns: no chunk or
    array object of the old layout stays under the new shard names."""
    options, fs, prefix = s3
    src = _source(tmp_path)
    url = f"s3://{prefix}"
    convert([src], url, "zarr", storage_options=options, rows_per_shard=500, chunk_rows=50)
    convert(
        [src], url, "zarr", storage_options=options, rows_per_shard=500, chunk_rows=250, columns=["id"], overwrite=True
    )
    clean = str(tmp_path / "clean")
    convert([src], clean, "zarr", rows_per_shard=500, chunk_rows=250, columns=["id"])
    assert _digests_remote(fs, prefix) == digest_tree(clean)
    assert list(sb.open_dataset(url, storage_options=options).columns) == ["id"]


def test_a_failed_upload_removes_the_shard_objects(tmp_path, s3, monkeypatch):
    """npy shards are one object per column: the second upload fails for good,
    the first object is removed, the error names DEST, the first run leaves
    DEST as found (nothing finished)."""
    import s3fs

    options, fs, prefix = s3
    src = _source(tmp_path)
    original, puts = s3fs.S3FileSystem._put_file, []

    async def fail_second(self, lpath, rpath, **kwargs):
        puts.append(rpath)
        if len(puts) >= 2:
            raise PermissionError(13, "Access Denied")
        return await original(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", fail_second)
    fresh = {**options, "skip_instance_cache": True}  # a cached instance keeps the unpatched sync wrapper
    with pytest.raises(PermissionError, match=f"s3://{prefix}/part-00000/"):
        convert([src], f"s3://{prefix}", "npy", storage_options=fresh, **OPTS)
    monkeypatch.undo()
    fs.invalidate_cache()
    assert not fs.exists(prefix) or fs.find(prefix) == []


@pytest.mark.parametrize("point", [*POINTS, "mid_upload"])
def test_killed_s3_conversion_is_refused_then_resumed(tmp_path, s3, point):
    options, fs, prefix = s3
    src = _source(tmp_path)
    clean = str(tmp_path / "clean")
    convert([src], clean, "npy", **OPTS)
    url = f"s3://{prefix}"
    work = tmp_path / "tmpdir"
    work.mkdir()
    env = {"TMPDIR": str(work)}
    args = ["convert", src, url, "--format", "npy", *ARGS, *_options_args(options)]
    killed = run_killed(args, str(tmp_path / "hook"), point, 1 if point == "manifest" else 2, env=env)
    assert was_killed(killed), (killed.returncode, killed.stderr)
    fs.invalidate_cache()
    names = {p[len(prefix) + 1 :] for p in fs.find(prefix)}
    assert ".convert-journal.jsonl" in names and "manifest.json" not in names, names
    if point == "mid_upload":
        assert "part-00000/id.npy" in names and "part-00000/x.npy" not in names, names
    _assert_refused(url, options)

    resumed = run_cli([*args, "--resume"], {"TMPDIR": str(work)})
    assert resumed.returncode == 0, resumed.stderr
    assert _digests_remote(fs, prefix) == digest_tree(clean)
    assert os.listdir(work) == [], "the killed run's work directory was not removed"
    manifest = json.loads(fs.cat_file(f"{prefix}/manifest.json"))
    assert manifest["rows"] == N
    np.testing.assert_array_equal(_ids(url, storage_options=options), np.arange(N))


def test_shuffled_csv_to_s3_with_workers_killed_then_resumed(tmp_path, s3):
    """CSV staging and shuffle pass 1 live in the local work directory, which the
    kill loses: --resume stages again (deterministically) and keeps the uploaded
    shards; the result equals a local conversion with the same options."""
    options, fs, prefix = s3
    path = _csv(tmp_path / "in.csv", 3000)
    opts = ["--rows-per-shard", "700", "--shuffle", "--seed", "3", "--memory-limit", "64KiB", "--quiet"]
    clean = str(tmp_path / "clean")
    convert([path], clean, "parquet", rows_per_shard=700, shuffle=True, seed=3, memory_limit="64KiB")
    url = f"s3://{prefix}"
    args = ["convert", path, url, "--format", "parquet", "--workers", "2", *opts, *_options_args(options)]
    env = {"TMPDIR": str(tmp_path / "work")}
    killed = run_killed(args, str(tmp_path / "hook"), "between_shards", 2, env=env)
    assert was_killed(killed), (killed.returncode, killed.stderr)
    _assert_refused(url, options)
    resumed = run_cli([*args, "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert _digests_remote(fs, prefix) == digest_tree(clean)
    journal = json.loads(fs.cat_file(f"{prefix}/manifest.json"))
    assert journal["rows"] == 3000
