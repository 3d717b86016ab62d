"""``_StridedShard`` DTensors (FSDP2 over tensor parallelism and odder layouts) with the
save and load options users combine them with: column blocks, zstd, async_save,
cooperative reads, loads into non-contiguous locals and into another dtype, strict=False,
``reshard.open(...).read`` of any index, and meshes whose ranks are not ascending (with
their sub-meshes). Uneven strided shards are built with ``DTensor.from_local`` from
torch's own ``_split_tensor`` (distribute_tensor cannot build them), placed by
process-group rank as DTensor's collectives place them.

One world of 4 ranks runs every scenario and reports failures by name.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch

import reshard
from reshard import config
from tests.helpers.world import run_world

from .layouts import torch_placements

pytestmark = pytest.mark.dist

MESHES: dict[str, Any] = {
    "2x2": [[0, 1], [2, 3]], "rev2x2": [[3, 2], [1, 0]], "mix2x2": [[2, 0], [3, 1]],
    "4": [0, 1, 2, 3], "rev4": [3, 1, 0, 2], "2x1x2": [[[0, 1]], [[2, 3]]],
    "rev2x1x2": [[[3, 1]], [[2, 0]]],
}
# (name, mesh, placements, shape): uneven sizes, ranks holding nothing, strided on dim 1.
SAVES = [
    ("fsdp_tp_uneven", "2x2", "SS0/2,S0", (13, 6)),
    ("s0_ss0_3", "2x2", "S0,SS0/3", (10, 7)),
    ("ss1_s1", "2x2", "SS1/2,S1", (5, 11)),
    ("rev_fsdp_tp", "rev2x2", "SS0/2,S0", (9, 4)),
    ("mix_ss1_ss0", "mix2x2", "SS1/3,SS0/2", (7, 8)),
    ("3d_ss0", "2x1x2", "SS0/2,R,S0", (7, 3)),
    ("rev3d_ss2", "rev2x1x2", "S2,SS2/3,SS2/2", (2, 3, 11)),
    ("empty_ranks", "4", "SS0/3", (2, 5)),
    ("rev4_ss1", "rev4", "SS1/2", (3, 9)),
    ("empty_cols", "2x2", "SS0/2,S1", (4, 1)),  # two runs of rows, no column
    ("zero_rows", "mix2x2", "SS0/2,S0", (0, 5)),
    ("one_dim", "rev2x2", "SS0/3,S0", (11,)),
]
LOADS = [
    ("fsdp_tp", "2x2", "SS0/2,S0"),
    ("rev_s1_ss0", "rev2x2", "S1,SS0/3"),
    ("rev4_ss0", "rev4", "SS0/2"),
    ("3d", "rev2x1x2", "SS1/2,R,SS0/2"),
]
OPTIONS = ["plain", "zstd", "column_blocks", "async", "exchange"]


def _global(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.arange(math.prod(shape), dtype=torch.int64) + 1000 * seed).to(dtype).reshape(shape)


def _local_index(shape: tuple[int, ...], mesh: Any, placements: list[Any]) -> torch.Tensor:
    """Flat global indices this rank holds, by torch's own splits, each mesh dim taken at
    this rank's place in that dim's process group."""
    idx = torch.arange(math.prod(shape)).reshape(shape)
    if mesh.get_coordinate() is None:  # not in the mesh: holds nothing
        return idx.narrow(0, 0, 0) if idx.dim() else idx.reshape(-1)[:0]
    for mesh_dim, p in enumerate(placements):
        if p.is_replicate():
            continue
        parts, _ = p._split_tensor(idx, mesh.size(mesh_dim), with_padding=False, contiguous=True)
        idx = parts[mesh.get_local_rank(mesh_dim)]
    return idx


def _dtensor(full: torch.Tensor, mesh: Any, text: str, *, fill: float | None = None,
             dtype: torch.dtype | None = None, view: bool = False) -> Any:
    from torch.distributed.tensor import DTensor

    placements = torch_placements(text)
    idx = _local_index(tuple(full.shape), mesh, placements)
    local = full.reshape(-1)[idx].to(dtype or full.dtype)
    if fill is not None:
        local = torch.full_like(local, fill)
    if view:  # every other element of a larger buffer, transposed: not contiguous at all
        buf = torch.zeros((*reversed(local.shape), 2), dtype=local.dtype)[..., 0]
        local = buf.permute(*reversed(range(local.dim()))).copy_(local) if local.dim() else local
    stride = [1] * full.dim()
    for d in range(full.dim() - 2, -1, -1):
        stride[d] = stride[d + 1] * full.shape[d + 1]
    return DTensor.from_local(local, mesh, placements, run_check=False,
                              shape=full.shape, stride=tuple(stride))


def _expected_local(full: torch.Tensor, dt: Any) -> torch.Tensor:
    return full.reshape(-1)[_local_index(tuple(full.shape), dt.device_mesh, list(dt.placements))]


def _world(rank: int, world: int, root: str) -> list[str]:
    from torch.distributed.device_mesh import DeviceMesh

    meshes = {n: DeviceMesh("cpu", torch.tensor(r)) for n, r in MESHES.items()}
    config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = 24, 1
    problems: list[str] = []
    for i, (name, mesh, placements, shape) in enumerate(SAVES):
        full = _global(shape, i)
        saved = _dtensor(full, meshes[mesh], placements)
        if not torch.equal(saved.to_local(), _expected_local(full, saved)):
            problems.append(f"{name}: the test's own build is wrong")
        for option in OPTIONS:
            where = f"{name}/{option}"
            path = os.path.join(root, f"{name}_{option}")
            state = {"w": saved, "extra": {"step": i}}
            try:
                if option == "async":
                    reshard.async_save(state, path).result()
                else:
                    reshard.save(state, path, codec="zstd" if option == "zstd" else None,
                                 column_blocks=2 if option == "column_blocks" else None)
            except Exception as e:  # noqa: BLE001 - report and go on with the next case
                problems.append(f"{where}: save raised {type(e).__name__}: {e}")
                continue
            if option == "exchange":
                os.environ.update({"RESHARD_EXCHANGE_READS": "1",
                                   "RESHARD_EXCHANGE_MIN_NBYTES": "1",
                                   "RESHARD_EXCHANGE_ROUND_NBYTES": "40"})
            try:
                problems += _loads(where, path, full, meshes, every=option == "plain",
                                   convert=option == "exchange")
            except Exception as e:  # noqa: BLE001
                problems.append(f"{where}: load raised {type(e).__name__}: {e}")
            finally:
                for k in ("RESHARD_EXCHANGE_READS", "RESHARD_EXCHANGE_MIN_NBYTES",
                          "RESHARD_EXCHANGE_ROUND_NBYTES"):
                    os.environ.pop(k, None)
            if rank == 0:
                problems += _reads(where, path, full)
    return problems + _partial_and_flat(root)


def _partial_and_flat(root: str) -> list[str]:
    """A mesh of ranks 3 and 1 only (0 and 2 hold nothing), and the flattened 1-D
    sub-mesh of a reversed 2x2 mesh."""
    from torch.distributed.device_mesh import DeviceMesh

    problems = []
    partial = DeviceMesh("cpu", torch.tensor([3, 1]))
    flat = DeviceMesh("cpu", torch.tensor([[3, 2], [1, 0]]), mesh_dim_names=("a", "b"))[
        "a", "b"]._flatten("ab")
    full = _global((7, 5), 77)
    for name, mesh, placements, target in [("partial", partial, "SS0/3", "SS1/2"),
                                           ("partial_r", partial, "R", "S0"),
                                           ("flat", flat, "SS0/2", "SS1/3")]:
        path = os.path.join(root, name)
        reshard.save({"w": _dtensor(full, mesh, placements)}, path)
        loaded = {"w": _dtensor(full, mesh, target, fill=-1.0)}
        reshard.load(loaded, path)
        # torch gives a rank outside the mesh a local tensor of shape (0,)
        if mesh.get_coordinate() is not None and not torch.equal(
                loaded["w"].to_local(), _expected_local(full, loaded["w"])):
            problems.append(f"{name} -> {target}: values differ")
        plain = {"w": torch.zeros(7, 5)}
        reshard.load(plain, path)
        if not torch.equal(plain["w"], full):
            problems.append(f"{name} -> plain: values differ")
    return problems + _per_group(root) + _real_fsdp_tp(root) + _uneven_target(root)


def _uneven_target(root: str) -> list[str]:
    """A load target torch builds wrong (distribute_tensor's uneven shards on a reversed
    mesh: sizes by mesh coordinate, data by group rank) is refused on every rank, naming
    the key, and left untouched."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    path = os.path.join(root, "uneven_plain")
    reshard.save({"w": _global((9, 7), 5)}, path)
    mesh = DeviceMesh("cpu", torch.tensor([[3, 2], [1, 0]]))
    target = distribute_tensor(torch.full((9, 7), -1.0), mesh, [Shard(0), Shard(1)])
    before = target.to_local().clone()  # torch's padding leaves zeros in some of it
    try:
        reshard.load({"w": target}, path)
    except reshard.LayoutMismatchError as e:
        problems = [] if "'w'" in str(e) and "not ascending" in str(e) else [f"unclear: {e}"]
        if not torch.equal(target.to_local(), before):
            problems.append("the refused load wrote into the target")
        return problems
    return ["a load into uneven shards of a reversed mesh did not raise"]


