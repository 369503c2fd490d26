"""Variable-length columns -- strings, binary, ragged lists (token ids) -- from files
written by pandas, polars and pyarrow (Parquet, whole row groups and streamed) and
as Arrow IPC: value-equal to the source, every row exactly once, shuffled, resumed,
split over ranks, padded; the memory budget holds for long rows.

(Test ids avoid the word "large": the quick suite runs with ``-k "not large"``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import streambatch as sb

N = 1500


def _rows(seed: int = 0, n: int = N) -> dict[str, list]:
    """Row ``i``: ``id == i``; tokens of 0..60 values that encode ``i``; text with
    non-ASCII and empty strings; bytes with trailing zero bytes."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 61, n)
    lengths[::97] = 0
    tokens = [(np.arange(k, dtype=np.int32) + 1000 * i) for i, k in enumerate(lengths)]
    text = ["" if i % 50 == 0 else f"row {i} é✓ " + "x" * (i % 13) for i in range(n)]
    blob = [bytes([i % 256]) * (i % 5) + b"\x00" * (i % 3) for i in range(n)]
    return {"id": list(range(n)), "tokens": tokens, "text": text, "blob": blob}


@dataclass
class Case:
    path: str
    rows: dict[str, list]
    kinds: dict[str, str]  # column -> ColumnSpec.kind
    loader_kw: dict


def _table(rows, tokens_type, text_type, blob_type) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(rows["id"], pa.int64()),
            "tokens": pa.array([t.tolist() for t in rows["tokens"]], tokens_type),
            "text": pa.array(rows["text"], text_type),
            "blob": pa.array(rows["blob"], blob_type),
        }
    )


KINDS = {"id": "fixed", "tokens": "list", "text": "str", "blob": "bytes"}


def pandas_parquet(tmp_path) -> Case:
    import pandas as pd

    rows = _rows()
    path = str(tmp_path / "pandas.parquet")
    pd.DataFrame(rows).to_parquet(path, row_group_size=200)
    return Case(path, rows, KINDS, {})


def polars_parquet(tmp_path) -> Case:
    import polars as pl

    rows = _rows(1)
    path = str(tmp_path / "polars.parquet")
    frame = pl.DataFrame(
        {
            "id": rows["id"],
            "tokens": pl.Series([t.tolist() for t in rows["tokens"]], dtype=pl.List(pl.Int32)),
            "text": pl.Series(rows["text"], dtype=pl.Utf8),
            "blob": pl.Series(rows["blob"], dtype=pl.Binary),
        }
    )
    frame.write_parquet(path, row_group_size=256)
    return Case(path, rows, KINDS, {})


def pyarrow_long_offsets(tmp_path) -> Case:  # large_list / large_string / large_binary
    rows = _rows(2)
    path = str(tmp_path / "pyarrow-64.parquet")
    table = _table(rows, pa.large_list(pa.int32()), pa.large_string(), pa.large_binary())
    pq.write_table(table, path, row_group_size=300, store_schema=True)
    assert pq.read_schema(path).field("tokens").type == pa.large_list(pa.int32())
    return Case(path, rows, KINDS, {})


def pyarrow_strings(tmp_path) -> Case:
    rows = _rows(3)
    path = str(tmp_path / "pyarrow.parquet")
    pq.write_table(_table(rows, pa.list_(pa.int32()), pa.string(), pa.binary()), path, row_group_size=128)
    return Case(path, rows, KINDS, {})


def parquet_streamed(tmp_path) -> Case:
    """Row groups much larger than a piece, the data larger than the budget: read
    through streams, slice by slice."""
    rows = _rows(4, 200_000)
    path = str(tmp_path / "big-groups.parquet")
    pq.write_table(_table(rows, pa.list_(pa.int32()), pa.string(), pa.binary()), path, row_group_size=100_000)
    return Case(path, rows, KINDS, {"memory_limit": "32MiB", "batch_size": 512})


def arrow_file(tmp_path) -> Case:  # random access with positional reads (resumes read the first batch row by row)
    rows = _rows(5)
    path = str(tmp_path / "data.arrow")
    table = _table(rows, pa.large_list(pa.int32()), pa.string(), pa.binary())
    feather.write_feather(table, path, compression="uncompressed", chunksize=250)
    return Case(path, rows, KINDS, {})


