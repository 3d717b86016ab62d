"""core.layout.placed_runs against torch's own split of an index tensor, placement by
placement: the semantics reshard follows for ``_StridedShard`` DTensors are torch's."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from reshard.core.layout import placed_runs

placement_types = pytest.importorskip("torch.distributed.tensor.placement_types")


def _torch_indices(shape: tuple[int, ...], mesh: tuple[int, ...],
                   placements: list[tuple[str, int, int]], coord: tuple[int, ...]) -> list[list[int]]:
    idx = [torch.arange(n) for n in shape]
    for (kind, d, split), n, c in zip(placements, mesh, coord):
        if kind == "replicate":
            continue
        p = (placement_types._StridedShard(0, split_factor=split) if kind == "strided_shard"
             else placement_types.Shard(0))
        parts, _ = p._split_tensor(idx[d], n, with_padding=False, contiguous=True)
        idx[d] = parts[c]
    return [x.tolist() for x in idx]


def test_placed_runs_match_torch_splits() -> None:
    rng = random.Random(7)
    cases = 0
    for _ in range(400):
        shape = tuple(rng.randint(0, 13) for _ in range(rng.randint(1, 3)))
        mesh = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 3)))
        placements = []
        for _ in mesh:
            kind = rng.choice(["shard", "strided_shard", "replicate"])
            placements.append((kind, -1 if kind == "replicate" else rng.randrange(len(shape)),
                               rng.randint(1, 5) if kind == "strided_shard" else 1))
        for coord in itertools.product(*[range(m) for m in mesh]):
            runs = placed_runs(shape, mesh, placements, coord)
            got = [[g + i for g, k in r for i in range(k)] for r in runs]
            assert got == _torch_indices(shape, mesh, placements, coord), (
                shape, mesh, placements, coord)
            cases += 1
    assert cases > 1000