def _real_fsdp_tp(root: str) -> list[str]:
    """FSDP2 (and HSDP) over TP on meshes whose ranks are not ascending, with uneven
    shards: the checkpoint must hold the model's own weights. Checked against the seeded
    model itself, not ``full_tensor()``: on ``[[3, 2], [0, 1]]`` torch's gather of these
    ``_StridedShard`` weights returns rows in the wrong order."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(7, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))

    truth = model().state_dict()
    problems = []
    for i, ranks in enumerate(([[[3, 2], [0, 1]]], [[3, 2], [0, 1]], [[[3, 1]], [[2, 0]]])):
        names = ("rep", "shard", "tp")[-len(torch.tensor(ranks).shape):]
        mesh = DeviceMesh("cpu", torch.tensor(ranks), mesh_dim_names=names)
        parallel = model()
        parallelize_module(parallel, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        fully_shard(parallel, mesh=mesh[names[:-1]] if len(names) == 3 else mesh["shard"])
        path = os.path.join(root, f"fsdp_tp_{i}")
        reshard.save(parallel.state_dict(), path)
        plain = {k: torch.full_like(v, -1.0) for k, v in truth.items()}
        reshard.load(plain, path)
        problems += [f"fsdp+tp on {ranks}: {k} differs from the model's weights"
                     for k, v in truth.items() if not torch.equal(plain[k], v)]
    return problems


def _per_group(root: str) -> list[str]:
    """Each tp group of a reversed 2x2 mesh saves its own checkpoint over its own process
    group (group ranks [2, 3] and [0, 1]); a dp group then loads group 0's."""
    from torch.distributed.device_mesh import DeviceMesh

    problems = []
    mesh = DeviceMesh("cpu", torch.tensor([[3, 2], [1, 0]]), mesh_dim_names=("dp", "tp"))
    tp, dp, g = mesh["tp"], mesh["dp"], mesh.get_local_rank(0)
    for i, placements in enumerate(("SS0/2", "SS1/3", "R")):
        full = _global((5, 7), 10 * i + g)
        path = os.path.join(root, f"group{g}_{i}")
        reshard.save({"w": _dtensor(full, tp, placements), "i": i}, path,
                     process_group=tp.get_group())
        loaded = {"w": _dtensor(full, tp, "SS0/3", fill=-1.0), "i": None}
        reshard.load(loaded, path, process_group=tp.get_group())
        if not torch.equal(loaded["w"].to_local(), _expected_local(full, loaded["w"])):
            problems.append(f"group {g} {placements} -> SS0/3: values differ")
        first = _global((5, 7), 10 * i)
        across = {"w": _dtensor(first, dp, "SS1/2", fill=-1.0)}
        reshard.load(across, os.path.join(root, f"group0_{i}"), process_group=dp.get_group())
        if not torch.equal(across["w"].to_local(), _expected_local(first, across["w"])):
            problems.append(f"group 0 {placements} -> dp group SS1/2: values differ")
    return problems


