"""Legacy ShardedTensors (ChunkShardingSpec over dim 0 and dim 1, placements not in rank
order, several shards per rank, ranks with none, FSDP1's sharded model and optimizer
state) and sub-meshes of meshes whose ranks are not ascending (``mesh["tp"]``, FSDP2 over
TP on such a mesh), saved on 4 ranks and loaded back on 4, 2 and 3 ranks.

Every check compares exact values with the full tensors, gathered on the saving world.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.helpers.world import run_world

pytestmark = pytest.mark.dist


def _global(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float32) + 1000 * seed).reshape(shape)


def _gathered(st: Any) -> torch.Tensor:
    import torch.distributed as dist

    full = torch.zeros(tuple(st.size()), dtype=st.metadata().tensor_properties.dtype)
    for shard in st.local_shards():
        index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets,
                                                       shard.metadata.shard_sizes))
        full[index] += shard.tensor
    dist.all_reduce(full)
    return full


def _chunk_spec(shape: tuple[int, ...], dim: int, ranks: list[int], fill: Any) -> Any:
    """A ShardedTensor by ChunkShardingSpec, shard i on ``ranks[i]``, filled from
    ``fill`` (the global tensor) or with -1."""
    from torch.distributed._shard.sharded_tensor import empty
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec

    spec = ChunkShardingSpec(dim=dim, placements=[f"rank:{r}/cpu" for r in ranks])
    st = empty(spec, *shape)
    for shard in st.local_shards():
        index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets,
                                                       shard.metadata.shard_sizes))
        shard.tensor.copy_(fill[index] if isinstance(fill, torch.Tensor) else fill)
    return st


def _pieces(shape: tuple[int, ...], boxes: dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]],
            fill: Any) -> Any:
    """A ShardedTensor from explicit boxes per rank (several, out of order, or none)."""
    import torch.distributed as dist
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    rank = dist.get_rank()
    shards = []
    for off, size in boxes.get(rank, []):
        index = tuple(slice(o, o + n) for o, n in zip(off, size))
        t = fill[index].clone() if isinstance(fill, torch.Tensor) else torch.full(size, -1.0)
        shards.append(Shard(t, ShardMetadata(list(off), list(size), f"rank:{rank}/cpu")))
    return init_from_local_shards(shards, list(shape))


PIECES = {  # (7, 6): rank 0 two boxes out of order, rank 1 none, rank 2 three, rank 3 one
    0: [((4, 0), (3, 3)), ((0, 0), (2, 6))],
    2: [((2, 0), (2, 6)), ((4, 3), (1, 3)), ((5, 3), (2, 3))],
    3: [],
    1: [],
}
ST_CASES = [  # name, shape, builder(fill)
    ("st_dim0_uneven", (10, 3), lambda f: _chunk_spec((10, 3), 0, [0, 1, 2, 3], f)),
    ("st_dim1_reordered", (4, 9), lambda f: _chunk_spec((4, 9), 1, [3, 1, 0, 2], f)),
    ("st_dim1_two_ranks", (5, 3), lambda f: _chunk_spec((5, 3), 1, [2, 0], f)),
    ("st_pieces", (7, 6), lambda f: _pieces((7, 6), PIECES, f)),
    ("st_dim0_tiny", (2, 5), lambda f: _chunk_spec((2, 5), 0, [1, 3, 0, 2], f)),
]


def _save_world(rank: int, world: int, root: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    problems: list[str] = []
    want: dict[str, np.ndarray] = {}
    # Legacy ShardedTensors, saved together, loaded into every other spec.
    sts = {}
    for i, (name, shape, build) in enumerate(ST_CASES):
        sts[name] = build(_global(shape, i))
        want[name] = _global(shape, i).numpy()
    reshard.save(sts, os.path.join(root, "st"))
    for j, (other, _, build) in enumerate(ST_CASES):
        for i, (name, shape, _) in enumerate(ST_CASES):
            if shape != ST_CASES[j][1]:
                continue
            target = {name: build(-1.0)}
            reshard.load(target, os.path.join(root, "st"))
            if not torch.equal(_gathered(target[name]), _global(shape, i)):
                problems.append(f"{name} -> {other}: values differ")
    # Sub-meshes of meshes whose ranks are not ascending.
    for mesh_name, ranks in (("rev", [[3, 2], [1, 0]]), ("mix", [[2, 0], [3, 1]])):
        mesh = DeviceMesh("cpu", torch.tensor(ranks), mesh_dim_names=("dp", "tp"))
        for sub in ("dp", "tp"):
            for k, placements in enumerate(([Shard(0)], [Shard(1)], [Replicate()])):
                if mesh_name == "mix" and k != (sub == "tp"):
                    continue  # the reversed mesh gets every case, the mixed one two
                name = f"sub_{mesh_name}_{sub}_{k}"
                full = _global((8, 6), 50 + k)
                dt = distribute_tensor(full, mesh[sub], placements)
                if not torch.equal(dt.full_tensor(), full):
                    problems.append(f"{name}: torch's own full_tensor differs (test setup)")
                    continue
                path = os.path.join(root, name)
                reshard.save({"x": dt}, path)
                want[name] = full.numpy()
                for target_sub in ("tp" if sub == "dp" else "dp",):  # across sub-meshes
                    target = {"x": distribute_tensor(torch.full((8, 6), -1.0), mesh[target_sub],
                                                     [Shard(1 - k % 2)])}
                    reshard.load(target, path)
                    if not torch.equal(target["x"].full_tensor(), full):
                        problems.append(f"{name} -> mesh[{target_sub!r}]: values differ")
    want.update(_fsdp_tp_save(root))
    want.update(_fsdp1_save(root))
    return {"problems": problems, "want": want if rank == 0 else None}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))


def _train(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
    x = torch.arange(21, dtype=torch.float32).reshape(3, 7) / 21
    for _ in range(2):
        model(x).square().sum().backward()
        optim.step()
        optim.zero_grad()


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for k, v in state.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(state, list):
        return {k: v for i, x in enumerate(state) for k, v in _flat(x, f"{prefix}{i}.").items()}
    return {prefix[:-1]: state}


def _full_numpy(state: Any) -> dict[str, Any]:
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in _flat(state).items():
        if isinstance(v, DTensor):
            out[k] = v.full_tensor().numpy().copy()
        elif isinstance(v, ShardedTensor):
            out[k] = _gathered(v).numpy().copy()
        elif isinstance(v, torch.Tensor):
            out[k] = v.numpy().copy()
        else:
            out[k] = v
    return out


def _fsdp_tp_save(root: str) -> dict[str, Any]:
    """FSDP2 over TP on a mesh whose ranks are not ascending, with Adam state."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = DeviceMesh("cpu", torch.tensor([[3, 2], [1, 0]]), mesh_dim_names=("dp", "tp"))
    model = _model()
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    optim = torch.optim.Adam(model.parameters(), lr=0.1)
    _train(model, optim)
    msd, osd = get_state_dict(model, optim)
    state = {"model": msd, "optim": osd}
    reshard.save(state, os.path.join(root, "fsdp_tp"))
    return {f"fsdp_tp:{k}": v for k, v in _full_numpy(state).items()}


