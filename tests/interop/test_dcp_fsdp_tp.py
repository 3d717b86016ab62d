"""DCP checkpoints of FSDP2 over tensor parallelism (``_StridedShard`` weights of uneven
sizes, Adam state), read directly by ``reshard.load`` into other parallelisms.

On an ascending mesh DCP's chunks hold what their metadata says: reshard loads them
exactly into FSDP2 over a reversed 4-rank mesh and into FSDP2+TP on a reversed 2x2 mesh
(DCP's own load refuses both in torch 2.13). On a mesh whose ranks are not ascending,
DCP writes each rank's data under another rank's offsets and sizes (it places by mesh
coordinate, FSDP2 by group rank): reshard must refuse to load it on every rank, naming
the key, the file and the two shapes, instead of loading misplaced values.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.dist.test_legacy_and_submeshes import _full_numpy, _model, _train
from tests.helpers.world import run_world

pytestmark = pytest.mark.dist


def _parallel(ranks: list[Any], *, tp: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = _model()  # Linear(7, 10), ReLU, Linear(10, 5): 10 and 5 rows split unevenly
    if tp:
        mesh = DeviceMesh("cpu", torch.tensor(ranks), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
    else:
        fully_shard(model, mesh=DeviceMesh("cpu", torch.tensor(ranks)))
    optim = torch.optim.Adam(model.parameters(), lr=0.1)
    _train(model, optim)
    return model, optim


def _state(ranks: list[Any], *, tp: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(*_parallel(ranks, tp=tp))
    return {"model": msd, "optim": osd}


def _world(rank: int, world: int, root: str) -> list[str]:
    import torch.distributed.checkpoint as dcp

    problems: list[str] = []
    saved = _state([[0, 1], [2, 3]], tp=True)
    if "_S(0, 2)" not in {str(p) for v in saved["model"].values() for p in v.placements}:
        problems.append("the saved model has no _StridedShard placement (test setup)")
    want = _full_numpy(saved)
    path = os.path.join(root, "ascending")
    dcp.save(saved, checkpoint_id=path)
    for name, ranks, tp in (("fsdp2 on [2, 0, 3, 1]", [2, 0, 3, 1], False),
                            ("fsdp2+tp on [[3, 2], [1, 0]]", [[3, 2], [1, 0]], True)):
        target = _state(ranks, tp=tp)  # trained too: other values everywhere
        reshard.load(target, path)
        got = _full_numpy(target)
        problems += [f"{name}: {k} differs" for k, v in want.items()
                     if isinstance(v, np.ndarray) and not np.array_equal(got[k], v)]
        problems += [f"{name}: {k} is {got[k]!r}, saved {v!r}" for k, v in want.items()
                     if not isinstance(v, np.ndarray) and got[k] != v]

    reversed_path = os.path.join(root, "reversed")
    dcp.save(_state([[3, 2], [1, 0]], tp=True), checkpoint_id=reversed_path)
    try:
        reshard.load(_state([2, 0, 3, 1], tp=False), reversed_path)
        problems.append("a DCP checkpoint whose chunks disagree with its metadata loaded")
    except reshard.CorruptCheckpointError as e:
        message = str(e)
        for part in ("'model.0.weight'", ".distcp", "the metadata says float32 [3, 7]"):
            if part not in message:
                problems.append(f"the error does not name {part}: {message[:300]}")
    return problems


def test_dcp_fsdp_over_tp(tmp_path: Any) -> None:
    results = run_world(_world, 4, str(tmp_path), timeout_s=180)
    problems = [f"rank {r}: {p}" for r, res in enumerate(results) for p in res]
    assert not problems, "\n".join(problems)