def arrow_compressed(tmp_path) -> Case:  # record batches' buffers decompressed whole: units
    rows = _rows(6)
    path = str(tmp_path / "zstd.arrow")
    table = _table(rows, pa.list_(pa.int32()), pa.large_string(), pa.binary())
    feather.write_feather(table, path, compression="zstd", chunksize=200)
    return Case(path, rows, KINDS, {})


def arrow_stream(tmp_path) -> Case:
    rows = _rows(7)
    path = str(tmp_path / "data.arrows")
    table = _table(rows, pa.list_(pa.int32()), pa.string(), pa.binary())
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=300):
            writer.write_batch(batch)
    return Case(path, rows, KINDS, {})


CASES: list[Callable] = [
    pandas_parquet,
    polars_parquet,
    pyarrow_long_offsets,
    pyarrow_strings,
    parquet_streamed,
    arrow_file,
    arrow_compressed,
    arrow_stream,
]


@pytest.fixture(scope="module", params=CASES, ids=[c.__name__ for c in CASES])
def case(request, tmp_path_factory) -> Case:
    return request.param(tmp_path_factory.mktemp(request.param.__name__))


def _loader(case: Case, **kw) -> sb.Loader:
    options = {"batch_size": 64, "seed": 3, **{k: v for k, v in case.loader_kw.items() if k != "_cache"}, **kw}
    return sb.Loader(case.path, **options)


def _check_values(case: Case, batch: dict) -> np.ndarray:
    """Every row of ``batch`` equals the source row its id names; returns the ids."""
    ids = batch["id"]
    tokens, text, blob = batch["tokens"], batch["text"], batch["blob"]
    assert isinstance(tokens, sb.Ragged) and tokens.offsets.dtype == np.int64
    assert tokens.offsets.shape == (len(ids) + 1,) and tokens.values.dtype == np.int32
    assert isinstance(text.dtype, np.dtypes.StringDType) and text.shape == ids.shape
    assert blob.dtype == object and blob.shape == ids.shape
    assert tokens == _all_tokens(case).take(ids)
    assert text.tolist() == [case.rows["text"][i] for i in ids.tolist()]
    assert blob.tolist() == [case.rows["blob"][i] for i in ids.tolist()]
    return ids


def _all_tokens(case: Case) -> sb.Ragged:
    """Every source row's tokens as one Ragged (built once per case)."""
    if "_all" not in case.loader_kw.setdefault("_cache", {}):
        rows = case.rows["tokens"]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        case.loader_kw["_cache"]["_all"] = sb.Ragged(np.concatenate(rows).astype(np.int32), offsets)
    return case.loader_kw["_cache"]["_all"]


def _epoch(loader) -> list[dict]:
    return list(loader)


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["id"], y["id"])
        assert x["tokens"] == y["tokens"]
        assert x["text"].tolist() == y["text"].tolist()
        assert x["blob"].tolist() == y["blob"].tolist()


def test_columns_have_the_variable_kinds(case):
    ds = sb.open_dataset(case.path)
    assert {n: c.kind for n, c in ds.columns.items()} == case.kinds
    assert ds.columns["tokens"] == sb.ColumnSpec(np.int32, (), "list")
    assert ds.column_row_nbytes("tokens") > 16  # offsets plus an estimate of the values


def test_shuffled_epoch_is_every_row_once_and_value_equal(case):
    with _loader(case) as loader:
        if case.path.endswith("big-groups.parquet"):
            assert loader.budget.stream_bytes > 0 and not loader.budget.fits, "the case must stream"
        batches = _epoch(loader)
    ids = np.concatenate([_check_values(case, b) for b in batches])
    n = len(case.rows["id"])
    assert sorted(ids.tolist()) == list(range(n))
    assert ids.tolist() != list(range(n))  # shuffled


def test_unshuffled_epoch_is_in_file_order(case):
    with _loader(case, shuffle=False) as loader:
        ids = np.concatenate([_check_values(case, b) for b in loader])
    assert ids.tolist() == list(range(len(case.rows["id"])))


def test_the_thread_count_does_not_change_the_batches(case):
    with _loader(case, num_threads=1) as one, _loader(case, num_threads=6) as six:
        _same_batches(_epoch(one), _epoch(six))


