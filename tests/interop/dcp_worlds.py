"""Rank functions for the DCP interop tests: save real DCP checkpoints on 4 ranks,
load them with reshard on 2. Importable by spawned processes."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

# (name, global shape, dtype, mesh "1d"/"2d", placements as strings)
TENSORS: list[tuple[str, tuple[int, ...], torch.dtype, str, tuple[str, ...]]] = [
    ("model.w_rows", (10, 6), torch.float32, "1d", ("S0",)),
    ("model.w_cols", (5, 7), torch.int64, "1d", ("S1",)),
    ("model.tiny", (3, 4), torch.float64, "1d", ("S0",)),  # rank 3 holds an empty shard
    ("model.bf16", (13,), torch.bfloat16, "1d", ("S0",)),
    ("model.grid", (9, 7), torch.float32, "2d", ("S0", "S1")),
    ("model.half_rep", (6, 5), torch.int32, "2d", ("S0", "R")),
    ("model.rep_half", (5, 11), torch.float16, "2d", ("R", "S1")),
    ("model.flip", (7, 9), torch.float32, "2d", ("S1", "S0")),
    ("model.rep", (4, 3), torch.float32, "1d", ("R",)),
]
PLAIN = {"plain.scalar": ((), torch.float32), "plain.vec": ((17,), torch.int16)}
VALUES: dict[str, Any] = {
    "step": 10, "lr": 0.5, "name": "adamw", "betas": (0.9, 0.99), "flags": [True, False],
    "nothing": None, "blob": b"\x00\x01bytes",
}
SCENARIOS = ("plain", "zstd")
LOADED = SCENARIOS + ("converted",)  # "converted": DCP -> reshard -> safetensors -> reshard


def expected(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An arange-filled tensor unique to ``name`` so any misplaced element fails."""
    base = sum(ord(c) for c in name) % 97
    n = math.prod(shape)
    if dtype == torch.bool:
        return (torch.arange(n) % 3 == 0).reshape(shape)
    return (torch.arange(n, dtype=torch.float64) + base).to(dtype).reshape(shape)


def _placements(codes: tuple[str, ...]) -> list[Any]:
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if c == "R" else Shard(int(c[1:])) for c in codes]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def save_dcp_world(rank: int, world_size: int, root: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    meshes = {"1d": init_device_mesh("cpu", (4,)), "2d": init_device_mesh("cpu", (2, 2))}
    flat: dict[str, Any] = {}
    for name, shape, dtype, mesh, codes in TENSORS:
        flat[name] = distribute_tensor(expected(name, shape, dtype), meshes[mesh], _placements(codes))
    for name, (shape, dtype) in PLAIN.items():
        flat[name] = expected(name, shape, dtype)
    sd = _nest(flat)
    sd["extra"] = dict(VALUES)
    for scenario in SCENARIOS:
        ext = [ZStandard()] if scenario == "zstd" else None
        dcp.save(sd, storage_writer=FileSystemWriter(os.path.join(root, scenario), _extensions=ext))


# Load on another world size with other placements.
LOAD_PLACEMENTS = {"S0": ("S1",), "S1": ("S0",), "R": ("S0",)}


def load_dcp_world(rank: int, world_size: int, root: str) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    import reshard

    mesh = init_device_mesh("cpu", (world_size,))
    failures: list[str] = []
    for scenario in LOADED:
        for variant in range(2):
            flat: dict[str, Any] = {}
            for name, shape, dtype, _, codes in TENSORS:
                # variant 0: swap the sharded dim; variant 1: replicate everything.
                place = LOAD_PLACEMENTS[codes[0]] if variant == 0 else ("R",)
                if len(shape) < 2 and place == ("S1",):
                    place = ("S0",)
                zeros = torch.zeros(shape, dtype=dtype)
                flat[name] = distribute_tensor(zeros, mesh, _placements(place))
            for name, (shape, dtype) in PLAIN.items():
                flat[name] = torch.zeros(shape, dtype=dtype)
            sd = _nest(flat)
            sd["extra"] = {"step": 0, "lr": 0.0, "name": "", "betas": (0.0, 0.0),
                           "flags": [False, False], "nothing": 1, "blob": b""}
            try:
                reshard.load(sd, os.path.join(root, scenario))
            except Exception as e:  # noqa: BLE001 - reported with the scenario name
                failures.append(f"{scenario}/{variant}: load raised {type(e).__name__}: {e}")
                continue
            failures += check(sd, f"{scenario}/{variant}", dtensor=True)
    return failures


def check(sd: dict[str, Any], where: str, *, dtensor: bool) -> list[str]:
    failures: list[str] = []
    flat = {name: (shape, dtype) for name, shape, dtype, _, _ in TENSORS}
    flat.update(PLAIN)
    for name, (shape, dtype) in flat.items():
        node: Any = sd
        for p in name.split("."):
            node = node[p]
        got = node.full_tensor() if dtensor and hasattr(node, "full_tensor") else node
        want = expected(name, shape, dtype)
        if got.dtype != dtype or not torch.equal(got, want):
            failures.append(f"{where}: {name}: got {got} want {want}")
    extra = dict(sd["extra"])
    want_values = dict(VALUES)
    if extra != want_values:
        failures.append(f"{where}: values {extra} != {want_values}")
    return failures
