"""DCP checkpoints saved by worlds of 4 and 3 ranks, loaded by reshard in the other world.

torch.distributed.checkpoint.save writes DTensors on 1-D, 2-D and 3-D meshes (nested
shards on one dim, shards on dims 1 to 4, uneven and empty shards), bf16, bool, int8,
complex64, float16 tensors of 1 to 5 dims, a 0-dim tensor, an optimizer state with an
integer key and a list of param groups, non-tensor values (nested dicts, lists, tuples,
None, str), and 1 MiB chunks that convert cuts. Rank 0 of each world converts the other
world's DCP checkpoint: DCP -> reshard (zstd, column blocks 3) and DCP -> sharded
safetensors -> reshard.
Then each world loads, with reshard.load, the other world's DCP checkpoint directly and
both conversions into meshes, LocalShardsWrapper and protocol row pieces that differ from
the saved layout; every element and every value is compared exactly.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import pytest

from tests.dist.layouts import Full, Layout, Mesh, Meshes, Rows, build, check
from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

pytestmark = pytest.mark.dist

Problem = tuple[str, int, int, str]

# (name, shape, dtype name, save mesh, save placements) per saving world
SAVED: dict[int, list[tuple[str, tuple[int, ...], str, tuple[int, ...], str]]] = {
    4: [("a", (10, 7), "bfloat16", (2, 1, 2), "S0,R,S1"),
        ("b", (3, 5), "bool", (2, 2), "S0,S0"),  # nested on dim 0: two empty shards
        ("c", (1, 9), "int8", (4,), "S0"),  # three empty shards
        ("d", (6, 2, 5), "float32", (1, 2, 2), "R,S2,S1"),
        ("e", (4,), "complex64", (2, 2), "R,S0"),
        ("f", (2, 3, 1, 2, 4), "float16", (2, 1, 2), "S4,S1,R"),
        ("g", (13, 6), "int64", (2, 2), "S1,S0"),
        ("h", (1024, 1024), "float32", (2, 1, 2), "S0,R,S1")],  # 1 MiB chunks: convert cuts them
    3: [("a", (10, 7), "bfloat16", (3,), "S1"),
        ("b", (3, 5), "bool", (3,), "S0"),
        ("c", (1, 9), "int8", (1, 3), "S0,S1"),
        ("d", (6, 2, 5), "float32", (3, 1), "S2,S0"),
        ("e", (4,), "complex64", (3,), "S0"),
        ("f", (2, 3, 1, 2, 4), "float16", (3,), "R"),
        ("g", (13, 6), "int64", (3, 1, 1), "S0,R,S1"),
        ("h", (1024, 1024), "float32", (3,), "S1")],
}
VALUES: dict[str, Any] = {
    "step": 7, "name": "run-1", "sched": {"milestones": [1, 2], "gamma": 0.5}, "none": None,
    "pair": (1, "a"), "nested": [{"a": 1}, {"b": [True, False]}],
}
# Load layouts per loading world, tried in turn on each tensor (shards on missing dims
# become Replicate; row layouts apply to tensors of 2+ rows, LocalShardsWrapper to 2-D).
LOAD_LAYOUTS: dict[int, list[Layout]] = {
    4: [Mesh("2x1x2", "S1,R,S0"), Rows("lsw", ()), Mesh("2x2", "S0,S1"), Rows("proto", ()),
        Mesh("4", "S0")],
    3: [Mesh("3", "S1"), Rows("proto", ()), Mesh("1x3", "R,S0"), Rows("lsw", ()),
        Mesh("3x1", "S0,R")],
}


def expected(name: str, shape: tuple[int, ...], dtype_name: str) -> Any:
    """Exact values unique to ``name`` (within what the dtype holds)."""
    import torch

    base = sum(map(ord, name)) % 97
    n = math.prod(shape)
    i = torch.arange(n, dtype=torch.int64) + base
    if dtype_name == "bool":
        return (i * 7 % 3 == 0).reshape(shape)
    if dtype_name == "bfloat16":
        return (i % 256).to(torch.bfloat16).reshape(shape)
    if dtype_name == "int8":
        return (i % 251 - 125).to(torch.int8).reshape(shape)
    if dtype_name == "complex64":
        return torch.complex(i.float(), -i.float() - 0.5).reshape(shape)
    return i.to(getattr(torch, dtype_name)).reshape(shape)


def _placements(codes: str) -> list[Any]:
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if c == "R" else Shard(int(c[1:])) for c in codes.split(",")]


def _save_dcp(rank: int, world: int, root: str, meshes: Meshes) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.tensor import distribute_tensor

    sd: dict[str, Any] = {"m": {}}
    for name, shape, dt, mesh, codes in SAVED[world]:
        sd["m"][name] = distribute_tensor(expected(name, shape, dt), meshes.get(mesh),
                                          _placements(codes))
    sd["opt"] = {"state": {0: {"step": torch.tensor(3.0),
                               "exp_avg": expected("exp_avg", (4, 3), "float32")}},
                 "param_groups": [{"lr": 0.1, "params": [0]}]}
    sd["extra"] = dict(VALUES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(os.path.join(root, f"dcp{world}")))


def _convert(root: str, source_world: int) -> None:
    from reshard.interop.convert import convert

    src = os.path.join(root, f"dcp{source_world}")
    convert(src, os.path.join(root, f"r{source_world}"), codec="zstd", column_blocks=3)
    convert(src, os.path.join(root, f"st{source_world}"), max_shard_nbytes=200)
    convert(os.path.join(root, f"st{source_world}"), os.path.join(root, f"rst{source_world}"))


def _fit(layout: Layout, shape: tuple[int, ...], world: int) -> Layout:
    if isinstance(layout, Mesh):
        parts = [p if p == "R" or int(p[1:]) < len(shape) else "R"
                 for p in layout.placements.split(",")]
        return Mesh(layout.mesh, ",".join(parts))
    if isinstance(layout, Rows) and len(shape) >= 1 and shape[0] >= 2 and (
            layout.kind != "lsw" or len(shape) == 2):
        n0 = shape[0]
        # Uneven pieces: the last rank holds none, the first two.
        cut = [0, n0 // 3, n0 // 2, n0]
        per: list[list[tuple[int, int]]] = [[] for _ in range(world)]
        per[0] = [(cut[0], cut[1] - cut[0]), (cut[2], cut[3] - cut[2])]
        per[1] = [(cut[1], cut[2] - cut[1])]
        return Rows(layout.kind, tuple(tuple(p for p in r if p[1] > 0) for r in per))
    return Full(world)


def _target(rank: int, world: int, saver: int, variant: int, meshes: Meshes,
            ) -> tuple[dict[str, Any], dict[str, Layout]]:
    import torch

    layouts = LOAD_LAYOUTS[world]
    sd: dict[str, Any] = {"m": {}}
    lays: dict[str, Layout] = {}
    for i, (name, shape, dt, _, _) in enumerate(SAVED[saver]):
        lays[name] = _fit(layouts[(i + variant) % len(layouts)], shape, world)
        sd["m"][name] = build(lays[name], shape, getattr(torch, dt), rank, meshes, None)
    sd["opt"] = {"state": {0: {"step": torch.tensor(0.0), "exp_avg": torch.zeros(4, 3)}},
                 "param_groups": [{"lr": 0.0, "params": [9]}]}
    sd["extra"] = {"step": 0, "name": "", "sched": {"milestones": [0, 0], "gamma": 0.0},
                   "none": 1, "pair": (0, ""), "nested": [{"a": 0}, {"b": [None, None]}]}
    return sd, lays


def _check(sd: dict[str, Any], lays: dict[str, Layout], saver: int, meshes: Meshes) -> list[str]:
    import torch

    out: list[str] = []
    for name, shape, dt, _, _ in SAVED[saver]:
        out += [f"m.{name} ({lays[name]}): {m}"
                for m in check(lays[name], sd["m"][name], expected(name, shape, dt), meshes)]
    state = sd["opt"]["state"][0]
    if not torch.equal(state["exp_avg"], expected("exp_avg", (4, 3), "float32")):
        out.append("opt.state.0.exp_avg differs")
    if not torch.equal(state["step"], torch.tensor(3.0)):
        out.append(f"opt.state.0.step is {state['step']}")
    if sd["opt"]["param_groups"] != [{"lr": 0.1, "params": [0]}]:
        out.append(f"param_groups {sd['opt']['param_groups']}")
    if sd["extra"] != VALUES:
        out.append(f"extra {sd['extra']} != {VALUES}")
    return out


def worlds(rank: int, world: int, root: str) -> list[Problem]:
    import reshard

    meshes = Meshes()
    other = 3 if world == 4 else 4
    with failing_marks(root, world):
        _save_dcp(rank, world, root, meshes)
    if rank == 0:
        mark_stage(root, world, "saved")
        wait_for_stage(root, other, "saved")
        with failing_marks(root, world):
            _convert(root, other)
        mark_stage(root, world, "converted")
    wait_for_stage(root, world, "converted")  # converted by this world's rank 0
    problems: list[Problem] = []
    loads = [(f"dcp{other}", other), (f"r{other}", other), (f"rst{other}", other),
             (f"dcp{world}", world)]
    for variant, (name, saver) in enumerate(loads):
        sd, lays = _target(rank, world, saver, variant + 1, meshes)
        try:
            reshard.load(sd, os.path.join(root, name))
        except Exception as e:  # noqa: BLE001 - reported with its scenario
            problems.append((name, world, rank, f"load raised {type(e).__name__}: {e}"))
            continue
        problems += [(name, world, rank, m) for m in _check(sd, lays, saver, meshes)]
    return problems


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[int, Any]]:
    root = str(tmp_path_factory.mktemp("dcp_worlds"))
    return root, run_worlds_at_once(worlds, (4, 3), root, timeout_s=240)


@pytest.mark.parametrize("world", [4, 3])
def test_dcp_of_one_world_loads_in_the_other(outcome: tuple[str, dict[int, Any]], world: int) -> None:
    result = outcome[1][world]
    if isinstance(result, BaseException):
        raise result
    problems = [p for rank_problems in result for p in rank_problems]
    lines = [f"{n} [world {w}, rank {r}]: {m}" for n, w, r, m in problems[:30]]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(lines)


def test_converted_files_read_back_in_one_process(outcome: tuple[str, dict[int, Any]]) -> None:
    """The safetensors files hold the DCP tensors under their dotted names; reshard.open
    reads every tensor of every conversion whole."""
    import torch
    from safetensors.torch import load_file

    import reshard

    root, results = outcome
    if any(isinstance(r, BaseException) for r in results.values()):
        pytest.skip("a world failed (reported by its own test)")
    for saver in (4, 3):
        st_dir = os.path.join(root, f"st{saver}")
        files = [f for f in os.listdir(st_dir) if f.endswith(".safetensors")]
        assert len(files) > 1, files  # sharded at 200 bytes
        got: dict[str, Any] = {}
        for f in files:
            got.update(load_file(os.path.join(st_dir, f)))
        for name, shape, dt, _, _ in SAVED[saver]:
            assert torch.equal(got[f"m.{name}"], expected(name, shape, dt)), (saver, name)
        with reshard.open(os.path.join(root, f"dcp{saver}")) as dcp_ck, \
                reshard.open(os.path.join(root, f"r{saver}")) as cut_ck:
            # Each 1 MiB (or larger) DCP chunk of m.h was cut in 3 column blocks.
            assert len(cut_ck.info("m.h").chunks) == 3 * len(dcp_ck.info("m.h").chunks)
        for conv in (f"r{saver}", f"rst{saver}", f"dcp{saver}"):
            with reshard.open(os.path.join(root, conv)) as ck:
                for name, shape, dt, _, _ in SAVED[saver]:
                    assert torch.equal(ck.read(f"m.{name}"), expected(name, shape, dt)), (conv, name)
                assert ck.read("extra.sched.gamma") == 0.5 and ck.read("extra.pair.1") == "a"