@pytest.mark.parametrize("stop_after", [1, 9, 22])
def test_resume_at_a_boundary_gives_the_rest_of_the_uninterrupted_epoch(case, stop_after):
    with _loader(case) as whole:
        expected = _epoch(whole)
    with _loader(case) as first:
        it = iter(first)
        head = [next(it) for _ in range(stop_after)]
        state = first.state_dict()
        it.close()
    _same_batches(head, expected[:stop_after])
    with _loader(case) as second:
        second.load_state_dict(json.loads(json.dumps(state)))
        rest = _epoch(second)
    _same_batches(rest, expected[stop_after:])
    for batch in rest:
        _check_values(case, batch)


def test_two_ranks_share_the_rows(case):
    seen = []
    for rank in range(2):
        with _loader(case, rank=rank, world_size=2, remainder="drop") as loader:
            for batch in loader:
                seen.extend(_check_values(case, batch).tolist())
    n = len(case.rows["id"])
    assert len(seen) == len(set(seen)) and n - 1 <= len(seen) <= n  # "drop": at most world_size - 1 rows


def test_pad_delivers_a_fixed_shape_array_and_the_lengths(case):
    with _loader(case, shuffle=False, pad={"tokens": (16, -1)}) as loader:
        batches = _epoch(loader)
    for b, batch in enumerate(batches):
        padded, lengths = batch["tokens"], batch["tokens_length"]
        assert padded.shape == (len(batch["id"]), 16) and padded.dtype == np.int32
        assert lengths.dtype == np.int64
        expected = _all_tokens(case).take(batch["id"])
        np.testing.assert_array_equal(lengths, np.minimum(expected.lengths, 16))
        if b > 2:
            continue  # the first batches row by row, below; the rest by their lengths
        for k, i in enumerate(batch["id"].tolist()):
            row = case.rows["tokens"][i]
            kept = min(len(row), 16)  # longer rows are truncated
            assert lengths[k] == kept
            np.testing.assert_array_equal(padded[k, :kept], row[:kept])
            assert (padded[k, kept:] == -1).all()


# --------------------------------------------------------------------------- Ragged


def test_ragged_slices_takes_concatenates_and_pads():
    r = sb.Ragged(np.array([1, 2, 3, 4, 5, 6], np.int16), np.array([0, 3, 3, 6]))
    assert len(r) == 3 and r.lengths.tolist() == [3, 0, 3]
    assert r[1:].tolist() == [[], [4, 5, 6]] and r[1:].offsets.tolist() == [0, 0, 3]
    assert r.take(np.array([2, 0])).tolist() == [[4, 5, 6], [1, 2, 3]]
    assert sb.Ragged.concatenate([r[:1], r[2:]]).tolist() == [[1, 2, 3], [4, 5, 6]]
    padded, lengths = r.padded(2, fill=9)
    assert padded.tolist() == [[1, 2], [9, 9], [4, 5]] and lengths.tolist() == [2, 0, 2]
    padded, lengths = r.padded(4)
    assert padded.tolist() == [[1, 2, 3, 0], [0, 0, 0, 0], [4, 5, 6, 0]] and lengths.tolist() == [3, 0, 3]


@pytest.mark.parametrize(
    ("values", "offsets", "message"),
    [
        (np.zeros((2, 2)), [0, 2], "values must be 1-D"),
        (np.zeros(3), [1, 3], "from 0 to len"),
        (np.zeros(3), [0, 2], "from 0 to len"),
        (np.zeros(3), [], "at least one entry"),
    ],
)
def test_ragged_refuses_inconsistent_arrays(values, offsets, message):
    with pytest.raises(ValueError, match=message):
        sb.Ragged(values, np.asarray(offsets, np.int64))


@pytest.mark.parametrize(
    ("pad", "error", "message"),
    [
        ({"nope": (4, 0)}, ValueError, "pad: no column 'nope'"),
        ({"id": (4, 0)}, ValueError, "column 'id' is .* not a variable-length list"),
        ({"text": (4, 0)}, ValueError, "column 'text' is"),
        ({"tokens": 4}, ValueError, r"pad\['tokens'\] must be a tuple \(length, fill\)"),
        ({"tokens": (0, 0)}, ValueError, r"length must be a positive integer, got 0"),
        ({"tokens": (4, 1.5)}, ValueError, r"fill 1.5 is not a value of the column's dtype int32"),
        ({"tokens": (4, 2**40)}, ValueError, r"fill 1099511627776 is not a value"),
        (["tokens"], TypeError, "pad must be a dict"),
    ],
)
def test_bad_pad_options_are_refused_naming_the_rule(tmp_path, pad, error, message):
    path = pyarrow_strings(tmp_path).path
    with pytest.raises(error, match=message):
        sb.Loader(path, batch_size=8, pad=pad)


