"""A local disk cache of remote files (``cache_dir=`` / ``cache_limit=``).

What is cached
    Whole remote files: a ``.npy`` column file, a Parquet file, a Zarr chunk or
    shard object. The first read of any byte range of a file downloads the whole
    file (in ``_BLOCK``-sized requests, each retried) and every later read of that
    file is a positional read of the local copy. Whole files rather than aligned
    blocks because a shuffled epoch reads every byte of every file anyway; because
    the sha256 a ``streambatch convert`` manifest records is of the whole file, so
    only a whole file can be checked against it; and because one file is one
    entry, published by one atomic rename, with nothing else to keep consistent.
    A file larger than ``cache_limit`` is not cached (read remotely, as without
    a cache). Local paths are never cached.

Layout of ``cache_dir`` (``v1/`` so that a later layout can live beside it)
    ``v1/<key>.entry``  the file's bytes followed by a 40-byte trailer
                        (``SBCACHE1`` + the sha256 of the bytes);
    ``v1/<key>.lock``   ``flock``-ed while one process downloads ``<key>``;
    ``v1/tmp/<key>.<pid>.<random>.part``  a download in progress.

    ``key`` hashes what identifies the remote bytes: the URL (protocol, endpoint,
    path; never credentials), its size and its version (the manifest's sha256
    when the dataset has a manifest, else the ETag or modification time the
    storage reports). A file changed remotely gets a new key; its old entry is
    never read again and ages out.

Integrity
    A download is written to a temporary name, its size checked against the
    storage's (or the manifest's), hashed while written, checked against the
    manifest's sha256 when there is one, fsync-ed, then ``os.replace``-d to its
    entry name: an entry name only ever holds a complete file, whatever kills
    the process mid-download. An entry is checked before use: its size (every
    time a cache object first opens it) and its sha256 (the trailer's, and the
    manifest's when known), recomputed the first time each cache object -- each
    ``open_dataset``/``Loader`` -- uses an entry it did not download itself. A
    failed check removes the entry and downloads the file again; so does a
    local read that comes back short (an entry truncated while in use).

Several processes on one host
    There is no shared index to corrupt: the directory listing is the index and
    every entry appears by an atomic rename. A per-key ``flock`` makes one
    process download a file while the others wait for it (they poll, so a
    stuck holder delays them by at most ``_LOCK_WAIT`` before they download it
    themselves); correctness never depends on the locks, only on the renames.
    Eviction is least-recently-used by modification time, which a use refreshes
    (at most every ``_TOUCH_EVERY`` seconds); an entry removed while another
    process reads it stays readable through that process's open descriptor, and
    its next open finds it missing and downloads it again. Temporary files of
    processes that no longer exist are removed by the next eviction pass.

fsspec's ``simplecache``/``filecache``/``blockcache`` are not used: they share
a JSON index that concurrent processes corrupt (fsspec#471, #1107, #1126), a
reader of ``simplecache`` can see a partly written file (fsspec#639), and none
evicts to a byte limit.

``cache_limit`` bounds the entries (data plus trailer). Downloads in flight add
at most one file per downloading thread until they are published and the
oldest entries evicted; a full disk turns a download into a remote read.
At most ``_DOWNLOADS`` files are downloaded at once per cache object, each
holding one ``_BLOCK`` in memory: 32 MiB outside the loader's memory budget.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CorruptInputError
from ._fs import ReadOnlyFile
from ._retry import ShortReadError, call_with_retry, check_stopped, independent_retries, read_exactly, redact

try:  # POSIX; elsewhere only the atomic renames protect the entries (still correct)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ._fs import FileSystemPath

__all__ = ["FileCache"]

logger = logging.getLogger("streambatch")
_T = TypeVar("_T")

_MAGIC = b"SBCACHE1"
_TRAILER = len(_MAGIC) + 32
#: Bytes per download request (and the most a download holds in memory).
_BLOCK = 8 << 20
#: Downloads at once per cache object: what they hold in memory, outside the
#: loader's budget, is at most ``_DOWNLOADS * _BLOCK`` (32 MiB).
_DOWNLOADS = 4
#: How long a process waits for another's download of the same file before it
#: downloads the file itself.
_LOCK_WAIT = 120.0
_LOCK_POLL = 0.02
#: A use refreshes an entry's modification time (its LRU age) at most this often.
_TOUCH_EVERY = 10.0
_DISK_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


@dataclass(frozen=True)
class _Identity:
    """What the cache knows of one remote file."""

    key: str
    size: int
    sha256: str | None  # the manifest's, when the dataset has one


class FileCache:
    """Whole remote files kept under ``directory``, at most ``limit`` bytes of
    entries (``None``: no limit). Thread-safe; holds no open file between calls
    and starts no thread. ``stats`` counts ``hits``, ``downloads``, ``rejected``
    (entries that failed a check) and ``bypassed`` (reads not cached).
    """

    def __init__(self, directory: str | os.PathLike[str], limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise ValueError(f"cache_limit must be a positive number of bytes or None, got {limit!r}")
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.limit = limit
        self._root = os.path.join(self.directory, "v1")
        self._tmp = os.path.join(self._root, "tmp")
        os.makedirs(self._tmp, exist_ok=True)
        self._expected: dict[str, tuple[int, str]] = {}  # remote URL -> (size, sha256) from a manifest
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._identities: dict[str, _Identity] = {}
        self._verified: dict[str, float] = {}  # key -> when its mtime was last refreshed
        self._key_locks: dict[str, threading.Lock] = {}
        self._too_large: set[str] = set()
        self._downloads = threading.BoundedSemaphore(_DOWNLOADS)
        self._corrupt: dict[str, str] = {}  # key -> why: remote files that failed the manifest's sha256
        self.stats = {"hits": 0, "downloads": 0, "rejected": 0, "bypassed": 0}

    def __getstate__(self) -> dict[str, Any]:  # workers rebuild the in-memory state
        return {"directory": self.directory, "limit": self.limit, "expected": dict(self._expected)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory, self.limit = state["directory"], state["limit"]
        self._root = os.path.join(self.directory, "v1")
        self._tmp = os.path.join(self._root, "tmp")
        os.makedirs(self._tmp, exist_ok=True)
        self._expected = state["expected"]
        self._reset()

    def __repr__(self) -> str:
        return f"FileCache({self.directory!r}, limit={self.limit!r})"

    # ------------------------------------------------------------ public API
    def expect(self, location: FileSystemPath, size: int, sha256: str) -> None:
        """Record a file's size and sha256 (from a manifest): its entry is checked
        against them, and no ``info`` request is needed to identify it."""
        self._expected[_url_of(location)] = (int(size), str(sha256))

    def known_size(self, location: FileSystemPath) -> int | None:
        """The file's size if this cache has identified the file already (no request)."""
        url = _url_of(location)
        ident = self._identities.get(url)
        if ident is not None:
            return ident.size
        expected = self._expected.get(url)
        return None if expected is None else expected[0]

    def cat(self, location: FileSystemPath, start: int | None, end: int | None) -> bytes | None:
        """Bytes ``[start, end)`` of the remote file (fsspec's ``cat_file`` rules for
        ``None`` and negative bounds) read from its local copy, downloaded first if
        needed; ``None`` when the file is not cached (too large, disk full): the
        caller reads it remotely."""
        result = self.cat_ranges(location, [start], [end])
        return None if result is None else result[0]

    def cat_ranges(
        self, location: FileSystemPath, starts: list[int | None], ends: list[int | None]
    ) -> list[bytes] | None:
        """Several ranges of one file, as :meth:`cat`."""
        return self._use_entry(location, lambda path, ident: self._pread(path, ident, starts, ends))

    def open(self, location: FileSystemPath) -> _EntryFile | None:
        """A read-only file object over the local copy of the remote file (downloaded
        first if needed), of the remote file's size: for readers that read through a
        file (streamed Parquet row groups). ``None`` when the file is not cached (too
        large, disk full): the caller opens it remotely. A read that comes back short
        (the entry was cut while in use) removes the entry and raises a transient
        ``ShortReadError``: a retry opens the file again, which downloads it again."""

        def entry_file(path: str, ident: _Identity) -> _EntryFile:
            return _EntryFile(self, os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)), path, ident)

        return self._use_entry(location, entry_file)

    def _use_entry(self, location: FileSystemPath, use: Callable[[str, _Identity], _T]) -> _T | None:
        """``use(path, ident)`` on the local copy of ``location`` (downloaded first if
        needed). An entry another process evicted (or cut) since it was checked is
        dropped and fetched again, up to three times; then, or when the file is not
        cached at all, ``None``: the caller reads remotely."""
        for _attempt in range(3):
            entry = self._entry(location)
            if entry is None:
                return None
            path, ident = entry
            try:
                return use(path, ident)
            except FileNotFoundError:  # evicted by another process since it was checked
                self._forget(ident.key)
            except _TruncatedEntry:
                self._reject(path, ident.key, "shorter than when it was checked")
        logger.info("%s: its cache entry kept disappearing (evicted by others): read remotely", location.url)
        with self._lock:
            self.stats["bypassed"] += 1
        return None

    # ------------------------------------------------------------ entries
    def _entry(self, location: FileSystemPath) -> tuple[str, _Identity] | None:
        ident = self._identity(location)
        if ident is None:
            return None
        path = os.path.join(self._root, f"{ident.key}.entry")
        checked = self._verified.get(ident.key)
        if checked is not None:
            now = time.monotonic()
            if now - checked >= _TOUCH_EVERY:
                self._touch(path, ident.key, now)
            with self._lock:
                self.stats["hits"] += 1
            return path, ident
        with self._key_lock(ident.key):
            if ident.key not in self._verified:
                if not self._check(path, ident):
                    with self._host_lock(ident.key):
                        if not self._check(path, ident):  # another process may have fetched it meanwhile
                            if ident.key in self._corrupt:  # not downloaded twice more by every reader
                                raise CorruptInputError(self._corrupt[ident.key])
                            if not self._download(location, ident, path):
                                return None
                            self._evict(keep=ident.key)
            else:
                with self._lock:
                    self.stats["hits"] += 1
        return path, ident

    def _identity(self, location: FileSystemPath) -> _Identity | None:
        url = _url_of(location)
        ident = self._identities.get(url)
        if ident is not None:
            return ident
        if url in self._too_large:
            with self._lock:
                self.stats["bypassed"] += 1
            return None
        expected = self._expected.get(url)
        if expected is not None:
            size, sha = expected
            version = f"sha256:{sha}"
        else:
            info = location.info()  # retried; one request per file and cache object
            size, sha = int(info["size"]), None
            version = _version_of(info)
        if self.limit is not None and size + _TRAILER > self.limit:
            logger.info(
                "%s: %d bytes, larger than cache_limit=%d: read remotely, not cached", location.url, size, self.limit
            )
            with self._lock:
                self._too_large.add(url)
                self.stats["bypassed"] += 1
            return None
        described = json.dumps([url, _endpoint_of(location), size, version])
        key = hashlib.sha256(described.encode()).hexdigest()[:40]
        ident = _Identity(key, size, sha)
        with self._lock:
            self._identities[url] = ident
        return ident

    def _check(self, path: str, ident: _Identity) -> bool:
        """Whether the entry at ``path`` exists and holds ``ident``'s bytes; a bad
        entry is removed. Marks a good one verified (and refreshes its age)."""
        try:
            with open(path, "rb") as f:
                actual = os.fstat(f.fileno()).st_size
                if actual != ident.size + _TRAILER:
                    reason = f"{actual} bytes, expected {ident.size + _TRAILER}"
                else:
                    f.seek(ident.size)
                    trailer = f.read(_TRAILER)
                    recorded = trailer[len(_MAGIC) :].hex()
                    if trailer[: len(_MAGIC)] != _MAGIC:
                        reason = "no trailer"
                    elif ident.sha256 is not None and recorded != ident.sha256:
                        reason = "sha256 differs from the manifest's"
                    else:
                        f.seek(0)
                        reason = "" if _sha256_of(f, ident.size) == recorded else "sha256 differs from its trailer"
        except FileNotFoundError:
            return False
        if reason:
            self._reject(path, ident.key, reason)
            return False
        self._touch(path, ident.key, time.monotonic())
        with self._lock:
            self.stats["hits"] += 1
        return True

    def _reject(self, path: str, key: str, reason: str) -> None:
        logger.warning("cache entry %s is damaged (%s): removed, the file is downloaded again", path, reason)
        self._forget(key)
        with self._lock:
            self.stats["rejected"] += 1
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._verified.pop(key, None)

    def _touch(self, path: str, key: str, now: float) -> None:
        try:
            os.utime(path)
        except FileNotFoundError:
            self._forget(key)
            return
        with self._lock:
            self._verified[key] = now

    def _pread(self, path: str, ident: _Identity, starts: list[int | None], ends: list[int | None]) -> list[bytes]:
        size = ident.size
        out = []
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            for start, end in zip(starts, ends):
                lo, hi = _bounds(start, end, size)
                data = os.pread(fd, hi - lo, lo) if hi > lo else b""
                while len(data) < hi - lo:  # pread may return less than asked: read on
                    more = os.pread(fd, hi - lo - len(data), lo + len(data))
                    if not more:
                        raise _TruncatedEntry(path)
                    data += more
                out.append(data)
        finally:
            os.close(fd)
        return out

    # ------------------------------------------------------------ download
    def _download(self, location: FileSystemPath, ident: _Identity, path: str) -> bool:
        """The remote file into a temporary file, checked, then renamed to ``path``.
        False when it cannot be stored (disk full): the caller reads remotely."""
        with self._downloads:
            try:
                return self._download_now(location, ident, path)
            except _ChecksumMismatch:  # damaged in transit? once more, then it is the file
                try:
                    return self._download_now(location, ident, path)
                except _ChecksumMismatch as e:
                    with self._lock:
                        self._corrupt[ident.key] = str(e)
                    raise CorruptInputError(str(e)) from None

    def _download_now(self, location: FileSystemPath, ident: _Identity, path: str) -> bool:
        tmp = os.path.join(self._tmp, f"{ident.key}.{os.getpid()}.{secrets.token_hex(4)}.part")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                done = 0
                with independent_retries():  # each block retried on its own, even inside a retried read
                    while done < ident.size:
                        hi = min(ident.size, done + _BLOCK)
                        block = _fetch(location, done, hi)
                        digest.update(block)
                        f.write(block)
                        done = hi
                        del block
                sha = digest.hexdigest()
                if ident.sha256 is not None and sha != ident.sha256:
                    raise _ChecksumMismatch(
                        f"{location.url}: downloaded twice, {ident.size} bytes whose sha256 differs from the "
                        "manifest's both times: the file changed since the dataset was written, or is damaged"
                    )
                f.write(_MAGIC + digest.digest())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            _remove_quietly(tmp)
            if e.errno in _DISK_FULL:
                logger.warning("cache %s is full (%s): %s is read remotely", self.directory, e, location.url)
                with self._lock:
                    self.stats["bypassed"] += 1
                return False
            raise
        except BaseException:
            _remove_quietly(tmp)
            raise
        with self._lock:
            self.stats["downloads"] += 1
            self._verified[ident.key] = time.monotonic()
        return True

    # ------------------------------------------------------------ eviction
    def _evict(self, keep: str) -> None:
        """Remove the least recently used entries until the rest fit ``limit``
        (never ``keep``, the one just stored), and temporary files of processes
        that are gone. One process evicts at a time; the others skip the pass."""
        with self._host_lock("evict", wait=False) as held:
            if not held:
                return
            self._remove_orphans()
            if self.limit is None:
                return
            entries = []
            with os.scandir(self._root) as listing:
                for e in listing:
                    if e.name.endswith(".entry"):
                        with contextlib.suppress(FileNotFoundError):
                            st = e.stat()
                            entries.append((st.st_mtime, e.name, st.st_size))
            total = sum(size for _, _, size in entries)
            for _, name, size in sorted(entries):
                if total <= self.limit:
                    break
                key = name[: -len(".entry")]
                if key == keep:
                    continue
                _remove_quietly(os.path.join(self._root, name))
                _remove_quietly(os.path.join(self._root, f"{key}.lock"))
                self._forget(key)
                total -= size

    def _remove_orphans(self) -> None:
        with os.scandir(self._tmp) as listing:
            names = [e.name for e in listing if e.name.endswith(".part")]
        for name in names:
            try:
                pid = int(name.split(".")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _alive(pid):
                _remove_quietly(os.path.join(self._tmp, name))

    # ------------------------------------------------------------ locks
    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def _host_lock(self, key: str, wait: bool = True) -> Iterator[bool]:
        """An exclusive ``flock`` on ``v1/<key>.lock`` across the processes of the host;
        yields whether it is held (False: ``wait=False`` and taken, or given up on
        after ``_LOCK_WAIT`` s, or no ``fcntl``)."""
        if fcntl is None:
            yield False
            return
        fd = os.open(os.path.join(self._root, f"{key}.lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0))
        try:
            held = False
            deadline = time.monotonic() + _LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if not wait or time.monotonic() >= deadline:
                        break
                    check_stopped()  # the loader was closed: stop waiting for another's download
                    time.sleep(_LOCK_POLL)
            yield held
        finally:
            os.close(fd)  # releases the lock


class _EntryFile(ReadOnlyFile):
    """A cache entry opened as a read-only file of the remote file's size (the
    trailer is not part of it), read with ``pread``; one reader at a time."""

    def __init__(self, cache: FileCache, fd: int, path: str, ident: _Identity) -> None:
        super().__init__(ident.size)
        self._cache, self._fd, self._path, self._ident = cache, fd, path, ident

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError(f"{self._path}: read of a closed cache entry")
        lo, hi = _bounds(self._pos, None if n is None or n < 0 else self._pos + n, self._size)
        data = os.pread(self._fd, hi - lo, lo) if hi > lo else b""
        while len(data) < hi - lo:
            more = os.pread(self._fd, hi - lo - len(data), lo + len(data))
            if not more:
                self._cache._reject(self._path, self._ident.key, "shorter than when it was checked")
                raise ShortReadError(f"{self._path}: cache entry cut short at byte {lo + len(data)}: read again")
            data += more
        self._pos = hi
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


class _ChecksumMismatch(Exception):
    """A download whose sha256 is not the manifest's (raised as ``CorruptInputError``)."""


class _TruncatedEntry(OSError):
    """A local read of an entry came back short: it was cut after its check."""


def _fetch(location: FileSystemPath, lo: int, hi: int) -> bytes:
    def attempt() -> bytes:
        return read_exactly(location.remote_cat_file(lo, hi), hi - lo, f"{location.url} bytes {lo}:{hi}")  # type: ignore[return-value]

    return call_with_retry(
        attempt, location.retry, f"{location.url} bytes {lo}:{hi} (cache download)", secrets=location.secrets
    )


def _bounds(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """``[start, end)`` resolved as fsspec's ``cat_file`` does (negative from the end), clipped."""
    lo = 0 if start is None else (start + size if start < 0 else start)
    hi = size if end is None else (end + size if end < 0 else end)
    lo, hi = max(0, min(lo, size)), max(0, min(hi, size))
    return lo, max(lo, hi)


def _sha256_of(f: Any, size: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest.hexdigest() if left == 0 else ""


def _url_of(location: FileSystemPath) -> str:
    if location.is_local:
        return location.path
    return redact(location.fs.unstrip_protocol(location.path), location.secrets)


def _endpoint_of(location: FileSystemPath) -> str:
    """The storage endpoint (S3-compatible servers), so that one bucket name on two
    servers does not share entries."""
    options = getattr(location.fs, "storage_options", None) or {}
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return str(endpoint or getattr(location.fs, "endpoint_url", "") or "")


def _version_of(info: dict[str, Any]) -> str:
    for name in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "created"):
        value = info.get(name)
        if value is not None:
            return f"{name}:{value}"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
