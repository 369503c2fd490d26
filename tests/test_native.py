"""The native core and its pure-Python fallback: the same bytes, whichever runs.

``streambatch.native`` picks the C extension when it is built and the fallback
otherwise (or with ``STREAMBATCH_PURE_PYTHON=1``). These tests hold both to one
specification: each operation, called through both paths on the same inputs,
writes the same bytes and reports the same errors; and a whole epoch of every
format, run in a fresh process on each path, yields identical batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streambatch as sb
from streambatch import native
from streambatch.errors import CorruptInputError

from .conftest import FORMATS

_core = native._core


def test_the_extension_is_built_and_in_use_when_ci_requires_it():
    """CI sets STREAMBATCH_REQUIRE_NATIVE: a build that silently fell back to pure
    Python (``optional`` extension, no compiler) must fail there, not pass slower."""
    if os.environ.get("STREAMBATCH_REQUIRE_NATIVE"):
        assert native.NATIVE, native.path_in_use()
        assert native.path_in_use() == "native"
    elif os.environ.get("STREAMBATCH_PURE_PYTHON"):
        assert not native.NATIVE
        assert "STREAMBATCH_PURE_PYTHON" in native.path_in_use()


needs_core = pytest.mark.skipif(
    _core is None and not os.environ.get("STREAMBATCH_REQUIRE_NATIVE"),
    reason="the C extension is not built (the pure-Python path is tested on its own)",
)


def _both_paths(monkeypatch, call):
    """``call()`` through the extension, then through the fallback."""
    native_result = call()
    monkeypatch.setattr(native, "_core", None)
    fallback_result = call()
    return native_result, fallback_result


@st.composite
def gathers(draw):
    capacity = draw(st.integers(1, 300))
    n = draw(st.integers(0, 400))
    slots = draw(st.lists(st.integers(0, capacity - 1), min_size=n, max_size=n))
    # runs of consecutive slots too (the C loop copies them as one run)
    if slots and draw(st.booleans()):
        start = draw(st.integers(0, capacity - 1))
        slots = [(start + k) % capacity for k in range(len(slots))]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return capacity, np.array(slots, dtype=np.int64), cuts


@needs_core
@settings(max_examples=60, deadline=None)
@given(case=gathers())
def test_gather_copies_the_same_rows_on_both_paths_into_any_split_of_destinations(case):
    capacity, slots, cuts = case
    rng = np.random.default_rng(capacity)
    sources = [
        rng.standard_normal((capacity, 3, 2)).astype(np.float32),
        rng.integers(0, 2**40, capacity, dtype=np.int64),
        rng.integers(0, 255, (capacity, 5), dtype=np.uint8),
    ]
    bounds = [0, *cuts, slots.size]
    outputs = {}
    for path in ("native", "fallback"):
        batches = [[np.full((b - a, *s.shape[1:]), 7, s.dtype) for a, b in zip(bounds, bounds[1:])] for s in sources]
        saved = native._core
        try:
            native._core = _core if path == "native" else None
            native.gather(sources, slots, batches)
        finally:
            native._core = saved
        outputs[path] = [np.concatenate(parts) for parts in batches]
    for source, got_native, got_fallback in zip(sources, outputs["native"], outputs["fallback"]):
        np.testing.assert_array_equal(got_native, source[slots])
        np.testing.assert_array_equal(got_fallback, source[slots])


@needs_core
@pytest.mark.parametrize("slot", [-1, 10])
def test_gather_refuses_a_slot_outside_the_ring_on_both_paths(monkeypatch, slot):
    source = np.arange(10, dtype=np.int64)
    target = np.zeros(3, np.int64)

    def call():
        with pytest.raises(IndexError, match="outside a ring of 10 rows"):
            native.gather([source], np.array([1, slot, 2]), [[target]])
        return target.copy()

    # nothing is written before the check: the destination is untouched either way
    assert all(np.array_equal(t, [0, 0, 0]) for t in _both_paths(monkeypatch, call))


@needs_core
def test_gather_refuses_destinations_that_do_not_hold_the_rows():
    source = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="destination"):
        _core.gather([source], np.array([1, 2, 3], np.int64), [[np.zeros((2, 4), np.float32)]])
    with pytest.raises(ValueError, match="sources but"):
        _core.gather([source], np.array([1], np.int64), [])


@needs_core
def test_pread_ranges_reads_the_same_bytes_on_both_paths_and_reports_where_a_file_ends(tmp_path, monkeypatch):
    data = np.random.default_rng(0).integers(0, 255, 10_000, dtype=np.uint8)
    path = tmp_path / "blob"
    path.write_bytes(data.tobytes())
    offsets = np.array([500, 0, 9_000, 4_321], np.int64)
    sizes = np.array([1_000, 10, 1_000, 0], np.int64)
    fd = os.open(path, os.O_RDONLY)
    try:

        def read_all():
            out = np.zeros(int(sizes.sum()), np.uint8)
            assert native.pread_ranges(fd, offsets, sizes, memoryview(out)) is None
            return out

        expected = np.concatenate([data[o : o + s] for o, s in zip(offsets, sizes)])
        for got in _both_paths(monkeypatch, read_all):
            np.testing.assert_array_equal(got, expected)
        monkeypatch.setattr(native, "_core", _core)

        def read_past_the_end():
            out = np.zeros(300, np.uint8)
            return native.pread_ranges(
                fd, np.array([0, 9_900], np.int64), np.array([100, 200], np.int64), memoryview(out)
            )

        # range 1 starts 100 bytes before the end of the file: it ends after 100 of its 200 bytes
        assert _both_paths(monkeypatch, read_past_the_end) == ((1, 100), (1, 100))
    finally:
        os.close(fd)


@needs_core
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pread_ranges_places_ranges_of_several_files_at_their_positions_on_both_paths(tmp_path_factory, data):
    """One call reads a job's ranges whatever file each comes from, each at its own
    position in the destination (a ring's slots, in any order)."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    contents = [rng.integers(0, 255, int(rng.integers(1, 3_000)), dtype=np.uint8) for _ in range(3)]
    fds = []
    for i, content in enumerate(contents):
        (root / f"f{i}").write_bytes(content.tobytes())
        fds.append(os.open(root / f"f{i}", os.O_RDONLY))
    try:
        n = data.draw(st.integers(0, 12))
        which = np.array([data.draw(st.integers(0, 2)) for _ in range(n)], np.int64)
        offsets, sizes = [], []
        for w in which.tolist():
            start = data.draw(st.integers(0, len(contents[w])))
            offsets.append(start)
            sizes.append(data.draw(st.integers(0, len(contents[w]) - start)))
        offsets_a, sizes_a = np.array(offsets, np.int64), np.array(sizes, np.int64)
        order = np.array(data.draw(st.permutations(range(n))), np.int64)  # ranges laid out in any order
        positions = np.zeros(n, np.int64)
        positions[order] = np.cumsum(sizes_a[order]) - sizes_a[order]
        spare = data.draw(st.integers(0, 16))
        expected = np.full(int(sizes_a.sum()) + spare, 7, np.uint8)
        for w, o, size, at in zip(which.tolist(), offsets, sizes, positions.tolist()):
            expected[at : at + size] = contents[w][o : o + size]
        fd_of = np.array(fds, np.int64)[which] if n else np.zeros(0, np.int64)

        def read():
            out = np.full(expected.size, 7, np.uint8)
            assert native.pread_ranges(fd_of, offsets_a, sizes_a, memoryview(out), positions) is None
            return out

        with pytest.MonkeyPatch.context() as patch:
            for got in _both_paths(patch, read):
                np.testing.assert_array_equal(got, expected)
    finally:
        for fd in fds:
            os.close(fd)


@needs_core
def test_pread_ranges_refuses_a_range_that_would_write_past_its_destination(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(bytes(100))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:

        def overrun():
            out = np.zeros(50, np.uint8)
            with pytest.raises(ValueError, match="does not fit a destination of 50 bytes"):
                native.pread_ranges(fd, np.array([0, 0]), np.array([10, 20]), memoryview(out), np.array([0, 31]))
            return True

        assert _both_paths(monkeypatch, overrun) == (True, True)
    finally:
        os.close(fd)


def test_a_truncated_npy_file_is_named_with_the_byte_it_ended_at(tmp_path):
    """The native read reports the end of the file; the reader turns it into the
    same error the pure-Python reads raise (file, byte, what is missing)."""
    root = tmp_path / "data"
    root.mkdir()
    np.save(root / "x.npy", np.arange(4_000, dtype=np.float64).reshape(1_000, 4))
    shard = sb.open_dataset(str(root)).shards[0]
    reader = shard.open_reader(["x"])
    try:
        os.truncate(root / "x.npy", os.path.getsize(root / "x.npy") - 3_200)  # the last 100 rows
        out = {"x": np.empty((30, 4))}
        with pytest.raises(CorruptInputError, match=r"x\.npy: file ended at byte \d+, \d+ bytes short"):
            reader.read_many(np.array([0, 890]), np.array([10, 910]), out)
    finally:
        reader.close()


_EPOCH_DIGEST = textwrap.dedent(
    """
    import hashlib, json, sys
    import streambatch as sb
    from streambatch import native
    path, shuffle, limit = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    digest = hashlib.sha256()
    loader = sb.Loader(path, 64, shuffle=shuffle, seed=3, memory_limit=limit, drop_last=False)
    n = 0
    for batch in loader:
        for name in sorted(batch):
            digest.update(name.encode())
            digest.update(batch[name].tobytes())
        n += 1
    print(json.dumps({"native": native.NATIVE, "batches": n, "digest": digest.hexdigest()}))
    """
)


def _epoch_digest(path: str, shuffle: bool, limit: int, pure: bool) -> dict:
    env = dict(os.environ)
    env.pop("STREAMBATCH_REQUIRE_NATIVE", None)
    env.pop("STREAMBATCH_PURE_PYTHON", None)
    if pure:
        env["STREAMBATCH_PURE_PYTHON"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _EPOCH_DIGEST, path, "1" if shuffle else "0", str(limit)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_core
@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_an_epoch_is_byte_identical_on_the_native_and_the_pure_python_path(dataset_factory, fmt, shuffle):
    """Several shards, a budget that holds a fraction of the data (so pieces wrap
    around the ring and batches span segments) and a final partial batch."""
    path = dataset_factory(fmt, n=3_001, chunk_rows=97, shards=3)
    limit = 96 * 1024 if fmt != "zarr" else 192 * 1024
    fast = _epoch_digest(path, shuffle, limit, pure=False)
    slow = _epoch_digest(path, shuffle, limit, pure=True)
    assert fast["native"] and not slow["native"]
    assert fast["batches"] == slow["batches"] == -(-3_001 // 64)
    assert fast["digest"] == slow["digest"]


def test_the_fallback_is_what_runs_when_the_environment_asks_for_it():
    env = {**os.environ, "STREAMBATCH_PURE_PYTHON": "1"}
    env.pop("STREAMBATCH_REQUIRE_NATIVE", None)
    code = "from streambatch import native; print(native.NATIVE, native.path_in_use())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("False pure-python (STREAMBATCH_PURE_PYTHON is set)")
