"""Path handling shared by every format: local paths take the fast OS route,
anything with a protocol (``s3://``, ``memory://`` ...) goes through fsspec.

Every metadata request on a remote path (``info``, ``exists``, ``isdir``,
``size``, listings, globs, small whole reads such as headers and manifests) is
sent through :func:`~._retry.call_with_retry` with the path's ``RetryPolicy``,
like data reads: a transient failure is sent again, a permanent one (not found,
permission) is raised at once naming the URL.

On an asynchronous filesystem (s3fs, gcsfs, HTTP) each request is fsspec's
coroutine, run on the filesystem's event loop and waited for by
:func:`~._retry.run_on_loop`: cancelled when ``RetryPolicy.timeout`` expires,
and when the pool of the calling thread stops, so a request to a server that
went silent never holds ``close()``.

``exists``/``isdir`` ask ``info`` and classify what it raises, rather than
calling fsspec's ``exists``/``isdir``, which turn *any* exception (a connection
reset included) into ``False``, so a file that exists could be reported
missing after one failed request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

from ..errors import SourceNotFoundError
from ._retry import RetryPolicy, call_with_retry, redact, run_on_loop, secrets_of

if TYPE_CHECKING:
    from ._cache import FileCache

__all__ = ["FileSystemPath", "ReadOnlyFile", "list_directory", "resolve"]

T = TypeVar("T")

#: Permanent errors re-raised with the URL in the message (same type, so
#: ``except FileNotFoundError`` keeps working).
_NAMED_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class FileSystemPath:
    """A path together with the filesystem that serves it.

    ``url`` is for messages: ``user:password@`` and every credential of the
    filesystem's ``storage_options`` are redacted from it; ``secrets`` lists those
    credentials so that error texts from the storage can be redacted too.

    ``retry`` is the policy of every remote request made through this path
    (``None``: ``RetryPolicy()``); ``child`` paths share it.

    ``cache`` (remote paths only; see :mod:`._cache`): data reads (``cat_file``,
    ``cat_ranges``) are served from a local copy of the whole file, downloaded
    on first use; ``child`` paths share it."""

    __slots__ = ("cache", "fs", "path", "retry", "secrets", "url")

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        path: str,
        url: str,
        retry: RetryPolicy | None = None,
        cache: FileCache | None = None,
    ) -> None:
        self.fs = fs
        self.path = path
        self.retry = retry
        self.cache = None if _is_local_fs(fs) else cache
        self.secrets: tuple[str, ...] = () if _is_local_fs(fs) else secrets_of(getattr(fs, "storage_options", None))
        self.url = redact(url, self.secrets)

    @property
    def is_local(self) -> bool:
        return _is_local_fs(self.fs)

    def child(self, path: str) -> FileSystemPath:
        """The same filesystem at another (absolute, protocol-less) path."""
        url = path if self.is_local else self.fs.unstrip_protocol(path)
        return FileSystemPath(self.fs, path, url, self.retry, self.cache)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, a request about this path: retried on transient errors when
        the path is remote (local calls run once). ``what`` names the request
        in messages (``"footer"``, ``"listing"``); a not-found or permission
        error is raised at once, with the same type, naming the URL."""
        if self.is_local:
            return fn()
        try:
            return call_with_retry(fn, self.retry, f"{self.url} ({what})", secrets=self.secrets)
        except _NAMED_PERMANENT as e:
            if self.url in str(e):
                raise
            detail = redact(str(e.strerror or e), self.secrets)
            message = f"{self.url} ({what}): {detail}"
            named = type(e)(e.errno, message) if e.errno else type(e)(message)
            raise named from (e if detail == str(e.strerror or e) else None)

    @property
    def timeout(self) -> float | None:
        """The policy's per-request timeout (``RetryPolicy.timeout``), if any."""
        return None if self.retry is None else self.retry.timeout

    def _request(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<method>(*args, **kwargs)``, one request. When fsspec made that method
        from a coroutine (an asynchronous filesystem: the synchronous wrapper is set
        on the instance), the coroutine itself runs on the filesystem's loop, bounded
        by ``timeout`` and cancelled if the calling thread's pool stops; a
        synchronous filesystem's call cannot be cancelled and runs as it is."""
        fs = self.fs
        if not self._is_async(method):
            return getattr(fs, method)(*args, **kwargs)
        return run_on_loop(getattr(fs, f"_{method}")(*args, **kwargs), fs.loop, self.timeout)

    def _is_async(self, method: str) -> bool:
        return not self.is_local and method in vars(self.fs) and hasattr(self.fs, f"_{method}")

    def cat_file(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` in one request (bounded by ``timeout``; not retried here).
        With a ``cache``: from the local copy (the first read downloads the whole
        file, each of its requests retried)."""
        if self.cache is not None:
            data = self.cache.cat(self, start, end)
            if data is not None:
                return data
        return self.remote_cat_file(start, end)

    def remote_cat_file(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` from the storage itself, never the cache."""
        return self._request("cat_file", self.path, start=start, end=end)

    def cat_ranges(self, starts: list[int], ends: list[int]) -> list[Any]:
        """Several ranges in one call (concurrent on async filesystems); a failed
        range comes back as its exception; ``timeout`` bounds the whole call.
        With a ``cache``: from the local copy, as ``cat_file``."""
        if self.cache is not None:
            cached = self.cache.cat_ranges(self, list(starts), list(ends))
            if cached is not None:
                return cached
        if self._is_async("cat_file"):
            # one gather of fsspec's coroutines rather than its ``_cat_ranges``, whose
            # requests outlive a cancelled call (it waits on tasks it does not cancel)
            fs, path = self.fs, self.path

            async def gather() -> list[Any]:
                reads = (fs._cat_file(path, start=s, end=e) for s, e in zip(starts, ends))
                return await asyncio.gather(*reads, return_exceptions=True)

            return run_on_loop(gather(), fs.loop, self.timeout)
        paths = [self.path] * len(starts)
        return self._request("cat_ranges", paths, starts, ends, on_error="return")

    def info(self) -> dict[str, Any]:
        """fsspec's ``info`` of the path (``FileNotFoundError`` when it is absent)."""
        if self.is_local:
            return self.fs.info(self.path)
        return self.call(lambda: self._request("info", self.path), "metadata")

    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.path)
        try:
            self.info()
        except FileNotFoundError:
            return False
        return True

    def isdir(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.path)
        try:
            return self.info().get("type") == "directory"
        except (FileNotFoundError, NotADirectoryError):
            return False

    def size(self) -> int:
        if self.is_local:
            return os.path.getsize(self.path)
        known = None if self.cache is None else self.cache.known_size(self)
        if known is not None:  # identified by the cache (or a manifest): no request
            return known
        return int(self.call(lambda: self._request("size", self.path), "size"))

    def ls(self) -> list[dict[str, Any]]:
        """The entries directly under this directory, with details."""
        return self.call(lambda: self._request("ls", self.path, detail=True), "listing")

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The file's bytes (its first ``limit`` bytes), read whole in one retried
        request: for headers and small documents, not for data."""

        def read() -> bytes:
            with self.fs.open(self.path, "rb") as f:
                return f.read() if limit is None else f.read(limit)

        return self.call(read, "read") if not self.is_local else read()

    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        return self.url


def _is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def resolve(
    source: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    cache: FileCache | None = None,
) -> FileSystemPath:
    """Split a path or URL into (filesystem, path); local paths become absolute.
    ``retry`` is the policy of the remote requests made through the result;
    ``cache`` keeps the data it reads (remote paths only)."""
    text = os.fspath(source)
    fs, path = url_to_fs(text, **(storage_options or {}))
    if _is_local_fs(fs):
        path = os.path.abspath(os.path.expanduser(path))
        return FileSystemPath(fs, path, path, retry)
    return FileSystemPath(fs, path, text, retry, cache)


def expand_glob(location: FileSystemPath) -> list[FileSystemPath]:
    """Every path a glob pattern matches, sorted; a clear error when none does."""
    matches = sorted(location.call(lambda: location._request("glob", location.path), "glob"))
    if not matches:
        raise SourceNotFoundError(f"glob {location.url!r} matched no files")
    return [location.child(m) for m in matches]


def list_directory(location: FileSystemPath) -> list[tuple[FileSystemPath, str]]:
    """``(entry, kind)`` for every entry directly in the directory ``location``, by
    name, with ``kind`` ``"file"``, ``"directory"`` or ``"other"``. Symbolic links
    are followed (fsspec's local listing reports a link as ``"other"``: datasets
    linked in from shared storage would otherwise look empty); a dangling link is
    ``"other"``."""
    entries = sorted(location.ls(), key=lambda e: e["name"])  # retried, like every request
    listed = []
    for e in entries:
        child = location.child(e["name"])
        kind = e.get("type", "other")
        if location.is_local and (kind == "other" or e.get("islink")):
            kind = "directory" if os.path.isdir(child.path) else "file" if os.path.isfile(child.path) else "other"
        listed.append((child, kind))
    return listed


class ReadOnlyFile:
    """The part of the file protocol that pyarrow and fsspec use on a read-only,
    seekable file of ``size`` bytes, besides ``read`` and ``close``, which each
    subclass implements over its own bytes (a cache entry, fetched ranges)."""

    closed = False

    def __init__(self, size: int) -> None:
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = (0, self._pos, self._size)[whence] + offset
        return self._pos
