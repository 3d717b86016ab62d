"""SCENARIOS.md group G: a whole training state, and what strict and partial loads report.

One world of 4 ranks runs every check below in order (each rank checks its own part and
reports problems instead of raising, so the collectives stay matched), then the pytest
process reads the same checkpoints without torch.distributed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.helpers.world import run_world

from .layouts import SENTINEL, Mesh, Meshes, build, check, chunk_rows, global_tensor

pytestmark = pytest.mark.dist

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}
# Model parameters: (name, shape, saved layout, loaded layout); all uneven over 2 and 4.
PARAMS = [
    ("w", (7, 5), Mesh("2x2", "S0,S1"), Mesh("4", "S1")),
    ("b", (13,), Mesh("4", "S0"), Mesh("2x2", "R,R")),
    ("emb", (6, 3), Mesh("2x2", "R,S0"), Mesh("2x2", "S0,R")),
]
META = {"step": 12, "lr": 3e-4, "name": "run-α", "blob": b"\x00\xffab", "none": None,
        "pair": (1, "two", 3.5), "flags": [True, False], "inf": float("inf"),
        "empty": {"d": {}, "l": [], "t": ()}}
META_TARGET = {"step": 0, "lr": 0.0, "name": "", "blob": b"", "none": "not yet",
               "pair": (0, "", 0.0), "flags": [False, False], "inf": 0.0,
               "empty": {"d": {}, "l": [], "t": ()}}


class Report:
    """Problems found in one rank, by check name; also which checks ran."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.problems: list[str] = []
        self.ran: list[str] = []

    def run(self, name: str, fn: Callable[[], list[str] | None]) -> None:
        self.ran.append(name)
        try:
            found = fn() or []
        except Exception as e:  # noqa: BLE001 - reported with the check's name
            found = [f"raised {type(e).__name__}: {e}"]
        self.problems += [f"{name} (rank {self.rank}): {p}" for p in found]

    def expect_error(self, name: str, cls: type[Exception], fn: Callable[[], Any],
                     *fragments: str) -> None:
        def attempt() -> list[str]:
            try:
                fn()
            except cls as e:
                missing = [f for f in fragments if f not in str(e)]
                return [f"message {str(e)!r} lacks {missing}"] if missing else []
            return [f"no {cls.__name__} raised"]

        self.run(name, attempt)


# The training state


def _params(meshes: Meshes, rank: int, *, target: bool) -> dict[str, Any]:
    out = {}
    for i, (name, shape, save, load) in enumerate(PARAMS):
        layout = load if target else save
        source = None if target else global_tensor(shape, torch.float32, seed=100 * i)
        out[name] = torch.nn.Parameter(build(layout, shape, torch.float32, rank, meshes, source))
    return out


