"""A DTensor over a LocalShardsWrapper whose shards the caller cut from one buffer.

Shards of one key hold disjoint boxes, and load took them to lie in disjoint memory:
shards that overlap in memory (buf[0:2] and buf[1:3]) loaded silently, each shared
element holding whichever saved value was written last. They are refused by key on
every rank (only rank 0 holds such shards here); adjacent shards of one buffer load
exactly, and a key whose memory meets another key's through two shards is named once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import reshard
from tests.helpers.world import run_world

N = 8  # Shard(0) over 2 ranks: rank r holds rows [4r, 4r + 4), as two shards of 2


def _dt(mesh: Any, rank: int, shards: list[torch.Tensor]) -> Any:
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    lsw = LocalShardsWrapper(shards, [(4 * rank,), (4 * rank + 2,)])
    return DTensor.from_local(lsw, mesh, [Shard(0)], run_check=False, shape=torch.Size((N,)),
                              stride=(1,))


def _world(rank: int, world_size: int, root: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world_size,))
    saved = {"w": torch.arange(N, dtype=torch.float32) + 1, "u": -torch.arange(4, dtype=torch.float32) - 1}
    reshard.save(saved, root)  # plain tensors: the same on every rank
    failures: list[str] = []

    buf = torch.zeros(4)
    shards = [buf[0:2], buf[1:3]] if rank == 0 else [buf[0:2], buf[2:4]]
    try:
        reshard.load({"w": _dt(mesh, rank, shards)}, root, strict=False)
        failures.append("overlapping shards: loaded")
    except reshard.LayoutMismatchError as e:
        if "key 'w': two of its shards are views that share memory" not in str(e):
            failures.append(f"overlapping shards: {e}")
    if buf.any():
        failures.append(f"overlapping shards: wrote {buf.tolist()}")

    buf = torch.zeros(4)
    reshard.load({"w": _dt(mesh, rank, [buf[0:2], buf[2:4]])}, root, strict=False)
    if not torch.equal(buf, saved["w"][4 * rank:4 * rank + 4]):
        failures.append(f"adjacent shards: {buf.tolist()}")

    buf = torch.zeros(4)
    try:
        reshard.load({"w": _dt(mesh, rank, [buf[0:2], buf[2:4]]), "u": buf}, root)
        failures.append("shards and their buffer under two keys: loaded")
    except reshard.LayoutMismatchError as e:
        if str(e).count("keys 'w' and 'u'") != 1:
            failures.append(f"shards and their buffer under two keys: {e}")
    if failures:
        raise AssertionError(f"rank {rank}: " + "; ".join(failures))


def test_shards_of_one_buffer(tmp_path: Path) -> None:
    run_world(_world, 2, str(tmp_path), timeout_s=120)
