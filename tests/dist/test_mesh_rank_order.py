"""Meshes whose ranks are not in ascending order (``DeviceMesh("cpu", [[3, 2], [1, 0]])``).

DTensor's scatter and gather and FSDP2's sharding place each shard by the rank's place in
its process group, which orders ranks ascending; ``get_coordinate`` follows the mesh's own
order. A checkpoint must hold what ``full_tensor()`` shows, so that it loads right into
any other mesh. One world of 4 ranks; the pytest process then loads the same checkpoints
into plain tensors.
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

SHAPE = (8, 12)  # even over 2 and 4: torch itself gets uneven shards wrong on such meshes
MESHES = {"2x2 reversed": [[3, 2], [1, 0]], "2x2 mixed": [[2, 0], [3, 1]], "4 mixed": [2, 0, 3, 1]}
CASES = [("2x2 reversed", ("S0", "S1")), ("2x2 reversed", ("R", "S0")),
         ("2x2 mixed", ("S1", "S0")), ("2x2 mixed", ("S0", "S0")), ("4 mixed", ("S1",))]


def _placements(names: tuple[str, ...]) -> list[Any]:
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if n == "R" else Shard(int(n[1])) for n in names]


def _global(seed: int) -> torch.Tensor:
    return torch.arange(96, dtype=torch.float32).reshape(SHAPE) + 100 * seed


def _world(rank: int, world: int, root: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    meshes = {name: DeviceMesh("cpu", torch.tensor(ranks)) for name, ranks in MESHES.items()}
    ascending = {2: init_device_mesh("cpu", (2, 2)), 1: init_device_mesh("cpu", (4,))}
    problems: list[str] = []
    for i, (m, p) in enumerate(CASES):
        dt = distribute_tensor(_global(i), meshes[m], _placements(p))
        reshard.save({"x": dt}, os.path.join(root, f"case{i}"))
    for i, (m, p) in enumerate(CASES):
        path = os.path.join(root, f"case{i}")
        for target_name, target_mesh, names in [
            ("ascending 4 S1", ascending[1], ("S1",)),
            ("ascending 2x2 S1,R", ascending[2], ("S1", "R")),
            ("reversed 2x2 S1,S0", meshes["2x2 reversed"], ("S1", "S0")),
            ("mixed 4 S0", meshes["4 mixed"], ("S0",)),
        ]:
            target = {"x": distribute_tensor(torch.full(SHAPE, -1.0), target_mesh,
                                             _placements(names))}
            reshard.load(target, path)
            if not torch.equal(target["x"].full_tensor(), _global(i)):
                problems.append(f"saved on {m} [{p}], loaded on {target_name}: values differ")
    # Uneven shards: torch's local sizes follow the mesh order, its data the group order.
    # The error said its explanation once per failing rank (4 times, each with that rank's
    # shapes): now once, naming the key and mesh, and the ranks when not all failed.
    for mesh_name, shape, names, failing in [
        ("2x2 reversed", (9, 7), ("S0", "S1"), ""),
        ("4 mixed", (9, 4), ("S0",), " (failed on rank 1, 3)"),
    ]:
        uneven = distribute_tensor(torch.zeros(shape), meshes[mesh_name], _placements(names))
        try:
            reshard.save({"w": uneven}, os.path.join(root, "uneven"))
            problems.append(f"an uneven shard on mesh {mesh_name} saved without an error")
        except reshard.CheckpointError as e:
            text = str(e)
            if not text.startswith("key 'w': ") or text.count("not ascending") != 1:
                problems.append(f"{mesh_name}: unclear or repeated error: {text}")
            if str(MESHES[mesh_name]) not in text or not text.endswith("use ascending ranks" + failing):
                problems.append(f"{mesh_name}: the error names neither mesh nor failing ranks: {text}")
        if os.path.exists(os.path.join(root, "uneven", "manifest.json")):
            problems.append("the failed save left a manifest")
    _no_groups(root)
    return {"problems": problems, "fsdp": _fsdp(rank, root)}


def _no_groups(root: str) -> None:
    """A mesh built without process groups: no collective placed its shards, so they sit
    by mesh coordinate, as the caller built them."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = DeviceMesh("cpu", torch.tensor([2, 0, 3, 1]), _init_backend=False)
    c = mesh.get_coordinate()[0]
    g = _global(7)
    local = g[2 * c:2 * c + 2].clone()
    dt = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=g.shape,
                            stride=g.stride())
    reshard.save({"x": dt}, os.path.join(root, "no_groups"))


def _fsdp(rank: int, root: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 11), torch.nn.Linear(11, 3))
    fully_shard(model, mesh=DeviceMesh("cpu", torch.tensor([3, 1, 0, 2])))
    reshard.save(model.state_dict(), os.path.join(root, "fsdp"))
    full = {k: v.full_tensor().numpy() for k, v in model.state_dict().items()}
    return full if rank == 0 else {}


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("rank_order")
    return root, run_world(_world, 4, str(root), timeout_s=180)


def test_non_ascending_meshes_save_what_full_tensor_shows(
    world_root: tuple[Any, list[dict[str, Any]]]
) -> None:
    tmp_path, results = world_root
    problems = [p for r in results for p in r["problems"]]
    assert not problems, "\n".join(problems)
    plain = {"x": torch.full(SHAPE, -1.0)}
    reshard.load(plain, str(tmp_path / "no_groups"))
    assert torch.equal(plain["x"], _global(7))
    for i, case in enumerate(CASES):
        plain = {"x": torch.full(SHAPE, -1.0)}
        reshard.load(plain, str(tmp_path / f"case{i}"))
        assert torch.equal(plain["x"], _global(i)), case


def test_fsdp2_on_a_non_ascending_mesh(world_root: tuple[Any, list[dict[str, Any]]]) -> None:
    tmp_path, results = world_root
    full = results[0]["fsdp"]
    plain = {k: torch.zeros(v.shape) for k, v in full.items()}
    reshard.load(plain, str(tmp_path / "fsdp"))
    for k, v in full.items():
        assert np.array_equal(plain[k].numpy(), v), k
