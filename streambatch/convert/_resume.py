"""What a conversion may do with ``DEST``: claim it (refuse a non-empty one unless
``overwrite`` or ``resume``), keep the shards an interrupted run journaled, and
after a failure either leave ``DEST`` as it was found or say how to finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptInputError, SchemaError, SourceNotFoundError
from ..sources._manifest import MANIFEST_NAME
from ..sources._retry import redact
from ._journal import JOURNAL_NAME
from ._options import ConvertError, ConvertOptions, ConvertResult

__all__ = ["Claim", "after_failure", "claim_dest"]

#: Errors that say the input is bad: fixing it changes the input fingerprint, so a
#: first run that fails with one leaves DEST as it found it (nothing to resume).
INPUT_ERRORS = (SchemaError, CorruptInputError, SourceNotFoundError)


@dataclass
class Claim:
    """``DEST`` as a run found it."""

    #: journaled shards to keep, by index (key -1 marks staging as done)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: DEST held nothing when this run claimed it
    fresh: bool = False
    #: shards of an overwritten conversion that the new one may not rewrite
    old_files: set[str] = field(default_factory=set)
    #: the result of a finished conversion (``resume`` over a complete DEST): nothing to do
    finished: ConvertResult | None = None


def claim_dest(target: Any, options: ConvertOptions, header: dict[str, Any]) -> Claim:
    """Check ``DEST`` against overwrite/resume and prepare it for this run."""
    dest, journal = target.url, target.journal
    entries = target.prepare()
    claim = Claim(fresh=not entries)
    ours = MANIFEST_NAME in entries or JOURNAL_NAME in entries
    if entries and not (options.overwrite or options.resume):
        raise FileExistsError(
            f"{dest} is not empty: pass --overwrite to replace a previous conversion, "
            "or --resume to finish an interrupted one"
        )
    if entries and not ours:
        raise FileExistsError(
            f"{dest} is not empty and holds no streambatch manifest or journal: "
            "refusing to write into it (choose an empty or new directory)"
        )
    if options.resume and MANIFEST_NAME in entries:
        manifest = target.read_json(MANIFEST_NAME)
        _check_same(dest, manifest.get("input", {}), header, f"{dest}/{MANIFEST_NAME}")
        claim.finished = ConvertResult(
            dest,
            manifest["rows"],
            len(manifest["shards"]),
            sum(s["bytes"] for s in manifest["shards"]),
            0.0,
            len(manifest["shards"]),
            manifest,
        )
        return claim
    previous, events = journal.read()
    if options.resume and previous is not None:
        _check_same(dest, previous, header, journal.path)
        done = claim.done
        for event in events:
            if event.get("event") == "staged":
                done[-1] = {}
            elif event.get("event") == "shard" and _shard_intact(target, event["entry"]):
                done[event["entry"]["index"]] = event["entry"]
        if not target.is_local:  # staging lived in a work directory that is gone: stage again
            done.pop(-1, None)
        elif -1 not in done:  # staging was interrupted: shuffle bucket files are incomplete
            done.clear()
        target.remove_temporaries(-1 in done)
        if not done:
            journal.start(header)
        return claim
    if options.overwrite:
        claim.old_files = {e["entry"]["path"] for e in events if e.get("event") == "shard"}
        if MANIFEST_NAME in entries:
            claim.old_files |= {e["path"] for e in target.read_json(MANIFEST_NAME).get("shards", [])}
            target.remove(MANIFEST_NAME)  # DEST is no longer a complete dataset from here on
    target.remove_temporaries(False)
    journal.start(header)
    return claim


def after_failure(target: Any, error: BaseException, claim: Claim, finished: int, written: list[str]) -> None:
    """Leave DEST as found when nothing can be kept (see ``convert``), else say how
    to finish. A failure of this clean-up never masks ``error``: it becomes a note."""
    dest = target.url
    notes = getattr(error, "add_note", None) if isinstance(error, Exception) else None
    rollback = claim.fresh and (isinstance(error, INPUT_ERRORS) or not finished)
    try:
        target.remove_temporaries()
        if rollback:
            for name in written:
                target.remove(name)
            target.journal.remove()
            target.remove_if_created()
    except Exception as cleanup:
        if notes is not None:
            secrets = getattr(getattr(target, "location", None), "secrets", ())
            notes(f"cleaning up {dest} failed too: {redact(f'{type(cleanup).__name__}: {cleanup}', secrets)}")
    if not rollback and notes is not None:
        notes(
            f"{dest} keeps the shards finished so far and the journal: once the cause is fixed, "
            "run the same command with --resume to finish (or with --overwrite if the inputs changed)"
        )


def _check_same(dest: str, recorded: dict[str, Any], header: dict[str, Any], where: str) -> None:
    for key in ("fingerprint", "sources", "params"):
        if recorded.get(key) != header[key]:
            what = "the input files changed" if key == "fingerprint" else f"{key} differ"
            raise ConvertError(
                f"cannot resume into {dest}: {what} since {where} was written "
                f"(recorded {recorded.get(key)!r}, now {header[key]!r}); use --overwrite to start again"
            )


def _shard_intact(target: Any, entry: dict[str, Any]) -> bool:
    """A journaled shard is kept on resume if every file still has its recorded size."""
    try:
        return all(target.size(f["path"]) == f["bytes"] for f in entry["files"])
    except FileNotFoundError:
        return False