def test_a_lengths_column_name_that_exists_is_refused(tmp_path):
    path = str(tmp_path / "clash.parquet")
    pq.write_table(pa.table({"tokens": [[1], [2, 3]], "tokens_length": [1, 2]}), path)
    with pytest.raises(ValueError, match="'tokens_length', which is already a column"):
        sb.Loader(path, batch_size=2, pad={"tokens": (4, 0)})


# --------------------------------------------------------------------------- nulls, refusals, convert


def test_null_strings_are_filled_and_a_null_list_is_an_error_naming_the_row_group(tmp_path):
    path = str(tmp_path / "nulls.parquet")
    table = pa.table({"text": ["a", None, "c", "d"], "tokens": [[1], [2, 3], None, []]})
    pq.write_table(table, path, row_group_size=2)
    with sb.Loader(path, batch_size=4, shuffle=False, columns=["text"], fill_nulls={"text": "?"}) as loader:
        (batch,) = list(loader)
    assert batch["text"].tolist() == ["a", "?", "c", "d"]
    with pytest.raises(sb.SchemaError, match=r"fill_nulls\['text'\] = 0 is not a str"):
        sb.Loader(path, batch_size=4, columns=["text"], fill_nulls={"text": 0})
    with (
        sb.Loader(path, batch_size=4, shuffle=False, columns=["tokens"]) as loader,
        pytest.raises(sb.SchemaError, match=r"nulls.parquet: column 'tokens' row group 1 has 1 nulls"),
    ):
        list(loader)


def test_empty_lists_are_not_nulls(tmp_path):
    # the footer's leaf null count counts empty lists too: it must not refuse them at open
    path = str(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"tokens": pa.array([[], [1], [], [2, 3]], pa.list_(pa.int64()))}), path)
    with sb.Loader(path, batch_size=4, shuffle=False) as loader:
        (batch,) = list(loader)
    assert batch["tokens"].tolist() == [[], [1], [], [2, 3]]


