"""Where a conversion writes: a local directory, or a prefix on object storage.

Both hold the same names: ``part-*`` shards, ``manifest.json`` written last
(the commit point: ``open_dataset`` refuses a DEST holding the journal or
temporary names but no manifest) and ``.convert-journal.jsonl`` until then.

* :class:`LocalDest`: shard tasks write ``DEST/.tmp-<name>`` and rename it into
  place; the manifest goes through a temporary file, fsync and ``os.replace``.
* :class:`RemoteDest` (``s3://``, ``gs://``, ``memory://`` ...): object storage
  has no rename, so tasks write into a local work directory (removed at the
  end, success or failure) and each finished shard is uploaded object by
  object under its final names. A PUT is atomic, so no object is ever partial;
  a shard counts only once the journal lists it, and the manifest, one PUT
  written last, commits the whole. A shard whose upload fails has its objects
  removed. The journal is rewritten whole at each event (no append on object
  storage). Staging (CSV, shuffle pass 1) lives in the work directory, so a
  ``--resume`` stages again (deterministically) and skips the uploaded shards.

Every remote request goes through the path's retry policy (``FileSystemPath.call``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

from ..sources._fs import FileSystemPath
from ..sources._manifest import MANIFEST_NAME
from ._journal import JOURNAL_NAME, Journal
from ._shards import TMP_PREFIX, ConvertWriteError, fsync_dir, remove_path

__all__ = ["LocalDest", "RemoteDest", "open_dest"]

STAGE = TMP_PREFIX + "stage"


def open_dest(location: FileSystemPath) -> LocalDest | RemoteDest:
    return LocalDest(location.path) if location.is_local else RemoteDest(location)


class LocalDest:
    """A local directory: tasks write straight into it."""

    is_local = True

    def __init__(self, path: str) -> None:
        self.path = self.url = self.work = path
        self.stage = os.path.join(path, STAGE)
        self.journal: Journal | RemoteJournal = Journal(os.path.join(path, JOURNAL_NAME))
        self.created = False

    def prepare(self) -> list[str]:
        """Create DEST if needed; the names it holds."""
        self.created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        return os.listdir(self.path)

    def read_json(self, name: str) -> dict[str, Any]:
        with open(os.path.join(self.path, name), encoding="utf-8") as f:
            return json.load(f)

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name))

    def size(self, rel: str) -> int:
        return os.path.getsize(os.path.join(self.path, rel))

    def remove(self, rel: str) -> None:
        remove_path(os.path.join(self.path, rel))

    def publish(self, entry: dict[str, Any]) -> None:
        """A finished shard: already renamed into place by its task."""

    def write_manifest(self, text: str) -> None:
        path = os.path.join(self.path, MANIFEST_NAME)
        tmp = os.path.join(self.path, TMP_PREFIX + MANIFEST_NAME)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            remove_path(tmp)
            raise ConvertWriteError(e.errno, f"writing the manifest {path} failed: {e.strerror or e}") from e
        fsync_dir(self.path)

    def remove_temporaries(self, keep_stage: bool = False) -> None:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(TMP_PREFIX) and not (keep_stage and name == STAGE):
                remove_path(os.path.join(self.path, name))

    def remove_if_created(self) -> None:
        """Remove DEST itself if this conversion created it and it is empty again."""
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def close(self) -> None:
        """Nothing outlives a local conversion but DEST."""


class RemoteDest:
    """A prefix on object storage (see the module doc)."""

    is_local = False

    def __init__(self, location: FileSystemPath) -> None:
        self.location = location
        self.path = location.path.rstrip("/")
        self.url = location.url.rstrip("/")
        # one work directory per DEST, so that the next run removes what a killed one left
        digest = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]
        self.work = os.path.join(tempfile.gettempdir(), f"streambatch-convert-{digest}")
        self.stage = os.path.join(self.work, STAGE)
        self.journal = RemoteJournal(self._child(JOURNAL_NAME))
        self.created = False
        #: DEST held objects when the run started (--overwrite, --resume): a shard's
        #: old objects are deleted before it is uploaded, so none of a previous
        #: layout (another chunking, another column set) stays under its name.
        self.replace_existing = False

    def _child(self, rel: str) -> FileSystemPath:
        return self.location.child(f"{self.path}/{rel}")

    def prepare(self) -> list[str]:
        """Empty the work directory (a killed run's leftovers); the names under DEST."""
        remove_path(self.work)
        os.makedirs(self.work)
        names = self._names()
        self.replace_existing = bool(names)
        return names

    def _names(self) -> list[str]:
        fs = self.location.fs
        fs.invalidate_cache(self.path)
        try:
            entries = self.location.ls()
        except FileNotFoundError:
            return []
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return [n for n in names if n not in ("", ".", "..")]

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads(self._child(name).read_bytes().decode("utf-8"))

    def exists(self, name: str) -> bool:
        return self._child(name).exists()

    def size(self, rel: str) -> int:
        return self._child(rel).size()

    def remove(self, rel: str) -> None:
        target = self._child(rel)

        def rm() -> None:
            with contextlib.suppress(FileNotFoundError):
                target.fs.rm(target.path, recursive=True)

        target.call(rm, "delete")

    def publish(self, entry: dict[str, Any]) -> None:
        """Upload the finished shard ``entry`` from the work directory, object by
        object under its final names; on failure its uploaded objects are removed."""
        try:
            if self.replace_existing:
                self.remove(entry["path"])
            for f in entry["files"]:
                local = os.path.join(self.work, f["path"])
                target = self._child(f["path"])
                target.call(functools.partial(target.fs.put_file, local, target.path), "upload")
        except BaseException:
            with contextlib.suppress(Exception):  # the upload error is the one to report
                self.remove(entry["path"])
            raise
        finally:
            remove_path(os.path.join(self.work, entry["path"]))

    def write_manifest(self, text: str) -> None:
        target = self._child(MANIFEST_NAME)
        target.call(lambda: target.fs.pipe_file(target.path, text.encode("utf-8")), "manifest upload")

    def remove_temporaries(self, keep_stage: bool = False) -> None:
        for name in self._names():
            if name.startswith(TMP_PREFIX):
                self.remove(name)
        for name in os.listdir(self.work) if os.path.isdir(self.work) else []:
            if not (keep_stage and name == STAGE):
                remove_path(os.path.join(self.work, name))

    def remove_if_created(self) -> None:
        """Object storage has no directories to remove."""

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class RemoteJournal:
    """:class:`Journal` on object storage: the same lines, rewritten whole at each event."""

    def __init__(self, location: FileSystemPath) -> None:
        self.location = location
        self.path = location.url
        self._lines: list[str] = []

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        try:
            text = self.location.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None, []
        records = []
        for line in text.split("\n"):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
        self._lines = [json.dumps(r, sort_keys=True) for r in records]
        if not records:
            return None, []
        return records[0], records[1:]

    def start(self, header: dict[str, Any]) -> None:
        self._lines = [json.dumps(header, sort_keys=True)]
        self._write()

    def append(self, event: dict[str, Any]) -> None:
        self._lines.append(json.dumps(event, sort_keys=True))
        self._write()

    def _write(self) -> None:
        data = ("\n".join(self._lines) + "\n").encode("utf-8")
        loc = self.location
        loc.call(lambda: loc.fs.pipe_file(loc.path, data), "journal upload")

    def remove(self) -> None:
        loc = self.location

        def rm() -> None:
            with contextlib.suppress(FileNotFoundError):
                loc.fs.rm(loc.path)

        loc.call(rm, "delete")
