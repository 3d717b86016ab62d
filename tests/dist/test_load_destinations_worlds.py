"""Destinations real users hand to load, as DTensors: local tensors that are channels_last,
transposed or a column slice of a wider buffer, parameters that require grad, one
Parameter under two keys (tied weights) whose checkpoint holds two different values,
and local tensors that are expanded, on the meta device, share memory inside themselves
or with another key's. Saved from 1 process and from 2 ranks; loaded on 1, 2 and 3 ranks.
Exact values, or the same error naming the key on every rank with nothing written.
(One process, plain tensors: tests/torch/test_load_destinations.py.)
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

import reshard
from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

pytestmark = pytest.mark.dist

SHAPES = {"cl": (4, 3, 4, 5), "t": (6, 8), "col": (6, 8), "tied_a": (5, 4), "tied_b": (5, 4),
          "odd": (7, 3), "bf": (5, 6)}


def _values(source: int) -> dict[str, torch.Tensor]:
    """The global values a source saves: distinct per key and per source."""
    out = {}
    for i, (key, shape) in enumerate(SHAPES.items()):
        n = torch.Size(shape).numel()
        sign = 1 if source == 1 else -1
        out[key] = (torch.arange(n, dtype=torch.float32).reshape(shape) + 1000 * i) * sign
    return out


def _save_world(rank: int, world: int, path: str) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    placements = {"cl": Shard(1), "t": Shard(0), "col": Replicate(), "tied_a": Shard(0),
                  "tied_b": Shard(1), "odd": Shard(0), "bf": Shard(1)}
    values = _values(2)
    reshard.save({k: distribute_tensor(v, mesh, [placements[k]]) for k, v in values.items()}, path)


def _dest(world: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Destinations of every kind; also the wide buffers whose other parts must stay 0."""
    if world == 1:
        wide = torch.zeros(6, 11)
        tied = torch.nn.Parameter(torch.zeros(5, 4))
        return {"cl": torch.zeros(SHAPES["cl"]).to(memory_format=torch.channels_last),
                "t": torch.zeros(8, 6).t(), "col": wide[:, 2:10], "tied_a": tied, "tied_b": tied,
                "odd": torch.nn.Parameter(torch.zeros(3, 7).t()),
                "bf": torch.nn.Parameter(torch.zeros(6, 5, dtype=torch.bfloat16).t())}, {"col": wide}
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh = init_device_mesh("cpu", (world,))

    def local_shape(key: str, dim: int) -> tuple[int, ...]:
        shape, _ = compute_local_shape_and_global_offset(torch.Size(SHAPES[key]), mesh, [Shard(dim)])
        return tuple(shape)

    def dt(key: str, local: torch.Tensor, dim: int) -> Any:
        shape = SHAPES[key]
        return DTensor.from_local(local, mesh, [Shard(dim)], run_check=False, shape=torch.Size(shape),
                                  stride=torch.empty(shape).stride())

    cl = torch.zeros(local_shape("cl", 0)).to(memory_format=torch.channels_last)
    r, c = local_shape("t", 1)
    rows, cols = local_shape("col", 0)
    wide = torch.zeros(rows, cols + 3)
    tied = torch.nn.Parameter(dt("tied_a", torch.zeros(local_shape("tied_a", 0)), 0))
    odd_r, odd_c = local_shape("odd", 1)
    bf_r, bf_c = local_shape("bf", 0)
    bf = torch.zeros(bf_c, bf_r, dtype=torch.bfloat16).t()  # converted on load, transposed
    return {"cl": dt("cl", cl, 0), "t": dt("t", torch.zeros(c, r).t(), 1),
            "col": dt("col", wide[:, 1:cols + 1], 0), "tied_a": tied, "tied_b": tied,
            "odd": torch.nn.Parameter(dt("odd", torch.zeros(odd_c, odd_r).t(), 1)),
            "bf": torch.nn.Parameter(dt("bf", bf, 0))}, {"col": wide}


def _full(x: Any) -> torch.Tensor:
    x = x.detach()
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def _refusals(world: int) -> list[tuple[str, dict[str, Any], str]]:
    """(name, destination, words every rank's error must hold)."""
    if world == 1:
        base = torch.zeros(64)
        return [
            ("expanded", {"t": torch.zeros(1, 8).expand(6, 8)}, "key 't': it is an expanded view"),
            ("meta", {"t": torch.empty(6, 8, device="meta")}, "key 't': it is on the meta device"),
            ("overlap", {"t": base.as_strided((6, 8), (4, 1))}, "key 't': its strides [4, 1]"),
            ("across keys", {"t": base[:48].view(6, 8), "col": base[8:56].view(6, 8)},
             "keys 't' and 'col': their tensors are views that share part of their memory"),
        ]
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh = init_device_mesh("cpu", (world,))
    shape, _ = compute_local_shape_and_global_offset(torch.Size((6, 8)), mesh, [Shard(0)])
    rows = shape[0]

    def dt(local: torch.Tensor) -> Any:
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                                  shape=torch.Size((6, 8)), stride=(8, 1))

    base = torch.zeros(2 * rows * 8 + 8)
    return [
        ("expanded", {"t": dt(torch.zeros(1, 8).expand(rows, 8))}, "key 't': it is an expanded view"),
        ("meta", {"t": dt(torch.empty(rows, 8, device="meta"))}, "key 't': it is on the meta device"),
        ("overlap", {"t": dt(base.as_strided((rows, 8), (4, 1)))}, "key 't': its strides [4, 1]"),
        ("across keys", {"t": dt(base[:rows * 8].view(rows, 8)),
                         "col": dt(base[8:rows * 8 + 8].view(rows, 8))},
         "keys 't' and 'col': their tensors are views that share part of their memory"),
    ]


