"""async_save staging of every kind of shard: a DTensor over a LocalShardsWrapper and a
protocol subclass with uneven pieces (one rank holding none), a strided DTensor local,
a DTensor on a (1, 3) mesh, plain replicated tensors, numpy arrays and a list value, with
column_blocks 1, 2 and 3 and zstd. Every rank overwrites all it holds as soon as
async_save returns; the checkpoint must hold the values from before, exactly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.world import run_world

from .layouts import Full, Mesh, Rows

pytestmark = pytest.mark.dist

SHAPE = (100, 64)
ROWS = (((0, 30), (70, 30)), ((30, 40),), ())
LAYOUTS = [Rows("lsw", ROWS), Rows("proto", ROWS), Mesh("3", "S1", strided=True),
           Mesh("1x3", "R,S0"), Full(3)]


def _state(rank: int, meshes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from .layouts import build, global_tensor

    want = {f"k{i}": global_tensor(SHAPE, torch.float32, i) for i in range(len(LAYOUTS))}
    sd: dict[str, Any] = {k: build(lay, SHAPE, torch.float32, rank, meshes, want[k])
                          for k, lay in zip(want, LAYOUTS)}
    sd["np"] = want["k0"].numpy().copy()
    sd["val"] = [1, 2]
    return sd, want


def overwrite_after_return(rank: int, world: int, root: str) -> list[str]:
    import numpy as np
    import torch

    import reshard
    from reshard import config

    from .layouts import Meshes, local_parts

    config.COLUMN_TILE_MIN_NBYTES, config.COLUMN_TILE_NBYTES = 256, 2048  # cut these small boxes
    meshes = Meshes()
    problems: list[str] = []
    for blocks, codec in ((2, "zstd"), (1, None), (3, None)):
        sd, want = _state(rank, meshes)
        path = f"{root}/k{blocks}"
        handle = reshard.async_save(sd, path, column_blocks=blocks, codec=codec)
        for key, layout in zip(want, LAYOUTS):
            for _, local, _ in local_parts(layout, sd[key], SHAPE, meshes):
                local.fill_(-7)
        sd["np"][:] = -7
        sd["val"].append(3)
        handle.result()
        with reshard.open(path) as ck:
            for key, layout in zip(want, LAYOUTS):
                if not torch.equal(ck.read(key), want[key]):
                    problems.append(f"k={blocks} {key} ({layout}): the overwritten values were saved")
            if not np.array_equal(np.asarray(ck.read("np")), want["k0"].numpy()):
                problems.append(f"k={blocks} np: the overwritten values were saved")
            if sorted(k for k in ck.keys() if k.startswith("val")) != ["val.0", "val.1"]:
                problems.append(f"k={blocks} val: {ck.keys()}")
    return [f"rank {rank}: {p}" for p in problems]


def test_async_save_stages_every_shard_kind(tmp_path: Any) -> None:
    results = run_world(overwrite_after_return, 3, str(tmp_path), timeout_s=150)
    problems = [p for rank_problems in results for p in rank_problems]
    assert not problems, "\n".join(problems[:30])
