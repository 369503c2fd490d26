"""The loader's resume state: a small, JSON-safe, versioned dict.

It records what the *consumer* has received (epoch, and the batches delivered in
each world size of the epoch), not what was prefetched, plus everything that
decides the row order, so a state loaded into an incompatible loader fails with
the field that differs instead of silently producing another order::

    {"format_version": 3, "epoch": 0, "history": [[world_size, batches], ...], "rank": 0,
     "order": {"dataset": "...", "batch_size": 256, "drop_last": False,
               "shuffle": True, "seed": 0, "window_pieces": 2048, "piece_rows": 512, ...}}

``order`` is built in one place, :func:`order_params`: the loader options that
shape batches, plus every field of the epoch plan's parameters
(:class:`~streambatch.plan.PlanParams`, from the budget). A change to what the
plan depends on changes the saved state and the compatibility check together.

``dataset`` is :meth:`Dataset.fingerprint`: the shards, their rows and every
column's *delivered* dtype and row shape, so ``cast=`` is part of it. A cast does
not reorder rows by itself, but it is what rewriting the files in that dtype would
be, and it is treated the same: it changes the row size and with it the budget's
pieces and window (the order), and an epoch resumed under another cast would
deliver other values than the one that was interrupted. So a state saved with
one cast does not load into a loader with another (``StateMismatchError``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .errors import StateMismatchError

if TYPE_CHECKING:
    from .loader import Loader

__all__ = ["FORMAT_VERSION", "LoaderState", "order_params"]

#: 3: the order-deciding fields in one ``order`` sub-dict. Versions 1 and 2 kept them at
#: the top level (2 added lanes and slice_rows); such states are still read, see ``_from_flat``
FORMAT_VERSION = 3

#: order fields the user sets directly; the others follow from memory_limit (via the budget)
_USER_SET = ("dataset", "batch_size", "drop_last", "shuffle", "seed", "remainder")


def order_params(loader: Loader) -> dict[str, Any]:
    """Everything that decides the loader's batches besides the position (epoch,
    history, rank): the one list both :meth:`Loader.state_dict` and
    :meth:`LoaderState.check_compatible` use. JSON-normalised (tuples become lists),
    so a saved and a live value compare equal after a round trip through JSON."""
    plan = loader.budget.plan_params(loader.shuffle, loader.seed, loader.remainder)
    values = {
        "dataset": loader.dataset.fingerprint(),
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        **asdict(plan),
    }
    return json.loads(json.dumps(values))


@dataclass(frozen=True)
class LoaderState:
    epoch: int
    #: [[world_size, batches delivered], ...] since the epoch began, oldest first
    history: list
    #: the rank that saved it (informational: any rank's state describes the job)
    rank: int
    #: what decides the order: :func:`order_params` of the saving loader
    order: dict

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def at(self, epoch: int, history: list) -> LoaderState:
        """The same job at another position (``streambatch.torch`` composes worker positions)."""
        return replace(self, epoch=int(epoch), history=[[int(w), int(b)] for w, b in history])

    @classmethod
    def from_dict(cls, state: Any) -> LoaderState:
        if not isinstance(state, dict):
            raise StateMismatchError(f"a loader state must be a dict, got {type(state).__name__}")
        version = state.get("format_version")
        if version in (1, 2):
            state = _from_flat(state)
        elif version != FORMAT_VERSION:
            raise StateMismatchError(
                f"loader state format_version {version!r} is not supported (expected {FORMAT_VERSION}, 2 or 1)"
            )
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise StateMismatchError(f"loader state lacks {', '.join(missing)}")
        if not isinstance(state["order"], dict):
            raise StateMismatchError(f"loader state's order must be a dict, got {type(state['order']).__name__}")
        return cls(**{n: state[n] for n in names})

    def check_compatible(self, loader: Loader) -> None:
        """Raise naming each order field whose saved value differs from the loader's."""
        ours = order_params(loader)
        saved = self.order
        differing = [
            f"{k}: saved {saved.get(k, '<absent>')!r}, loader has {ours.get(k, '<absent>')!r}"
            for k in sorted(set(ours) | set(saved), key=lambda k: (k not in ours, k))
            if saved.get(k, _ABSENT) != ours.get(k, _ABSENT)
        ]
        if differing:
            hint = ""
            derived = set(ours) - set(_USER_SET)
            if any(d.split(":", 1)[0] in derived for d in differing):
                hint = f" ({'/'.join(sorted(derived))} follow from memory_limit: use the saved run's memory_limit)"
            if any(d.startswith("dataset:") for d in differing):
                hint += (
                    " (dataset covers the shards, their row counts and each column's delivered dtype and row "
                    "shape: the same files, columns= and cast= as the saved run)"
                )
            raise StateMismatchError("loader state does not match this loader: " + "; ".join(differing) + hint)
        history = self.history
        valid = (
            isinstance(history, list)
            and history
            and all(
                isinstance(h, (list, tuple))
                and len(h) == 2
                and all(isinstance(v, int) and v >= 0 for v in h)
                and h[0] >= 1
                for h in history
            )
        )
        if not isinstance(self.epoch, int) or not valid or self.epoch < 0:
            raise StateMismatchError(f"loader state has an invalid epoch/history: {self.epoch!r}, {history!r}")


_ABSENT = object()

_POSITION = ("epoch", "history", "rank")


def _from_flat(state: dict[str, Any]) -> dict[str, Any]:
    """A version 1 or 2 state as version 3: every field but the position is an order
    field (a version-1 state lacks lanes/slice_rows, so the check names them if the
    loader's differ from their absence)."""
    missing = [n for n in _POSITION if n not in state]
    if missing:
        raise StateMismatchError(f"loader state (format_version {state['format_version']}) lacks {', '.join(missing)}")
    order = {k: v for k, v in state.items() if k not in (*_POSITION, "format_version")}
    return {**{n: state[n] for n in _POSITION}, "order": order}
