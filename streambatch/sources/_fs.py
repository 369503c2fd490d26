"""Path handling shared by every format: local paths take the fast OS route,
anything with a protocol (``s3://``, ``memory://`` ...) goes through fsspec."""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from ..errors import SourceNotFoundError
from ._retry import redact, secrets_of

__all__ = ["FileSystemPath", "list_directory", "resolve"]


class FileSystemPath:
    """A path together with the filesystem that serves it.

    ``url`` is for messages: ``user:password@`` and every credential of the
    filesystem's ``storage_options`` are redacted from it; ``secrets`` lists those
    credentials so that error texts from the storage can be redacted too."""

    __slots__ = ("fs", "path", "secrets", "url")

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, url: str) -> None:
        self.fs = fs
        self.path = path
        self.secrets: tuple[str, ...] = () if _is_local_fs(fs) else secrets_of(getattr(fs, "storage_options", None))
        self.url = redact(url, self.secrets)

    @property
    def is_local(self) -> bool:
        return _is_local_fs(self.fs)

    def child(self, path: str) -> FileSystemPath:
        """The same filesystem at another (absolute, protocol-less) path."""
        url = path if self.is_local else self.fs.unstrip_protocol(path)
        return FileSystemPath(self.fs, path, url)

    def exists(self) -> bool:
        return os.path.exists(self.path) if self.is_local else self.fs.exists(self.path)

    def isdir(self) -> bool:
        return os.path.isdir(self.path) if self.is_local else self.fs.isdir(self.path)

    def size(self) -> int:
        return os.path.getsize(self.path) if self.is_local else int(self.fs.size(self.path))

    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        return self.url


def _is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def resolve(source: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> FileSystemPath:
    """Split a path or URL into (filesystem, path); local paths become absolute."""
    text = os.fspath(source)
    fs, path = url_to_fs(text, **(storage_options or {}))
    if _is_local_fs(fs):
        path = os.path.abspath(os.path.expanduser(path))
        return FileSystemPath(fs, path, path)
    return FileSystemPath(fs, path, text)


def expand_glob(location: FileSystemPath) -> list[FileSystemPath]:
    """Every path a glob pattern matches, sorted; a clear error when none does."""
    matches = sorted(location.fs.glob(location.path))
    if not matches:
        raise SourceNotFoundError(f"glob {location.url!r} matched no files")
    return [location.child(m) for m in matches]


def list_directory(location: FileSystemPath) -> list[tuple[FileSystemPath, str]]:
    """``(entry, kind)`` for every entry directly in the directory ``location``, by
    name, with ``kind`` ``"file"``, ``"directory"`` or ``"other"``. Symbolic links
    are followed (fsspec's local listing reports a link as ``"other"``: datasets
    linked in from shared storage would otherwise look empty); a dangling link is
    ``"other"``."""
    entries = sorted(location.fs.ls(location.path, detail=True), key=lambda e: e["name"])
    listed = []
    for e in entries:
        child = location.child(e["name"])
        kind = e.get("type", "other")
        if location.is_local and (kind == "other" or e.get("islink")):
            kind = "directory" if os.path.isdir(child.path) else "file" if os.path.isfile(child.path) else "other"
        listed.append((child, kind))
    return listed