def _loads(where: str, path: str, full: torch.Tensor, meshes: dict[str, Any], *,
           every: bool, convert: bool) -> list[str]:
    """Into each of LOADS as a fresh local, a non-contiguous one and float64 with
    strict=False (``every``), else into one of them; then into a plain tensor."""
    problems = []
    for load_name, mesh, placements in LOADS if every else LOADS[1:2]:
        if any(int(p.split("/")[0].lstrip("S")) >= full.dim()
               for p in placements.split(",") if p != "R"):
            continue
        for kind in ("same", "view", "float64") if every else ("view", "float64")[:1 + convert]:
            target = _dtensor(full, meshes[mesh], placements, fill=-1.0, view=kind == "view",
                              dtype=torch.float64 if kind == "float64" else None)
            state = {"w": target}
            if kind == "float64":  # strict=False with a key the checkpoint lacks
                state["missing"] = torch.zeros(2)
            reshard.load(state, path, strict=kind != "float64")
            want = _expected_local(full, target).to(target.dtype)
            got = state["w"].to_local()
            if not torch.equal(got, want):
                problems.append(f"{where} -> {load_name} {placements} ({kind}): "
                                f"{int((got != want).sum())} of {want.numel()} elements differ")
        plain = {"w": torch.full(tuple(full.shape), -1.0)}
        reshard.load(plain, path)
        if not torch.equal(plain["w"], full):
            problems.append(f"{where} -> plain: values differ")
    return problems


def _reads(where: str, path: str, full: torch.Tensor) -> list[str]:
    problems = []
    with reshard.open(path) as ckpt:
        for index in (None, 0, -1, slice(1, None), (slice(None), slice(1, 3))):
            if (isinstance(index, tuple) and full.dim() < 2) or (
                    isinstance(index, int) and full.shape[0] == 0):
                continue
            got = torch.as_tensor(ckpt.read("w", index))
            want = full if index is None else full[index]
            if not torch.equal(got, want):
                problems.append(f"{where}: open().read(w, {index}) differs")
    return problems


def test_strided_shards_with_options(tmp_path: Any) -> None:
    results = run_world(_world, 4, str(tmp_path), timeout_s=240)
    problems = sorted({p for r in results for p in r})
    assert not problems, "\n".join(problems)
