"""The state the golden checkpoints hold, as a formula (never read back from the files).

Changing anything here breaks the compat tests on purpose: golden checkpoints are made once,
committed, and must load with exactly these values forever.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

GOLDENS = {"golden_v1": None, "golden_v1_zstd": "zstd", "golden_v1_shuffle_zstd": "zstd",
           "golden_v1_planes_zstd": "zstd", "golden_v1_1_columns": None}
"""Golden folder name -> the ``codec=`` it was saved with. golden_v1_zstd was saved when
``"zstd"`` meant plain zstd frames, golden_v1_shuffle_zstd when it meant shuffle-zstd; it
now means planes-zstd for elements wider than a byte (committed goldens are never
regenerated)."""

GOLDEN_CODEC_OF_W = {"golden_v1": "identity", "golden_v1_zstd": "zstd",
                     "golden_v1_shuffle_zstd": "shuffle-zstd", "golden_v1_planes_zstd": "planes-zstd",
                     "golden_v1_1_columns": "identity"}
"""The codec recorded for the chunks of ``model.w`` (float32) in each golden."""

GOLDEN_COLUMN_PARTS = {"golden_v1_1_columns": 3}
"""Goldens saved with column checksums (format 1.1) on every box of two or more dims, in
this many parts, with tiles of a few rows (tests/helpers/column_checks.py)."""


def format_version(name: str) -> tuple[int, int]:
    return (1, 1) if name in GOLDEN_COLUMN_PARTS else (1, 0)

FRAME_RAW_NBYTES = 64
"""Tiny frames, so the goldens exercise multi-frame chunks."""


def full_tensors() -> dict[str, torch.Tensor]:
    """The global value of every tensor key (dotted name -> tensor)."""
    return {
        "model.w": torch.arange(60, dtype=torch.float32).reshape(10, 6) * 0.5 - 7,
        "model.b": (torch.arange(7, dtype=torch.float32) / 3).to(torch.bfloat16),
        "model.ids": torch.arange(15, dtype=torch.int64).reshape(5, 3) * (2**40 + 1) - 3,
        "mask": torch.arange(9) % 2 == 1,
        "half": torch.arange(16, dtype=torch.float32).reshape(4, 4).to(torch.float16) / 8,
        "bytes8": torch.arange(200, 250, dtype=torch.int32).to(torch.uint8),
        "signed8": (torch.arange(20, dtype=torch.int32) - 10).to(torch.int8),
        "c64": torch.complex(torch.arange(3.0), -torch.arange(3.0)),
        "f64": torch.arange(12, dtype=torch.float64).reshape(2, 2, 3) / 7,
        "optim.state.0.exp_avg": torch.arange(6, dtype=torch.float32) * -1.5,
        "scalar0d": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
    }


def plain_values() -> dict[str, Any]:
    return {
        "optim.state.0.step": 7,
        "optim.param_groups.0.lr": 0.001,
        "optim.param_groups.0.name": "adamw",
        "meta.none": None,
        "meta.flag": True,
        "meta.big": 2**70 + 5,
        "meta.blob": b"\x00\x01\xfe\xff",
        "meta.inf": math.inf,
        "meta.empty_dict": {},
        "meta.empty_list": [],
    }


def numpy_values() -> dict[str, Any]:
    return {"np.arr": np.arange(12, dtype=np.int32).reshape(3, 4) - 5,
            "np.scalar": np.float64(2.5)}


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to nested dicts; the part after 'state.' / 'param_groups.' index is an int."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        parts: list[Any] = name.split(".")
        for i, p in enumerate(parts):
            if p.isdigit():
                parts[i] = int(p)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def saving_state(rank: int, world_size: int, mesh: Any) -> dict[str, Any]:
    """What each rank passes to ``save``: model tensors sharded as DTensors over ``mesh``."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    flat: dict[str, Any] = dict(full_tensors())
    flat["model.w"] = distribute_tensor(flat["model.w"], mesh, [Shard(0)])
    flat["model.b"] = distribute_tensor(flat["model.b"], mesh, [Shard(0)])
    flat["model.ids"] = distribute_tensor(flat["model.ids"], mesh, [Shard(1)])
    flat["f64"] = distribute_tensor(flat["f64"], mesh, [Replicate()])
    flat.update(plain_values())
    flat.update(numpy_values())
    sd = nested(flat)
    sd["optim"]["param_groups"] = [sd["optim"]["param_groups"][0]]
    return sd
