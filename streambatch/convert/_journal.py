"""The progress journal of a conversion, ``DEST/.convert-journal.jsonl``.

Line 1 is the header (input fingerprint and parameters); every later line is an
event appended and fsynced once its effect is durable: ``staged`` (CSV staging
and shuffle pass 1 done) or ``shard`` (a shard renamed to its final name, with
its manifest entry). A line cut short by a crash is ignored. ``--resume`` reads
it to skip finished work; it refuses when the header differs."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from ..sources._manifest import JOURNAL_NAME  # one name: open_dataset refuses a DEST holding it

__all__ = ["JOURNAL_NAME", "Journal"]


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """``(header, events)``; ``(None, [])`` when there is no journal."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return None, []
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # torn last line of a crash
        if not records:
            return None, []
        return records[0], records[1:]

    def start(self, header: dict[str, Any]) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, event: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        for p in (self.path, self.path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