def _fsdp1_save(root: str) -> dict[str, Any]:
    """FSDP1 SHARDED_STATE_DICT of the model and of its optimizer (FSDP.optim_state_dict)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import StateDictType

    model = FSDP(_model(), device_id=torch.device("cpu"), use_orig_params=True)
    optim = torch.optim.Adam(model.parameters(), lr=0.1)
    _train(model, optim)
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        state = {"model": model.state_dict(), "optim": FSDP.optim_state_dict(model, optim)}
    reshard.save(state, os.path.join(root, "fsdp1"))
    return {f"fsdp1:{k}": v for k, v in _full_numpy(state).items()}


def _load_world(rank: int, world: int, root: str, want: dict[str, Any]) -> list[str]:
    """FSDP2 (+TP where the world allows) of another world size loads both model
    checkpoints; ShardedTensors of this world size load the legacy ones."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    problems: list[str] = []
    for ckpt in ("fsdp_tp", "fsdp1"):
        model = _model()
        if world == 2:  # TP over a reversed 1-D mesh, then FSDP2 over 1 rank
            mesh = DeviceMesh("cpu", torch.tensor([[1, 0]]), mesh_dim_names=("dp", "tp"))
            parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
            fully_shard(model, mesh=mesh["dp"])
        else:
            fully_shard(model, mesh=DeviceMesh("cpu", torch.tensor(list(reversed(range(world))))))
        optim = torch.optim.Adam(model.parameters(), lr=0.1)
        _train(model, optim)  # optimizer state exists, with other values
        msd, osd = get_state_dict(model, optim)
        state = {"model": msd, "optim": osd}
        try:
            reshard.load(state, os.path.join(root, ckpt))
        except Exception as e:  # noqa: BLE001
            problems.append(f"{ckpt} on {world} ranks: load raised {type(e).__name__}: {e}")
            continue
        got = _full_numpy(state)
        for k, v in got.items():
            w = want.get(f"{ckpt}:{k}", KeyError)
            if w is KeyError:
                problems.append(f"{ckpt}: {k} not in the saved state")
            elif isinstance(w, np.ndarray) and not np.array_equal(np.asarray(v), w):
                problems.append(f"{ckpt} on {world} ranks: {k} differs")
            elif not isinstance(w, np.ndarray) and v != w:
                problems.append(f"{ckpt} on {world} ranks: {k} is {v!r}, saved {w!r}")
    for i, (name, shape, _) in enumerate(ST_CASES):
        target = {name: _chunk_spec(shape, i % 2, list(reversed(range(world))), -1.0)}
        reshard.load(target, os.path.join(root, "st"))
        if not np.array_equal(_gathered(target[name]).numpy(), want[name]):
            problems.append(f"{name} -> ShardedTensor on {world} ranks: values differ")
    return problems


def test_legacy_and_submeshes(tmp_path: Any) -> None:
    root = str(tmp_path)
    saved = run_world(_save_world, 4, root, timeout_s=180)
    problems = [f"rank {r}: {p}" for r, res in enumerate(saved) for p in res["problems"]]
    want = saved[0]["want"]
    for world in (2, 3):
        problems += [f"rank {r}: {p}" for r, res in
                     enumerate(run_world(_load_world, world, root, want, timeout_s=120))
                     for p in res]
    assert not problems, "\n".join(sorted(set(problems)))
    # One process, plain tensors: every saved sub-mesh and ShardedTensor case.
    for name in [n for n in want if n.startswith("sub_")]:
        plain = {"x": torch.zeros(8, 6)}
        reshard.load(plain, os.path.join(root, name))
        assert np.array_equal(plain["x"].numpy(), want[name]), name
    plain = {name: torch.zeros(shape) for name, shape, _ in ST_CASES}
    reshard.load(plain, os.path.join(root, "st"))
    for name, _, _ in ST_CASES:
        assert np.array_equal(plain[name].numpy(), want[name]), name