@pytest.mark.parametrize("output", ["npy", "zarr"])
def test_convert_refuses_a_variable_length_column_an_output_cannot_store_by_name(tmp_path, capsys, output):
    # (Parquet output stores them: tests/test_convert_variable.py)
    from streambatch import cli

    path = pyarrow_strings(tmp_path).path
    code = cli.main(["convert", path, str(tmp_path / f"out-{output}"), "--format", output, "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "column 'tokens' is variable-length (list<int32>)" in err and "--exclude tokens" in err
    assert "--format parquet" in err
    args = [
        "convert",
        path,
        str(tmp_path / f"ok-{output}"),
        "--format",
        output,
        "--quiet",
        "--exclude",
        "tokens,text,blob",
    ]
    assert cli.main(args) == 0


# --------------------------------------------------------------------------- memory


def test_a_row_larger_than_its_share_of_the_budget_is_an_error_naming_file_column_and_row(tmp_path):
    path = str(tmp_path / "huge-row.parquet")
    lengths = np.full(4000, 10)
    lengths[2345] = 6_000_000  # 24 MB of int32 in one row; the budget is 16 MiB
    tokens = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(np.zeros(int(lengths.sum()), np.int32)),
    )
    pq.write_table(pa.table({"id": np.arange(4000), "tokens": tokens}), path, row_group_size=1000)
    loader = sb.Loader(path, batch_size=32, memory_limit="16MiB", seed=0)  # row groups streamed
    with loader, pytest.raises(sb.BudgetError) as info:
        list(loader)
    message = str(info.value)
    for word in [path, "column 'tokens'", "row 2345", "24,000,000 bytes", "memory_limit"]:
        assert word in message


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import streambatch as sb
    path, limit = sys.argv[1], sys.argv[2]
    rows = 0
    with sb.Loader(path, batch_size=64, memory_limit=limit, seed=1) as loader:
        held = []
        for batch in loader:
            rows += len(batch["id"])
            held = [batch]  # the caller holds a batch, as a training loop does
        arena = loader.budget.arena_bytes
    status = open("/proc/self/status").read()
    hwm = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
    print(json.dumps({"rows": rows, "hwm": hwm, "arena": arena}))
""")


def test_peak_rss_stays_within_the_budget_for_long_rows(tmp_path):
    # 24k rows of ~2000-8000 int32 tokens: ~480 MB of values, 8x the 64 MiB budget
    rng = np.random.default_rng(0)
    n = 24_000
    lengths = rng.integers(2000, 8000, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
    tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    path = str(tmp_path / "long-rows.parquet")
    pq.write_table(pa.table({"id": np.arange(n), "tokens": tokens}), path, row_group_size=500, compression="none")
    del values, tokens
    limit = 64 << 20
    script = tmp_path / "rss.py"
    script.write_text(_RSS_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), path, str(limit)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["rows"] == n
    assert 0 < found["arena"] < limit
    assert found["hwm"] <= limit + (300 << 20), f"peak RSS {found['hwm'] / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- torch


def test_torch_takes_padded_lists_and_strings_and_names_the_remedy_for_ragged(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    import streambatch.torch as sbt

    case = pyarrow_strings(tmp_path)
    adapter = sbt.StreambatchIterable(case.path, batch_size=100, seed=0, pad={"tokens": (8, 0)})
    seen = []
    for batch in DataLoader(adapter, batch_size=None, num_workers=2):
        assert batch["tokens"].dtype == torch.int32 and batch["tokens"].shape[1] == 8
        assert batch["tokens_length"].dtype == torch.int64
        assert isinstance(batch["text"], list) and isinstance(batch["blob"], list)
        for k, i in enumerate(batch["id"].tolist()):
            assert batch["text"][k] == case.rows["text"][i] and batch["blob"][k] == case.rows["blob"][i]
            kept = min(8, len(case.rows["tokens"][i]))
            assert batch["tokens"][k, :kept].tolist() == case.rows["tokens"][i][:kept].tolist()
        seen.extend(batch["id"].tolist())
    assert sorted(seen) == list(range(N))
    with pytest.raises(TypeError, match=r"column 'tokens' holds lists of varying length .* pad=\{'tokens'"):
        next(iter(sbt.StreambatchIterable(case.path, batch_size=10)))


def test_an_npy_loader_never_imports_pyarrow(tmp_path):
    # the column kinds import pyarrow only to build string batches: .npy-only use stays light
    np.save(tmp_path / "x.npy", np.arange(10))
    code = (
        f"import sys, streambatch as sb; batches = list(sb.Loader({str(tmp_path)!r}, batch_size=4)); "
        "assert 'pyarrow' not in sys.modules, 'pyarrow was imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr


def test_the_estimate_of_dictionary_encoded_strings_reads_what_they_decode_to(tmp_path):
    # 20 distinct 1,000-character strings: the dictionary page holds them once, the rows ~2 bytes each
    path = str(tmp_path / "dict.parquet")
    words = [chr(65 + i) * 1000 for i in range(20)]
    pq.write_table(pa.table({"s": [words[i % 20] for i in range(20_000)]}), path, row_group_size=5_000)
    shard = sb.open_dataset(path).shards[0]
    group = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert group.has_dictionary_page and group.total_uncompressed_size / 5_000 < 100  # what the footer says
    assert shard.variable_row_nbytes("s") >= 1000


@pytest.mark.parametrize("writer", ["parquet", "arrow"])
def test_rows_whose_counts_fit_one_length_but_differ_are_ragged(tmp_path, writer):
    # 6 values in 2 rows, as if each held 3: the first rows are checked at open, not only the footer
    rows = [[1, 2, 3, 4, 5], [6]]
    path = str(tmp_path / f"fits.{writer}")
    table = pa.table({"t": pa.array(rows, pa.list_(pa.int32()))})
    if writer == "parquet":
        pq.write_table(table, path)
    else:
        feather.write_feather(table, path, compression="uncompressed")
    assert sb.open_dataset(path).columns["t"] == sb.ColumnSpec(np.int32, (), "list")
    with sb.Loader(path, batch_size=2, shuffle=False) as loader:
        (batch,) = list(loader)
    assert batch["t"].tolist() == rows
