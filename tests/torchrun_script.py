"""Run by tests/test_torch.py under ``torchrun --nproc_per_node=2 --standalone``.

Each rank builds a ``streambatch.Loader`` and a ``StreambatchIterable`` (through a
2-worker DataLoader) with rank/world size taken from the gloo process group,
iterates one epoch, all-gathers the row ids and checks on every rank that the
shares are disjoint, complete and of equal length. Prints ``TORCHRUN-OK ...``.

Usage: torchrun --nproc_per_node=2 --standalone tests/torchrun_script.py DATASET ROWS
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import streambatch as sb
from streambatch.torch import StreambatchIterable


def check(name: str, shares: list[list[int]], rows: int, world: int) -> None:
    lengths = {len(s) for s in shares}
    assert len(lengths) == 1, f"{name}: ranks got different row counts {lengths}"
    everything = np.concatenate([np.asarray(s, dtype=np.int64) for s in shares])
    assert len(np.unique(everything)) == len(everything), f"{name}: a row went to two ranks"
    assert np.array_equal(np.sort(everything), np.arange(rows)), f"{name}: the union is not the epoch"
    assert len(shares) == world


def main() -> None:
    path, rows = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    loader = sb.Loader(path, 32, memory_limit="256KiB", remainder="drop", drop_last=True)
    assert (loader.rank, loader.world_size) == (rank, world), (loader.rank, loader.world_size)
    core_ids = np.concatenate([b["id"] for b in loader]).tolist()

    adapter = StreambatchIterable(path, 32, memory_limit="256KiB", remainder="drop", drop_last=True)
    assert (adapter.rank, adapter.world_size) == (rank, world), (adapter.rank, adapter.world_size)
    data = DataLoader(adapter, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = list(data)
    assert all(isinstance(b["id"], torch.Tensor) and b["id"].shape == (32,) for b in batches)
    torch_ids = torch.cat([b["id"] for b in batches]).tolist()

    for name, ids in (("Loader", core_ids), ("StreambatchIterable", torch_ids)):
        shares: list = [None] * world
        dist.all_gather_object(shares, ids)
        check(name, shares, rows, world)
    counts: list = [None] * world
    dist.all_gather_object(counts, len(batches))
    assert len(set(counts)) == 1, f"ranks got different batch counts {counts}"
    dist.barrier()
    print(f"TORCHRUN-OK rank={rank} world={world} rows={len(core_ids)} batches={len(batches)}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