def _trained_optimizer(params: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam after one step on copies of ``params`` (the model keeps its arange values)."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params.values()]
    opt = torch.optim.Adam(copies, lr=0.1)
    for i, p in enumerate(copies):
        p.grad = p.detach() * 0.01 + i  # a DTensor with the parameter's placements
    opt.step()
    return opt


def _state(meshes: Meshes, rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The saved state dict, and the global value of every tensor in it (for checks)."""
    params = _params(meshes, rank, target=False)
    optim = _trained_optimizer(params).state_dict()
    wanted: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        wanted[f"model.{name}"] = p.detach().full_tensor()
    for idx, st in optim["state"].items():
        for k, v in st.items():
            wanted[f"optim.state.{idx}.{k}"] = v.full_tensor() if hasattr(v, "full_tensor") else v
    sd = {
        "model": params,
        "optim": optim,
        "meta": dict(META),
        "np": {"arr": np.arange(12, dtype=np.float64).reshape(3, 4),
               "i32": np.arange(5, dtype=np.int32) - 2, "bools": np.array([True, False, True]),
               "f32s": np.float32(2.5), "i64s": np.int64(-7)},
        "dtypes": {n: global_tensor((5, 3), dt, seed=3) for n, dt in DTYPES.items()},
        "nested": [{"a": global_tensor((3,), torch.int64, seed=5)},
                   [global_tensor((2, 2), torch.float32, seed=6), 5, "s"]],
    }
    for n in DTYPES:
        wanted[f"dtypes.{n}"] = sd["dtypes"][n]
    wanted["nested.0.a"] = sd["nested"][0]["a"]
    wanted["nested.1.0"] = sd["nested"][1][0]
    return sd, wanted


def _target(meshes: Meshes, rank: int) -> dict[str, Any]:
    """An empty state dict of the same structure, parameters on other meshes/placements."""
    params = _params(meshes, rank, target=True)
    opt = _trained_optimizer(params)  # gives the optimizer state its structure
    optim = opt.state_dict()
    for st in optim["state"].values():
        for v in st.values():
            local = v.to_local() if hasattr(v, "to_local") else v
            local.fill_(SENTINEL)
    group = optim["param_groups"][0]
    group["lr"], group["betas"], group["eps"] = 0.0, (0.0, 0.0), 0.0
    return {
        "model": params, "optim": optim, "meta": dict(META_TARGET),
        "np": {"arr": np.zeros((3, 4)), "i32": np.zeros(5, dtype=np.int32),
               "bools": np.zeros(3, dtype=bool), "f32s": np.float32(0), "i64s": np.int64(0)},
        "dtypes": {n: torch.full((5, 3), SENTINEL).to(dt) for n, dt in DTYPES.items()},
        "nested": [{"a": torch.zeros(3, dtype=torch.int64)}, [torch.zeros(2, 2), 0, ""]],
    }


def _load_layout(key: str) -> Any:
    for i, (name, _, _, load) in enumerate(PARAMS):
        if key == f"model.{name}" or key.startswith(f"optim.state.{i}.") and not key.endswith("step"):
            return load
    return None


def _check_tensors(sd: dict[str, Any], wanted: dict[str, torch.Tensor], meshes: Meshes) -> list[str]:
    problems = []
    flat = _flatten(sd)
    for key, want in wanted.items():
        got = flat[key]
        layout = _load_layout(key)
        if layout is not None:
            problems += [f"{key}: {p}" for p in check(layout, got.detach(), want, meshes)]
        elif not (got.dtype == want.dtype and torch.equal(got, want)):
            problems.append(f"{key}: got {got}, want {want}")
    return problems


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_plain(sd: dict[str, Any], target_arrays: dict[str, Any]) -> list[str]:
    problems = []
    meta = sd["meta"]
    for k, v in META.items():
        same = math.isinf(meta[k]) if k == "inf" else meta[k] == v and type(meta[k]) is type(v)
        if not same:
            problems.append(f"meta.{k}: got {meta[k]!r}, want {v!r}")
    group = sd["optim"]["param_groups"][0]
    if (group["lr"], group["betas"], group["eps"], group["params"]) != (0.1, (0.9, 0.999), 1e-8, [0, 1, 2]):
        problems.append(f"optim.param_groups[0]: {group}")
    if not isinstance(group["betas"], tuple):
        problems.append("optim.param_groups[0].betas is no longer a tuple")
    npd = sd["np"]
    for k in ("arr", "i32", "bools"):
        if npd[k] is not target_arrays[k]:
            problems.append(f"np.{k}: the array was replaced, not filled in place")
    if not (np.array_equal(npd["arr"], np.arange(12.0).reshape(3, 4))
            and np.array_equal(npd["i32"], np.arange(5) - 2)
            and npd["bools"].tolist() == [True, False, True]):
        problems.append(f"np arrays: {npd}")
    if not (type(npd["f32s"]) is np.float32 and npd["f32s"] == 2.5
            and type(npd["i64s"]) is np.int64 and npd["i64s"] == -7):
        problems.append(f"numpy scalars: {npd['f32s']!r} {npd['i64s']!r}")
    if sd["nested"][1][1:] != [5, "s"]:
        problems.append(f"nested list values: {sd['nested'][1]}")
    return problems


# The checks


def _round_trip(path: str, meshes: Meshes, rank: int, report: Report) -> None:
    sd, wanted = _state(meshes, rank)
    reshard.save(sd, path)
    target = _target(meshes, rank)
    arrays = dict(target["np"])
    reshard.load(target, path)
    report.run("round_trip_tensors", lambda: _check_tensors(target, wanted, meshes))
    report.run("round_trip_plain_values", lambda: _check_plain(target, arrays))

    def optimizer_accepts_it() -> list[str]:
        params = target["model"]
        opt = torch.optim.Adam(list(params.values()), lr=1.0)
        opt.load_state_dict(target["optim"])
        got = opt.state_dict()["param_groups"][0]["lr"]
        return [] if got == 0.1 else [f"lr after load_state_dict: {got}"]

    report.run("optimizer_load_state_dict", optimizer_accepts_it)


def _partial_and_strict(path: str, meshes: Meshes, rank: int, report: Report) -> None:
    wanted = global_tensor((7, 5), torch.float32, seed=0)
    w_layout = PARAMS[0][3]

    def partial() -> list[str]:
        sd = {"model": {"w": build(w_layout, (7, 5), torch.float32, rank, meshes, None)},
              "nested": [{"a": torch.zeros(3, dtype=torch.int64)}]}
        reshard.load(sd, path)
        out = check(w_layout, sd["model"]["w"], wanted, meshes)
        if not torch.equal(sd["nested"][0]["a"], global_tensor((3,), torch.int64, seed=5)):
            out.append(f"nested.0.a: {sd['nested'][0]['a']}")
        return out

    report.run("partial_load", partial)
    report.expect_error(
        "strict_missing_keys", reshard.MissingKeysError,
        lambda: reshard.load({"model": {"w": torch.zeros(7, 5), "extra": torch.zeros(2)},
                              "optim": {"state": {7: {"exp_avg": torch.zeros(2)}}}}, path),
        "model.extra", "optim.state.7.exp_avg")
    report.expect_error(
        "shape_mismatch_plain", reshard.LayoutMismatchError,
        lambda: reshard.load({"model": {"w": torch.zeros(8, 5)}}, path),
        "model.w", "[7, 5]", "[8, 5]")
    report.expect_error(
        "shape_mismatch_dtensor", reshard.LayoutMismatchError,
        lambda: reshard.load({"model": {"b": build(Mesh("2x2", "S0,R"), (12,), torch.float32, rank,
                                                   meshes, None)}}, path),
        "model.b", "[13]", "[12]")

    # A problem in one rank's state dict only: every rank must raise the same error.
    report.expect_error(
        "shape_mismatch_one_rank", reshard.LayoutMismatchError,
        lambda: reshard.load({"model": {"w": torch.zeros((8, 5) if rank == 1 else (7, 5))}}, path),
        "model.w", "[8, 5]")
    report.expect_error(
        "missing_key_one_rank", reshard.MissingKeysError,
        lambda: reshard.load({"model": {"w": torch.zeros(7, 5)},
                              **({"only_rank3": 1} if rank == 3 else {})}, path),
        "only_rank3")

    def ranks_load_different_keys() -> list[str]:
        sd: dict[str, Any] = {"model": {"w": torch.zeros(7, 5)}} if rank % 2 else {}
        if rank < 2:
            sd["meta"] = {"name": ""}
        reshard.load(sd, path)
        out = []
        if rank % 2 and not torch.equal(sd["model"]["w"], wanted):
            out.append("model.w differs")
        if rank < 2 and sd["meta"]["name"] != "run-α":
            out.append(f"meta.name is {sd['meta']['name']!r}")
        return out

    report.run("ranks_load_different_keys", ranks_load_different_keys)

    # DTensor.from_local rows that do not follow torch.chunk (5, 3, 4, 2 of 14) contradict
    # the Shard(0) placement (DTensor would place rows 4.. on rank 1): refused clearly.
    odd = chunk_rows("from_local", (5, 3, 4, 2))
    report.expect_error(
        "from_local_rows_not_torch_chunk", reshard.LayoutMismatchError,
        lambda: reshard.save({"odd": build(odd, (14,), torch.float32, rank, meshes,
                                           torch.arange(14.0))}, path + "-odd"),
        "odd", "torch.chunk")

    def not_strict() -> list[str]:
        extra = torch.full((2,), 9.0)
        sd = {"model": {"w": torch.zeros(7, 5), "extra": extra}, "gone": [1, 2]}
        reshard.load(sd, path, strict=False)
        out = [] if torch.equal(sd["model"]["w"], wanted) else ["model.w not loaded"]
        if not torch.equal(sd["model"]["extra"], torch.full((2,), 9.0)) or sd["gone"] != [1, 2]:
            out.append("a missing key was touched")
        return out

    report.run("strict_false_skips_missing", not_strict)


def _dtype_conversion(path: str, meshes: Meshes, rank: int, report: Report) -> None:
    def convert() -> list[str]:
        w = build(Mesh("2x2", "S1,S0"), (7, 5), torch.bfloat16, rank, meshes, None)
        sd = {"model": {"w": w, "b": torch.zeros(13, dtype=torch.float64)},
              "dtypes": {"int64": torch.zeros(5, 3), "float32": torch.zeros(5, 3, dtype=torch.int64)}}
        reshard.load(sd, path)
        want_w = global_tensor((7, 5), torch.float32, seed=0)
        out = check(Mesh("2x2", "S1,S0"), w, want_w.to(torch.bfloat16), meshes)
        want_b = global_tensor((13,), torch.float32, seed=100)
        for key, got, want in (
            ("model.b", sd["model"]["b"], torch.zeros(13, dtype=torch.float64).copy_(want_b)),
            ("dtypes.int64", sd["dtypes"]["int64"], torch.zeros(5, 3).copy_(
                global_tensor((5, 3), torch.int64, seed=3))),
            ("dtypes.float32", sd["dtypes"]["float32"], torch.zeros(5, 3, dtype=torch.int64).copy_(
                global_tensor((5, 3), torch.float32, seed=3))),
        ):
            if not torch.equal(got, want):
                out.append(f"{key}: got {got}, want {want}")
        return out

    report.run("dtype_conversion", convert)


def _replicas_written_once(path: str, report: Report) -> list[str]:
    problems = []
    with reshard.open(path) as ck:
        expect = {"model.w": 4, "model.b": 4, "model.emb": 2, "dtypes.int8": 1, "optim.state.0.step": 1,
                  "optim.state.2.exp_avg": 2, "nested.0.a": 1}
        for key, n in expect.items():
            boxes = [(c.offsets, c.sizes) for c in ck.info(key).chunks]
            if len(boxes) != n or len(set(boxes)) != n:
                problems.append(f"{key}: {len(boxes)} chunks {boxes}, want {n} distinct")
        files = {c.file for k in ck.keys() for c in ck.info(k).chunks}
    on_disk = {f"data/{n}" for n in os.listdir(os.path.join(path, "data"))}
    if len(files) < 4:
        problems.append(f"replicated data is written by {len(files)} ranks only: {sorted(files)}")
    if files != on_disk:
        problems.append(f"data files {sorted(on_disk)} != files the manifest uses {sorted(files)}")
    return problems


def _overwrite(path: str, rank: int, report: Report) -> None:
    reshard.save({"x": torch.arange(10.0), "old_only": torch.ones(3), "v": 1}, path)
    with reshard.open(path) as ck:
        old_files = {c.file for k in ck.keys() for c in ck.info(k).chunks}
    reshard.save({"x": torch.arange(10.0) * 2, "v": 2}, path)

    def newest_wins() -> list[str]:
        out = []
        sd = {"x": torch.zeros(10), "v": 0}
        reshard.load(sd, path)
        if not torch.equal(sd["x"], torch.arange(10.0) * 2) or sd["v"] != 2:
            out.append(f"loaded {sd}")
        with reshard.open(path) as ck:
            if "old_only" in ck.keys():
                out.append("a key of the replaced checkpoint is still listed")
            new_files = {c.file for k in ck.keys() for c in ck.info(k).chunks}
        on_disk = {f"data/{n}" for n in os.listdir(os.path.join(path, "data"))}
        if on_disk != new_files or old_files & on_disk:
            out.append(f"on disk {sorted(on_disk)}, new {sorted(new_files)}, old {sorted(old_files)}")
        return out

    report.run("overwrite_newest_wins", newest_wins)


def _unsupported(path: str, rank: int, report: Report) -> None:
    class Opaque:
        pass

    report.expect_error(
        "unsupported_value_all_ranks", reshard.UnsupportedValueError,
        lambda: reshard.save({"x": torch.ones(2), "obj": Opaque()}, path), "obj", "Opaque")
    # Only rank 2 holds the bad value: every rank must still raise the same error.
    report.expect_error(
        "unsupported_value_one_rank", reshard.UnsupportedValueError,
        lambda: reshard.save({"x": torch.ones(2), "obj": Opaque() if rank == 2 else 1}, path), "obj")

    def previous_checkpoint_intact() -> list[str]:
        sd = {"x": torch.zeros(10)}
        reshard.load(sd, path)
        return [] if torch.equal(sd["x"], torch.arange(10.0) * 2) else [f"x is {sd['x']}"]

    report.run("failed_save_keeps_previous", previous_checkpoint_intact)


def _subgroups_and_key_order(root: str, rank: int, report: Report) -> None:
    """Two process groups of 2 save side by side (each rank lists its keys in another
    order); each group's checkpoint records 2 ranks, and the whole world loads both."""
    import torch.distributed as dist

    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine = rank // 2
    full = global_tensor((5, 3), torch.float32, seed=7 + mine)
    half = full[:3] if rank % 2 == 0 else full[3:]
    items = [("rows", build_rows(half, rank % 2)), ("group", mine), ("rep", full)]
    sd = dict(items if rank % 2 == 0 else reversed(items))
    reshard.save(sd, os.path.join(root, f"group{mine}"), process_group=groups[mine])

    def check_groups() -> list[str]:
        out = []
        for g in (0, 1):
            path = os.path.join(root, f"group{g}")
            want = global_tensor((5, 3), torch.float32, seed=7 + g)
            got = {"rows": torch.zeros(5, 3), "group": -1, "rep": torch.zeros(5, 3)}
            reshard.load(got, path)
            if not (torch.equal(got["rows"], want) and torch.equal(got["rep"], want)
                    and got["group"] == g):
                out.append(f"group{g}: loaded {got}")
            with reshard.open(path) as ck:
                if ck.manifest.world_size != 2:
                    out.append(f"group{g}: manifest world_size {ck.manifest.world_size}")
        return out

    dist.barrier()  # both groups committed before anyone loads
    report.run("subgroup_saves", check_groups)


def build_rows(half: torch.Tensor, part: int) -> Any:
    from .layouts import RowShardTensor

    return RowShardTensor((5, 3), torch.float32, [(0 if part == 0 else 3, half.clone())])


def training_world(rank: int, world: int, root: str) -> tuple[list[str], list[str]]:
    meshes = Meshes()
    report = Report(rank)
    state = os.path.join(root, "state")
    _round_trip(state, meshes, rank, report)
    _partial_and_strict(state, meshes, rank, report)
    _dtype_conversion(state, meshes, rank, report)
    report.run("replicas_written_once", lambda: _replicas_written_once(state, report))
    other = os.path.join(root, "overwrite")
    _overwrite(other, rank, report)
    _unsupported(other, rank, report)
    _subgroups_and_key_order(root, rank, report)
    return report.problems, report.ran


@pytest.fixture(scope="module")
def world_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = str(tmp_path_factory.mktemp("training"))
    per_rank = run_world(training_world, 4, root, timeout_s=200)
    return {"root": root, "problems": [p for probs, _ in per_rank for p in probs],
            "ran": [ran for _, ran in per_rank]}


def _assert_checks(result: dict[str, Any], *names: str) -> None:
    for rank, ran in enumerate(result["ran"]):
        missing = [n for n in names if n not in ran]
        assert not missing, f"rank {rank} did not run {missing}"
    bad = [p for p in result["problems"] if p.split(" ")[0] in names]
    assert not bad, "\n".join(bad)


def test_training_state_round_trip_resharded(world_result: dict[str, Any]) -> None:
    """Nested dicts/lists/tuples, Adam state (int keys) of DTensor params on new meshes,
    scalars, str, bytes, None, numpy arrays filled in place, numpy scalars, 7 dtypes."""
    _assert_checks(world_result, "round_trip_tensors", "round_trip_plain_values",
                   "optimizer_load_state_dict")


def test_partial_and_strict_loads_raise_on_every_rank(world_result: dict[str, Any]) -> None:
    _assert_checks(world_result, "partial_load", "strict_missing_keys", "shape_mismatch_plain",
                   "shape_mismatch_dtensor", "shape_mismatch_one_rank", "missing_key_one_rank",
                   "ranks_load_different_keys", "strict_false_skips_missing",
                   "from_local_rows_not_torch_chunk")


def test_dtype_conversion_on_load(world_result: dict[str, Any]) -> None:
    _assert_checks(world_result, "dtype_conversion")


def test_replicated_data_written_once(world_result: dict[str, Any]) -> None:
    _assert_checks(world_result, "replicas_written_once")


def test_overwrite_and_unsupported_values(world_result: dict[str, Any]) -> None:
    _assert_checks(world_result, "overwrite_newest_wins", "unsupported_value_all_ranks",
                   "unsupported_value_one_rank", "failed_save_keeps_previous")


def test_process_subgroups_save_side_by_side(world_result: dict[str, Any]) -> None:
    _assert_checks(world_result, "subgroup_saves")


def test_no_problem_left_unreported(world_result: dict[str, Any]) -> None:
    assert not world_result["problems"], "\n".join(world_result["problems"])


def test_open_reads_slices_in_one_process(world_result: dict[str, Any]) -> None:
    path = Path(world_result["root"], "state")
    w = global_tensor((7, 5), torch.float32, seed=0)
    with reshard.open(path) as ck:
        assert torch.equal(ck.read("model.w", (slice(1, 5), 2)), w[1:5, 2])
        assert torch.equal(ck.read("model.w", 3), w[3])
        assert torch.equal(ck.read("model.w", (slice(None), slice(4, 5))), w[:, 4:5])
        assert torch.equal(ck.read("model.w", (-1, -2)), w[-1, -2])
        assert torch.equal(ck.read(("optim", "state", 0, "step")), torch.tensor(1.0))
        assert ck.read("meta.name") == "run-α"
        assert ck.read("meta.blob") == b"\x00\xffab"
        assert ck.info("optim.state.1.exp_avg").shape == (13,)
        assert torch.equal(ck.read("model.w", (slice(0, 7, 2), ...)), w[0:7:2, ...])
        with pytest.raises(reshard.CheckpointError, match="model.w"):
            ck.read("model.w", (slice(None, None, -1),))  # torch has no negative steps


def test_load_training_state_in_one_process(world_result: dict[str, Any]) -> None:
    """World size 1: plain tensors receive what 4 ranks saved as DTensors."""
    path = Path(world_result["root"], "state")
    sd: dict[str, Any] = {
        "model": {name: torch.zeros(shape) for name, shape, _, _ in PARAMS},
        "optim": {"state": {i: {"exp_avg": torch.zeros(shape), "step": torch.tensor(0.0)}
                            for i, (_, shape, _, _) in enumerate(PARAMS)}},
        "np": {"arr": np.zeros((3, 4))},
    }
    reshard.load(sd, path)
    for i, (name, shape, _, _) in enumerate(PARAMS):
        assert torch.equal(sd["model"][name], global_tensor(shape, torch.float32, seed=100 * i))
        assert sd["optim"]["state"][i]["step"].item() == 1.0
    # exp_avg after one Adam step is (1 - beta1) * grad, grad = 0.01 * param + i.
    g = global_tensor((13,), torch.float32, seed=100) * 0.01 + 1
    assert torch.allclose(sd["optim"]["state"][1]["exp_avg"], 0.1 * g)
    assert np.array_equal(sd["np"]["arr"], np.arange(12.0).reshape(3, 4))


def test_one_process_save_replaces_a_four_rank_checkpoint(world_result: dict[str, Any],
                                                            tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "ck"
    shutil.copytree(Path(world_result["root"], "state"), path)
    assert len(os.listdir(path / "data")) == 4
    reshard.save({"only": torch.arange(3)}, path)
    assert os.listdir(path / "data") == [Path(reshard.open(path).info("only").chunks[0].file).name]
    assert reshard.open(path).keys() == ["only"]
    with pytest.raises(reshard.MissingKeysError, match="model.w"):
        reshard.load({"model": {"w": torch.zeros(7, 5)}}, path)
