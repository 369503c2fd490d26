"""The native core of the fixed-width hot path, and its pure-Python fallback.

Two operations the pipeline runs per batch group and per read job, where the
Python around many small NumPy calls and the GIL round trips after each cost
more than the copies themselves:

* :func:`gather` -- ring rows into a whole group of batches, every column, in
  one call;
* :func:`pread_ranges` -- many byte ranges of any number of files into one
  buffer (one read job, whatever the shards it covers).

Both come from the C extension ``streambatch.native._core`` (built by pip from
``_core.c``; each call releases the GIL for its whole duration) when it is
importable, and otherwise from NumPy and ``os.preadv`` here, with identical
results: the path changes speed, never a byte of a batch. Set
``STREAMBATCH_PURE_PYTHON=1`` (read once, at import) to force the fallback;
:data:`NATIVE` says which path is in use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType

import numpy as np

__all__ = ["NATIVE", "gather", "pread_ranges", "path_in_use"]


def _load() -> ModuleType | None:
    if os.environ.get("STREAMBATCH_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _core
    except ImportError:  # not built (no compiler at install time): the fallback below
        return None
    return _core


_core = _load()

#: whether the C extension is the path in use
NATIVE: bool = _core is not None


def path_in_use() -> str:
    """``"native"`` or ``"pure-python"``, and why, for ``info`` and bug reports."""
    if NATIVE:
        return "native"
    if os.environ.get("STREAMBATCH_PURE_PYTHON", "") not in ("", "0"):
        return "pure-python (STREAMBATCH_PURE_PYTHON is set)"
    return "pure-python (the extension streambatch.native._core is not built)"


def gather(sources: Sequence[np.ndarray], slots: np.ndarray, destinations: Sequence[Sequence[np.ndarray]]) -> None:
    """Rows ``slots`` of each ``sources[c]`` (a C-contiguous ring array of
    ``capacity`` rows), in order, into ``destinations[c]``: C-contiguous arrays
    of that column's row type, filled one after the other, each with as many
    rows as it holds (together ``len(slots)``)."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    if _core is not None:
        _core.gather(sources, slots, destinations)
        return
    for source, targets in zip(sources, destinations, strict=True):
        if slots.size and (int(slots.min()) < 0 or int(slots.max()) >= len(source)):
            raise IndexError(f"gather: a slot is outside a ring of {len(source)} rows")
        done = 0
        for target in targets:
            n = len(target)
            # checked above: ``clip`` lets ``take`` write ``out`` directly (``raise`` buffers it)
            np.take(source, slots[done : done + n], axis=0, out=target, mode="clip")
            done += n
        if done != slots.size:
            raise ValueError(f"gather: destinations hold {done} rows for {slots.size} slots")


def pread_ranges(
    fds: np.ndarray | int,
    offsets: np.ndarray,
    sizes: np.ndarray,
    destination: memoryview,
    positions: np.ndarray | None = None,
) -> tuple[int, int] | None:
    """Byte ranges into ``destination``: range ``i`` is ``sizes[i]`` bytes at
    ``offsets[i]`` of file descriptor ``fds[i]`` (one descriptor for all when
    ``fds`` is an int), written at byte ``positions[i]`` (back to back from 0
    when ``positions`` is ``None``). A read job covering many shards is thus
    one call. ``None`` when every byte was read; ``(i, done)`` when a file
    ended inside range ``i`` after ``done`` of its bytes (the caller names the
    file: it knows it). A failed read raises ``OSError``."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    if isinstance(fds, int):
        fds = np.full(offsets.shape, fds, dtype=np.int64)
    else:
        fds = np.ascontiguousarray(fds, dtype=np.int64)
    if positions is None:
        positions = np.cumsum(sizes) - sizes
        if int(sizes.sum()) != len(destination):
            raise ValueError(f"pread_ranges: ranges hold {int(sizes.sum())} bytes, the destination {len(destination)}")
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    if _core is not None:
        found: tuple[int, int] | None = _core.pread_ranges(fds, offsets, sizes, destination, positions)
        return found
    if not (fds.shape == offsets.shape == sizes.shape == positions.shape):
        raise ValueError("pread_ranges: fds, offsets, sizes and positions must have one length")
    outside = (positions < 0) | (positions + sizes > len(destination))
    bad = np.flatnonzero((sizes < 0) | (offsets < 0) | (fds < 0) | outside)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"pread_ranges: range {i} (fd {int(fds[i])}, offset {int(offsets[i])}, size {int(sizes[i])}, "
            f"at {int(positions[i])}) does not fit a destination of {len(destination)} bytes"
        )
    for i, (fd, offset, size, at) in enumerate(zip(fds.tolist(), offsets.tolist(), sizes.tolist(), positions.tolist())):
        done = 0
        while done < size:
            n = os.preadv(fd, [destination[at + done : at + size]], offset + done)
            if n == 0:
                return i, done
            done += n
    return None
