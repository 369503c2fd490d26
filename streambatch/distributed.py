"""Where this process sits in a distributed job, for ``Loader(rank=None, world_size=None)``.

Looked up, in order: an initialised ``torch.distributed`` process group (only if
torch is already imported: the core never imports torch), then the ``RANK`` and
``WORLD_SIZE`` environment variables that ``torchrun`` sets, else a single
process. JAX users pass ``rank=jax.process_index(), world_size=jax.process_count()``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["detect_rank_and_world_size", "resolve_rank_and_world_size"]


def detect_rank_and_world_size() -> tuple[int, int]:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None:
        try:
            return int(rank), int(world)
        except ValueError as e:
            raise ValueError(f"RANK={rank!r} and WORLD_SIZE={world!r} must be integers") from e
    return 0, 1


def resolve_rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``, each ``None`` replaced by :func:`detect_rank_and_world_size`'s
    value (the one place both the Loader and ``streambatch.torch`` resolve them; callers
    validate the result)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    detected_rank, detected_world = detect_rank_and_world_size()
    return (detected_rank if rank is None else rank, detected_world if world_size is None else world_size)
