"""The loader's resume state: a small, JSON-safe, versioned dict.

It records what the *consumer* has received (epoch and batches delivered), not
what was prefetched, plus everything that decides the row order, so a state
loaded into an incompatible loader fails with the field that differs instead of
silently producing another order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from .errors import StateMismatchError

if TYPE_CHECKING:
    from .loader import Loader

__all__ = ["FORMAT_VERSION", "LoaderState"]

FORMAT_VERSION = 2


@dataclass(frozen=True)
class LoaderState:
    epoch: int
    #: [[world_size, batches delivered], ...] since the epoch began, oldest first
    history: list
    seed: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    remainder: str
    #: the rank that saved it (informational: any rank's state describes the job)
    rank: int
    dataset: str
    window_pieces: int
    piece_rows: int
    lanes: int
    slice_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, state: Any) -> LoaderState:
        if not isinstance(state, dict):
            raise StateMismatchError(f"a loader state must be a dict, got {type(state).__name__}")
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise StateMismatchError(
                f"loader state format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise StateMismatchError(f"loader state lacks {', '.join(missing)}")
        return cls(**{n: state[n] for n in names})

    def check_compatible(self, loader: Loader) -> None:
        """Raise naming each field whose saved value differs from the loader's."""
        ours = {
            "seed": loader.seed,
            "batch_size": loader.batch_size,
            "shuffle": loader.shuffle,
            "drop_last": loader.drop_last,
            "dataset": loader.dataset.fingerprint(),
            "remainder": loader.remainder,
            "window_pieces": loader.budget.window_pieces,
            "piece_rows": loader.budget.piece_rows,
            "lanes": loader.budget.lanes,
            "slice_rows": loader.budget.slice_rows,
        }
        differing = [
            f"{k}: saved {getattr(self, k)!r}, loader has {v!r}" for k, v in ours.items() if getattr(self, k) != v
        ]
        if differing:
            hint = ""
            if any(d.startswith(("window_pieces", "piece_rows", "lanes", "slice_rows")) for d in differing):
                hint = " (window_pieces/piece_rows/lanes/slice_rows follow from memory_limit: use the saved run's memory_limit)"
            raise StateMismatchError("loader state does not match this loader: " + "; ".join(differing) + hint)
        history = self.history
        valid = (
            isinstance(history, list)
            and history
            and all(isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(v, int) and v >= 0 for v in h)
                    and h[0] >= 1 for h in history)
        )
        if not valid or self.epoch < 0:
            raise StateMismatchError(f"loader state has an invalid epoch/history: {self.epoch!r}, {history!r}")
