"""Loading complex values into a real destination is refused, by key, on every rank.

Both read paths dropped the imaginary part with only a torch warning: the frame path and
the column-tile path (chunks with column checksums, read by tiles into a Shard(1)
destination; transfer/column_reads.py). Now the load's agreed
planning step raises LayoutMismatchError naming the key and both dtypes before any byte is
written. Real into complex (and the other conversions ``Tensor.copy_`` makes) still loads.
One world of 2 ranks runs every scenario.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.helpers.column_checks import column_checksums_on_small_boxes
from tests.helpers.world import run_world

pytestmark = pytest.mark.dist

ROWS, COLS = 16, 24


def _complex(dtype: torch.dtype, rows: int = ROWS, cols: int = COLS) -> torch.Tensor:
    base = torch.arange(rows * cols, dtype=torch.float64).reshape(rows, cols)
    return torch.complex(base, -base - 0.5).to(dtype)


def _expect_refused(name: str, state: dict[str, Any], path: str, dtypes: tuple[str, str],
                    problems: list[str]) -> None:
    try:
        reshard.load(state, path)
    except reshard.LayoutMismatchError as e:
        text = str(e)
        if "'c'" not in text or dtypes[0] not in text or dtypes[1] not in text:
            problems.append(f"{name}: unclear error: {text}")
        if "imaginary" not in text:
            problems.append(f"{name}: the error does not say what would be lost: {text}")
    except Exception as e:  # noqa: BLE001 - reported with the scenario's name
        problems.append(f"{name}: {type(e).__name__} instead of LayoutMismatchError: {e}")
    else:
        problems.append(f"{name}: loaded complex values into {dtypes[1]} without an error")


def _untouched(name: str, state: dict[str, Any], problems: list[str]) -> None:
    for key, value in state.items():
        local = value.to_local() if hasattr(value, "to_local") else value
        local = torch.from_numpy(np.asarray(local)) if isinstance(local, np.ndarray) else local
        if local.numel() and not bool((local == -7).all()):
            problems.append(f"{name}: key {key!r} was written before the error")


def _count_tile_reads() -> list[int]:
    """A list that grows by one for each column-tile read job of this process."""
    from reshard.transfer import column_reads

    calls: list[int] = []
    run = column_reads.run_tile_job

    def counted(*args: Any) -> None:
        calls.append(1)
        run(*args)

    column_reads.run_tile_job = counted  # type: ignore[assignment]
    return calls


def _world(rank: int, world: int, root: str) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    frames, columns = os.path.join(root, "frames"), os.path.join(root, "columns")
    reshard.save({"c": _complex(torch.complex64, 6, 5), "ok": torch.arange(4.0)}, frames)
    with column_checksums_on_small_boxes(4):  # one chunk, read by tiles on dim 1
        reshard.save({"c": _complex(torch.complex128), "ok": torch.arange(4.0)}, columns)
    tiles = _count_tile_reads()
    problems: list[str] = []

    def full(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.full(shape, -7, dtype=dtype)

    def sharded(dtype: torch.dtype, dim: int) -> Any:
        return distribute_tensor(full(dtype, (ROWS, COLS)), mesh, [Shard(dim)])

    refused: list[tuple[str, str, dict[str, Any], tuple[str, str]]] = [
        ("frames into float32", frames,
         {"ok": full(torch.float32, (4,)), "c": full(torch.float32, (6, 5))},
         ("complex64", "float32")),
        ("frames into a numpy float64 array", frames,
         {"ok": full(torch.float32, (4,)), "c": np.full((6, 5), -7.0)}, ("complex64", "float64")),
        ("frames into int64", frames,
         {"c": full(torch.int64, (6, 5)), "ok": full(torch.float32, (4,))}, ("complex64", "int64")),
        ("column tiles into a Shard(1) float64 DTensor", columns,
         {"ok": full(torch.float32, (4,)), "c": sharded(torch.float64, 1)},
         ("complex128", "float64")),
        ("column tiles into a Shard(0) float32 DTensor", columns,
         {"ok": full(torch.float32, (4,)), "c": sharded(torch.float32, 0)},
         ("complex128", "float32")),
        ("column tiles into a whole float64 tensor", columns,
         {"ok": full(torch.float32, (4,)), "c": full(torch.float64, (ROWS, COLS))},
         ("complex128", "float64")),
        # Only rank 1 asks for real values: every rank raises, rank 0 too.
        ("rank 1 alone into float32", frames,
         {"ok": full(torch.float32, (4,)),
          "c": full(torch.complex64 if rank == 0 else torch.float32, (6, 5))},
         ("complex64", "float32")),
    ]
    for name, path, state, dtypes in refused:
        _expect_refused(name, state, path, dtypes, problems)
        if not name.startswith("rank 1 alone"):
            _untouched(name, state, problems)
    # What still loads: complex into complex of the other width (column tiles), real into
    # complex, and an empty shard of a real dtype (it receives nothing).
    state = {"c": sharded(torch.complex64, 1)}
    reshard.load(state, columns)
    if not torch.equal(state["c"].full_tensor(), _complex(torch.complex64)):
        problems.append("complex128 column tiles into complex64: values differ")
    if not tiles:
        problems.append("the Shard(1) load read no column tiles: the tile path went untested")
    state = {"r": full(torch.complex128, (4,))}
    reshard.save({"r": torch.arange(4.0)}, os.path.join(root, "real"))
    reshard.load(state, os.path.join(root, "real"))
    if not torch.equal(state["r"], torch.arange(4.0).to(torch.complex128)):
        problems.append(f"real into complex: got {state['r']}")
    reshard.save({"c": _complex(torch.complex64, 1, 1)}, os.path.join(root, "one"))
    state = {"c": distribute_tensor(full(torch.complex64, (1, 1)), mesh, [Shard(0)])}
    reshard.load(state, os.path.join(root, "one"))  # rank 1's shard is empty
    if not torch.equal(state["c"].full_tensor(), _complex(torch.complex64, 1, 1)):
        problems.append("one element over 2 ranks: values differ")
    return [f"rank {rank}: {p}" for p in problems]


def test_complex_into_real_is_refused_on_every_rank(tmp_path: Any) -> None:
    results = run_world(_world, 2, str(tmp_path), timeout_s=180)
    problems = [p for r in results for p in r]
    assert not problems, "\n".join(problems)