def check_loads(rank: int, world: int, root: str) -> tuple[list[str], list[str]]:
    """Load each source into every destination kind; (problems, refusal texts seen)."""
    problems: list[str] = []
    seen: list[str] = []
    for source in (1, 2):
        path = os.path.join(root, f"s{source}")
        want = _values(source)
        dest, wides = _dest(world)
        stale = (dest["odd"] * dest["odd"]).sum()  # saves "odd" for its backward
        try:
            reshard.load(dest, path)
        except Exception as e:  # noqa: BLE001 - reported with the scenario
            problems.append(f"source {source} -> {world}: rank {rank}: {type(e).__name__}: {e}")
            continue
        for key, value in dest.items():
            expect = want["tied_b"] if key.startswith("tied") else want[key]  # the later key wins
            expect = expect.to(value.dtype)
            if not torch.equal(_full(value), expect):
                problems.append(f"source {source} -> {world}: rank {rank}: key {key!r} differs")
        local = dest["cl"].to_local() if world > 1 else dest["cl"]
        if not local.is_contiguous(memory_format=torch.channels_last):
            problems.append(f"source {source} -> {world}: 'cl' is no longer channels_last")
        wide = wides["col"]
        left, right = (wide[:, :2], wide[:, 10:]) if world == 1 else (wide[:, :1], wide[:, -2:])
        if left.any() or right.any():
            problems.append(f"source {source} -> {world}: rank {rank}: bytes outside 'col' written")
        tied, odd = dest["tied_a"], dest["odd"]
        if not (tied.requires_grad and tied.is_leaf and dest["tied_b"] is tied and odd.requires_grad
                and dest["bf"].requires_grad and dest["bf"].dtype == torch.bfloat16):
            problems.append(f"source {source} -> {world}: rank {rank}: the parameters changed")
        (tied * 3).sum().backward()  # autograd works on the loaded parameters
        grad = _full(tied.grad)
        if not torch.equal(grad, torch.full(SHAPES["tied_a"], 3.0)):
            problems.append(f"source {source} -> {world}: rank {rank}: wrong gradient")
        try:
            stale.backward()
            problems.append(f"source {source} -> {world}: rank {rank}: a graph from before "
                            "the load ran backward")
        except RuntimeError as e:
            if "inplace" not in str(e):
                raise
    for name, dest, words in _refusals(world):
        try:
            reshard.load(dest, os.path.join(root, "s2"), strict=False)
            problems.append(f"{name} -> {world}: rank {rank}: loaded")
        except reshard.CheckpointError as e:
            seen.append(f"{name}: {type(e).__name__}: {e}")
            if words not in str(e):
                problems.append(f"{name} -> {world}: rank {rank}: {type(e).__name__}: {e}")
        for leaf in dest.values():
            local = leaf.to_local() if hasattr(leaf, "to_local") else leaf
            if not local.is_meta and local.any():
                problems.append(f"{name} -> {world}: rank {rank}: written before the refusal")
    return problems, seen


def _world(rank: int, world: int, root: str) -> tuple[list[str], list[str]]:
    with failing_marks(root, world):
        if world == 2:
            _save_world(rank, world, os.path.join(root, "s2"))
            if rank == 0:
                mark_stage(root, world, "saved")
        else:
            wait_for_stage(root, 2, "saved")
        return check_loads(rank, world, root)


def test_destinations_of_every_kind(tmp_path: Any) -> None:
    root = str(tmp_path)
    reshard.save(_values(1), os.path.join(root, "s1"))
    results = run_worlds_at_once(_world, (2, 3), root, timeout_s=240)
    problems: list[str] = []
    for world in (2, 3):
        if isinstance(results[world], BaseException):
            raise results[world]
        problems += [p for rank_problems, _ in results[world] for p in rank_problems]
        seen = [s for _, s in results[world]]
        assert all(s == seen[0] for s in seen), f"ranks of {world} disagree: {seen}"
        assert len(seen[0]) == 4, seen[0]
    p1, seen1 = check_loads(0, 1, root)
    assert not problems + p1, "\n".join(problems + p1)
    assert len(seen1) == 4, seen1
