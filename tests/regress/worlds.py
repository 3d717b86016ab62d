"""Rank functions for tests/regress/test_worlds.py (spawned: must be importable).

Each world runs many scenarios, collects ``"name: problem"`` strings and returns them,
so one spawn covers them all and a failure names its scenario.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import reshard


def full(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape).to(dtype)


def same_as_distributed(dt: DTensor, shape: tuple[int, ...]) -> bool:
    ref = distribute_tensor(full(shape, dt.dtype), dt.device_mesh, dt.placements)
    return torch.equal(dt.to_local(), ref.to_local())


def run_scenarios(scenarios: list[tuple[str, Callable[[], None]]]) -> list[str]:
    problems = []
    for name, fn in scenarios:
        try:
            fn()
        except Exception:  # noqa: BLE001 - collected, reported by the test with its name
            problems.append(f"{name}: {traceback.format_exc(limit=-4)}")
        dist.barrier()
    return problems


def expect_error(cls: type[Exception], *words: str) -> Callable[[Callable[[], Any]], None]:
    def check(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except cls as e:
            missing = [w for w in words if w not in str(e)]
            if missing:
                raise AssertionError(f"{type(e).__name__} lacks {missing}: {e}") from e
            return
        raise AssertionError(f"no {cls.__name__} raised")
    return check


# World of 4: saves that one rank gets wrong, and layouts nobody tested.


def disagreeing_saves(rank: int, world: int, root: str) -> list[str]:
    def good_then(name: str, bad_save: Callable[[str], None], cls: type[Exception],
                  *words: str) -> Callable[[], None]:
        def fn() -> None:
            path = os.path.join(root, name)
            reshard.save({"w": torch.full((4,), 7.0), "r": torch.full((1,), float(rank))}, path)
            expect_error(cls, *words)(lambda: bad_save(path))
            # Nothing was committed and the previous checkpoint is whole.
            dest = {"w": torch.zeros(4), "r": torch.zeros(1)}
            reshard.load(dest, path)
            assert torch.equal(dest["w"], torch.full((4,), 7.0))
            if rank == 0:
                assert reshard.verify(path).ok
        return fn

    def other_path(path: str) -> None:
        # Bug: the coordinator committed a manifest naming rank 1's file, which was in
        # another folder, then deleted the previous checkpoint's files.
        reshard.save({"w": torch.ones(4), "r": torch.ones(1) * rank},
                     path + "-typo" if rank == 1 else path)

    def other_codec(path: str) -> None:
        # Bug: the manifest recorded rank 0's codec for every chunk, so rank 1's zstd
        # frames were declared identity and the committed checkpoint did not parse.
        mesh = init_device_mesh("cpu", (world,))
        reshard.save({"w": distribute_tensor(torch.ones(4), mesh, [Shard(0)]), "r": torch.ones(1)},
                     path, codec="zstd" if rank == 1 else None)

    return run_scenarios([
        ("path differs on rank 1", good_then(
            "path", other_path, reshard.StorageError, "rank 1 wrote", "same path")),
        ("codec differs on rank 1", good_then(
            "codec", other_codec, reshard.CheckpointError, "different codecs", "zstd")),
        ("sparse on one rank", good_then(
            "sparse", lambda p: reshard.save(
                {"w": torch.ones(4).to_sparse() if rank == 3 else torch.ones(4)}, p),
            reshard.UnsupportedValueError, "key 'w'", "sparse", "rank 3")),
    ])


def odd_layouts(rank: int, world: int, root: str) -> list[str]:
    def subset_mesh() -> None:
        # A DTensor on ranks 0 and 1 only; ranks 2 and 3 still take part in the save.
        mesh = DeviceMesh("cpu", [0, 1])
        path = os.path.join(root, "subset")
        reshard.save({"t": distribute_tensor(full((5, 3)), mesh, [Shard(0)]), "v": 3}, path)
        dest = {"t": distribute_tensor(torch.zeros(5, 3), mesh, [Shard(1)]), "v": 0}
        reshard.load(dest, path)
        assert dest["v"] == 3 and (rank >= 2 or same_as_distributed(dest["t"], (5, 3)))
        whole = {"t": torch.zeros(5, 3)}
        reshard.load(whole, path)
        assert torch.equal(whole["t"], full((5, 3)))

    def submesh_and_nested_uneven() -> None:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        path = os.path.join(root, "submesh")
        reshard.save({"a": distribute_tensor(full((5, 3)), mesh["tp"], [Shard(0)]),
                      "b": distribute_tensor(full((5,)), mesh, [Shard(0), Shard(0)]),
                      "c": distribute_tensor(full((2, 1, 3, 2, 5)), mesh, [Shard(4), Shard(2)])},
                     path)
        dest = {"a": distribute_tensor(torch.zeros(5, 3), mesh["dp"], [Shard(1)]),
                "b": distribute_tensor(torch.zeros(5), mesh, [Replicate(), Shard(0)]),
                "c": distribute_tensor(torch.zeros(2, 1, 3, 2, 5), mesh, [Shard(2), Shard(4)])}
        reshard.load(dest, path)
        assert same_as_distributed(dest["a"], (5, 3)) and same_as_distributed(dest["b"], (5,))
        assert same_as_distributed(dest["c"], (2, 1, 3, 2, 5))

    def subgroup_not_called_by_others() -> None:
        group = dist.new_group(ranks=[1, 3])
        mesh = DeviceMesh("cpu", [1, 3])  # every rank: creating meshes makes groups in order
        if rank in (1, 3):
            path = os.path.join(root, "subgroup")
            reshard.save({"t": distribute_tensor(full((5,)), mesh, [Shard(0)])}, path,
                         process_group=group)
            dest = {"t": torch.zeros(5)}
            reshard.load(dest, path, process_group=group)
            assert torch.equal(dest["t"], full((5,)))

    def frames_split_elements_across_ranks() -> None:
        mesh = init_device_mesh("cpu", (world,))
        path = os.path.join(root, "frames")
        os.environ["RESHARD_FRAME_RAW_NBYTES"] = "5"
        try:
            reshard.save({"a": distribute_tensor(full((37, 5), torch.bfloat16), mesh, [Shard(1)])},
                         path, codec="zstd")
        finally:
            del os.environ["RESHARD_FRAME_RAW_NBYTES"]
        dest = {"a": distribute_tensor(torch.zeros(37, 5, dtype=torch.bfloat16), mesh, [Shard(0)])}
        reshard.load(dest, path)
        assert same_as_distributed(dest["a"], (37, 5))

    return run_scenarios([
        ("subset mesh", subset_mesh),
        ("submesh and nested uneven", submesh_and_nested_uneven),
        ("subgroup", subgroup_not_called_by_others),
        ("frames split elements across ranks", frames_split_elements_across_ranks),
    ])




# Optimizer state: saved on 4 ranks from a (2, 2) mesh, continued on 3 ranks.


def _grads(shape: tuple[int, ...], k: int) -> torch.Tensor:
    return torch.sin(torch.arange(math.prod(shape), dtype=torch.float32) * (k + 1)).reshape(shape)


def _params(mesh: DeviceMesh, w_placements: list[Any], b_placements: list[Any]) -> list[Any]:
    return [torch.nn.Parameter(distribute_tensor(full((7, 5)) / 10, mesh, w_placements)),
            torch.nn.Parameter(distribute_tensor(full((5,)) / 10, mesh, b_placements))]


def _step(opt: torch.optim.Optimizer, params: list[Any], k: int) -> None:
    for p in params:
        p.grad = distribute_tensor(_grads(tuple(p.shape), k), p.device_mesh, p.placements)
    opt.step()


def optimizer_save(rank: int, world: int, root: str) -> list[str]:
    def fn() -> None:
        mesh = init_device_mesh("cpu", (2, 2))
        params = _params(mesh, [Shard(0), Shard(1)], [Replicate(), Shard(0)])
        opt = torch.optim.AdamW(params, lr=0.1)
        _step(opt, params, 0)
        reshard.save({"model": {"w": params[0], "b": params[1]}, "optim": opt.state_dict()},
                     os.path.join(root, "optim"))
        _step(opt, params, 1)
        expected = [p.full_tensor() for p in params] + [opt.state[params[0]]["exp_avg"].full_tensor()]
        if rank == 0:
            torch.save(expected, os.path.join(root, "optim-expected.pt"))
    return run_scenarios([("optimizer save", fn)])


def optimizer_continue(rank: int, world: int, root: str) -> list[str]:
    def continue_with(w_placements: list[Any], b_placements: list[Any]) -> Callable[[], None]:
        def fn() -> None:
            mesh = init_device_mesh("cpu", (world,))
            params = _params(mesh, w_placements, b_placements)
            opt = torch.optim.AdamW(params, lr=0.5)
            _step(opt, params, 5)  # DTensor moments need destinations of their own
            state = {"model": {"w": params[0], "b": params[1]}, "optim": opt.state_dict()}
            reshard.load(state, os.path.join(root, "optim"))
            opt.load_state_dict(state["optim"])
            _step(opt, params, 1)
            got = [p.full_tensor() for p in params] + [opt.state[params[0]]["exp_avg"].full_tensor()]
            expected = torch.load(os.path.join(root, "optim-expected.pt"))
            for name, a, b in zip(("w", "b", "exp_avg"), got, expected):
                assert torch.equal(a, b), f"{name} differs after continuing"
        return fn

    return run_scenarios([
        ("continue on Shard(1)/Replicate", continue_with([Shard(1)], [Replicate()])),
        ("continue on Replicate/Shard(0)", continue_with([Replicate()], [Shard(0)])),
    ])


def world_of_4(rank: int, world: int, root: str) -> list[str]:
    return (disagreeing_saves(rank, world, root) + odd_layouts(rank, world, root)
            + optimizer_save(rank, world, root))


def world_of_3(rank: int, world: int, root: str) -> list[str]:
    return optimizer_continue(rank, world, root)
