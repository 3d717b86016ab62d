"""DCP keys whose own dict keys hold dots: DCP flattens ``{"model": {"layer.0.weight": t}}``
to the name ``"model.layer.0.weight"``, and its default planner records the path
``("model", "layer.0.weight")`` in the metadata's ``planner_data``. An empty container in
the state dict (a fresh optimizer's ``state``, ``{"model": {}}``) was filled by splitting
the name at every dot: ``{"model": {"layer": [{"weight": t}]}}``, and a top-level key
``"a.b"`` filled ``{"a": {}}`` as ``{"a": {"b": t}}``. The recorded path is used now;
without it (other planners) names are split as before."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.cli import main
from reshard.interop.convert import convert
from tests.helpers.world import run_world


def _saved() -> dict[str, Any]:
    return {
        "model": {"layer.0.weight": torch.arange(6.0).reshape(2, 3), "layer.1.bias": torch.arange(3)},
        "a.b": torch.arange(4, dtype=torch.int16),
        "l": [torch.arange(2.0), {"x.y": torch.arange(5), "z": torch.arange(1)}],
        "v": {"k.1": 5, "n": [1, 2], "m.x": {"p.q": "s"}},
        "optim": {"state": {0: {"exp_avg": torch.arange(3.0)}, 1: {"exp_avg": torch.arange(2.0) + 10}},
                  "param_groups": [{"lr": 0.5, "params": [0, 1]}]},
    }


def _dcp_save(state: dict[str, Any], path: Path, **planner: Any) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=str(path), planner=DefaultSavePlanner(**planner))


def _empty() -> dict[str, Any]:
    return {"model": {}, "a.b": torch.zeros(4, dtype=torch.int16), "l": [], "v": {},
            "optim": {"state": {}, "param_groups": []}}


def _zeros_like(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return torch.zeros_like(obj)
    if isinstance(obj, dict):
        return {k: _zeros_like(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_zeros_like(v) for v in obj]
    return None


def _assert_equal(got: Any, want: Any, where: str = "") -> None:
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            _assert_equal(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_equal(g, w, f"{where}.{i}")
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planner_paths")
    _dcp_save(_saved(), root / "dcp")
    convert(str(root / "dcp"), str(root / "converted"))
    assert main(["convert", "--quiet", str(root / "dcp"), str(root / "cli")]) == 0
    return root


@pytest.mark.parametrize("source", ["dcp", "converted", "cli"])
def test_empty_containers_get_the_saved_dicts(root: Path, source: str) -> None:
    got = _empty()
    reshard.load(got, root / source)
    _assert_equal(got, _saved())  # optimizer state keys come back as ints, as saved


@pytest.mark.parametrize("source", ["dcp", "converted", "cli"])
def test_populated_and_partly_empty_containers(root: Path, source: str) -> None:
    got = _zeros_like(_saved())
    got["v"] = {"k.1": 0, "n": [0, 0], "m.x": {"p.q": ""}}
    got["optim"]["param_groups"] = [{"lr": 0.0, "params": [0, 0]}]
    reshard.load(got, root / source)
    _assert_equal(got, _saved())
    # Empty containers at several depths: inside a list, inside a dict.
    got = {"l": [torch.zeros(2), {}], "v": {"m.x": {}}, "optim": {"state": {1: {}}}}
    reshard.load(got, root / source)
    _assert_equal(got["l"][1], {"x.y": torch.arange(5), "z": torch.arange(1)})
    assert got["v"] == {"m.x": {"p.q": "s"}}
    _assert_equal(got["optim"]["state"], {1: {"exp_avg": torch.arange(2.0) + 10}})
    # The optimizer's text keys (a state dict built by name) still match by name.
    got = {"optim": {"state": {"0": {}}}}
    reshard.load(got, root / source)
    _assert_equal(got["optim"]["state"], {"0": {"exp_avg": torch.arange(3.0)}})


def test_a_top_level_dotted_key_is_not_below_its_first_part(root: Path) -> None:
    with pytest.raises(reshard.MissingKeysError, match=r"no key 'a' \(load with strict=False"):
        reshard.load({"a": []}, root / "dcp")
    # An empty dict DCP has no key for is left empty (DCP writes none for empty dicts).
    got: dict[str, Any] = {"a": {}, "model": {"layer": {}}}
    reshard.load(got, root / "dcp")
    assert got == {"a": {}, "model": {"layer": {}}}
    # By name, a whole key still matches a nested state dict (as with reshard checkpoints).
    got = {"a": {"b": torch.zeros(4, dtype=torch.int16)}}
    reshard.load(got, root / "dcp")
    assert torch.equal(got["a"]["b"], torch.arange(4, dtype=torch.int16))


@pytest.mark.parametrize("source", ["dcp", "converted"])
def test_open_names_and_reads(root: Path, source: str) -> None:
    with reshard.open(root / source) as ck:
        assert sorted(ck.keys()) == sorted([
            "model.layer.0.weight", "model.layer.1.bias", "a.b", "l.0", "l.1.x.y", "l.1.z",
            "optim.state.0.exp_avg", "optim.state.1.exp_avg", "v.k.1", "v.n.0", "v.n.1",
            "v.m.x.p.q", "optim.param_groups.0.lr", "optim.param_groups.0.params.0",
            "optim.param_groups.0.params.1"])
        keys = {e.key for e in ck.manifest.entries}
        assert ("model", "layer.0.weight") in keys and ("a.b",) in keys
        assert ("l", 1, "x.y") in keys and ("optim", "state", 0, "exp_avg") in keys
        assert ("v", "m.x", "p.q") in keys
        want = torch.arange(6.0).reshape(2, 3)
        for key in ("model.layer.0.weight", ("model", "layer.0.weight")):
            assert torch.equal(ck.read(key), want)
            assert ck.info(key).key == "model.layer.0.weight" and ck.info(key).shape == (2, 3)
            assert key in ck
        assert torch.equal(ck.read(("model", "layer.0.weight"), (1, slice(0, 2))), want[1, :2])
        assert ck.read(("v", "m.x", "p.q")) == "s" and ck.read("v.k.1") == 5


def test_inspect_lists_the_dotted_names(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(root / "dcp")]) == 0
    out = capsys.readouterr().out
    assert "model.layer.0.weight" in out and "v.m.x.p.q" in out


def test_without_planner_paths_names_are_split(tmp_path: Path) -> None:
    """A planner that does not flatten records no paths: a flat state dict's names are
    split at the dots to fill an empty container, as before."""
    flat = {"m.layer.0.w": torch.arange(3), "m.s": 7}
    _dcp_save(flat, tmp_path / "flat", flatten_state_dict=False)
    got: dict[str, Any] = {"m": {}}
    reshard.load(got, tmp_path / "flat")
    _assert_equal(got, {"m": {"layer": [{"w": torch.arange(3)}], "s": 7}})


def test_planner_data_that_does_not_spell_the_name_is_ignored(tmp_path: Path) -> None:
    """A custom planner may keep anything in planner_data: a path is taken only where its
    parts join to the key's name (else a damaged or foreign mapping would rename keys)."""
    _dcp_save({"m": {"a.b": torch.arange(3), "c": torch.arange(2)}}, tmp_path / "d")
    meta_path = tmp_path / "d" / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())
    assert meta.planner_data == {"m.a.b": ("m", "a.b"), "m.c": ("m", "c")}
    meta.planner_data = {"m.a.b": ("evil", "x"), "m.c": ["m", True]}
    meta_path.write_bytes(pickle.dumps(meta))
    with reshard.open(tmp_path / "d") as ck:
        assert {e.key for e in ck.manifest.entries} == {("m.a.b",), ("m.c",)}
    got: dict[str, Any] = {"m": {}}
    reshard.load(got, tmp_path / "d")
    _assert_equal(got, {"m": {"a": {"b": torch.arange(3)}, "c": torch.arange(2)}})
    meta.planner_data = "not a dict"
    meta_path.write_bytes(pickle.dumps(meta))
    got = {"m": {"a": {"b": torch.zeros(3, dtype=torch.int64)}, "c": torch.zeros(2, dtype=torch.int64)}}
    reshard.load(got, tmp_path / "d")
    assert torch.equal(got["m"]["a"]["b"], torch.arange(3))


def _two_ranks(rank: int, world_size: int, path: str) -> list[str]:
    """Only rank 0 reads .metadata; the other ranks get the manifest broadcast."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    failures = []
    got = _empty()
    reshard.load(got, path)
    try:
        _assert_equal(got, _saved())
    except AssertionError as e:
        failures.append(f"rank {rank} empty: {e}")
    mesh = init_device_mesh("cpu", (world_size,))
    got = {"model": {"layer.0.weight": distribute_tensor(torch.zeros(2, 3), mesh, [Shard(1)])},
           "l": [torch.zeros(2), {}]}
    reshard.load(got, path)
    if not torch.equal(got["model"]["layer.0.weight"].full_tensor(), torch.arange(6.0).reshape(2, 3)):
        failures.append(f"rank {rank} dtensor")
    if sorted(got["l"][1]) != ["x.y", "z"]:
        failures.append(f"rank {rank} list: {got['l']}")
    with pytest.raises(reshard.MissingKeysError, match="'a'"):
        reshard.load({"a": []}, path)
    return failures


def test_two_ranks(root: Path, tmp_path: Path) -> None:
    shutil.copytree(root / "dcp", tmp_path / "dcp")
    results = run_world(_two_ranks, 2, str(tmp_path / "dcp"), timeout_s=120)
    assert [f for r in results for f in r] == []


def test_fqn_keyed_optimizer_state_resumes_from_empty_containers(tmp_path: Path) -> None:
    """torch.distributed.checkpoint.state_dict keys optimizer state by parameter name
    ("0.weight"): into empty containers it came back as {0: {"weight": ...}}, which
    set_state_dict cannot use."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def make(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=0.05)

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        model(torch.arange(8.0).reshape(2, 4) / 8).square().sum().backward()
        opt.step()

    model, opt = make(0)
    step(model, opt)
    step(model, opt)
    msd, osd = get_state_dict(model, opt)
    assert "0.weight" in osd["state"]
    _dcp_save({"model": msd, "optim": osd}, tmp_path / "dcp")
    step(model, opt)
    fresh, fresh_opt = make(1)
    got: dict[str, Any] = {"model": {}, "optim": {"state": {}, "param_groups": []}}
    reshard.load(got, tmp_path / "dcp")
    assert sorted(got["optim"]["state"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert sorted(got["model"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    set_state_dict(fresh, fresh_opt, model_state_dict=got["model"], optim_state_dict=got["optim"])
    step(fresh, fresh_opt)
    for mine, ref in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(mine, ref)


def test_keys_that_read_as_one_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A DCP list value n = [1, 2] reads as n.0 and n.1, beside the DCP key "n.0".
    convert wrote a reshard manifest that reshard then refused as corrupt ('duplicate
    key'), and a safetensors file holding only one of the two; Checkpoint.read(("n", 0))
    returned the other key's value. convert refuses, naming both; open reads by parts."""
    _dcp_save({"n": [1, 2], "n.0": 5, "t": torch.arange(2)}, tmp_path / "dcp")
    for dst in ("out", "out.safetensors"):
        assert main(["convert", "--quiet", str(tmp_path / "dcp"), str(tmp_path / dst)]) == 1
        err = capsys.readouterr().err
        assert "keys ['n', 0] and ['n.0'] both read as 'n.0'" in err and err.count("\n") == 1
        assert not (tmp_path / dst).exists()
    with reshard.open(tmp_path / "dcp") as ck:
        assert ck.read(("n", 0)) == 1 and ck.read(["n", 1]) == 2 and ck.read(("n.0",)) == 5
        assert ck.read("n.0") == 5
        assert sorted(ck.keys()) == ["n.0", "n.0", "n.1", "t"]  # one per key, both listed
    assert main(["inspect", str(tmp_path / "dcp")]) == 0
    out = capsys.readouterr().out
    assert "4 keys," in out and [line.split()[0] for line in out.splitlines()[2:6]].count("n.0") == 2
    got: dict[str, Any] = {"n": [0, 0], "n.0": 0}
    reshard.load(got, tmp_path / "dcp")
    assert got == {"n": [1, 2], "n.0": 5}


def test_empty_dicts_dcp_could_not_record(tmp_path: Path) -> None:
    """DCP writes nothing for an empty dict: an optimizer saved before its first step has
    state {}, and a strict load of that checkpoint into a fresh optimizer failed with
    "no key 'optim.state'" (dcp.load accepts it). A reshard checkpoint records empty
    dicts, so there a missing one is still missing."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.25)
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "extra": {"e": {}, "l": []}}
    _dcp_save(state, tmp_path / "dcp")
    reshard.save({"model": model.state_dict()}, tmp_path / "native")
    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    got = {"model": fresh.state_dict(), "optim": fresh_opt.state_dict(), "extra": {"e": {}, "l": []}}
    reshard.load(got, tmp_path / "dcp")
    assert got["optim"]["state"] == {} and got["extra"] == {"e": {}, "l": []}
    assert got["optim"]["param_groups"][0]["lr"] == 0.25
    assert torch.equal(got["model"]["weight"], model.weight)
    fresh_opt.load_state_dict(got["optim"])
    with pytest.raises(reshard.MissingKeysError, match="'nothing'"):  # a list DCP would record
        reshard.load({"nothing": []}, tmp_path / "dcp")
    with pytest.raises(reshard.MissingKeysError, match="'optim'"):
        reshard.load({"model": fresh.state_dict(), "optim": {}}, tmp_path / "native")


def test_missing_keys_below_a_value_kept_whole(tmp_path: Path) -> None:
    """DCP keeps a tuple whole, as one torch.save'd value; one that reshard refuses (a
    torch.Size inside it has no plain form) left a state dict holding the tuple with only
    "no key 'tup.0', 'tup.1'", as if the checkpoint lacked it. The error names the value
    and why. (A tuple of tensors was the example here until it loaded: now its tensors
    are keys of their own, test_dcp_tuples.py.)"""
    _dcp_save({"tup": (torch.Size([2, 3]), torch.arange(3.0)), "t": torch.arange(2)}, tmp_path / "dcp")
    zeros = torch.zeros(2, dtype=torch.int64)
    dest = {"tup": (torch.Size([0]), torch.zeros(3)), "t": zeros.clone()}
    with pytest.raises(reshard.MissingKeysError, match=(
            r"no key 'tup\.0', 'tup\.1'; it holds 'tup' as one value, .*put one value there\): "
            r"DCP key 'tup': a torch\.Size has no plain-value form")):
        reshard.load(dest, tmp_path / "dcp")
    got: dict[str, Any] = {"tup": None}
    reshard.load(got, tmp_path / "dcp", allow_pickle=True)
    assert got["tup"][0] == torch.Size([2, 3]) and got["tup"][1].tolist() == [0.0, 1.0, 2.0]
    reshard.save({"a": 5}, tmp_path / "native")
    with pytest.raises(reshard.MissingKeysError, match=r"no key 'a\.x'; it holds 'a' as one value"):
        reshard.load({"a": {"x": 1}}, tmp_path / "native")


_SAVED_ON_3 = [("3x1x1", "S0,R,S2"), ("1x3x1", "R,S1,R"), ("1x1x3", "S0,S0,S2"), ("3x1x1", "R,R,R"),
               ("1x3x1", "S2,S2,S1"), ("1x1x3", "R,S1,S0")]
_LOADED_ON_3 = [("1x1x3", "S1,R,R"), ("3", "S2"), ("3x1x1", "R,S0,S1"), ("1x3x1", "R,S0,R"), ("3", "R"),
                ("3x1x1", "S1,S1,S1")]


def _three_ranks(rank: int, world_size: int, root: str) -> list[str]:
    """dcp.save and reshard.save on 3 ranks of DTensors on 3-D meshes (Replicate mixed
    in) under dotted dict keys; loaded into other meshes and into an empty container."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    from tests.dist.layouts import torch_placements

    meshes = {m: init_device_mesh("cpu", tuple(int(n) for n in m.split("x")))
              for m in ("3x1x1", "1x3x1", "1x1x3", "3")}
    full = {f"layer.{i}.w": (torch.arange(140, dtype=torch.float64) + 1000 * i).reshape(7, 5, 4)
            for i in range(len(_SAVED_ON_3))}

    def placed(layouts: list[tuple[str, str]], zero: bool) -> dict[str, Any]:
        return {name: distribute_tensor(torch.zeros(7, 5, 4, dtype=torch.float64) if zero else t,
                                        meshes[m], torch_placements(p))
                for (name, t), (m, p) in zip(full.items(), layouts)}

    state = {"m": placed(_SAVED_ON_3, zero=False), "step": 3}
    reshard.save(state, f"{root}/native")
    _dcp_save(state, Path(root) / "dcp")
    failures = []
    for src in ("native", "dcp"):
        dest = {"m": placed(_LOADED_ON_3, zero=True), "step": 0}
        reshard.load(dest, f"{root}/{src}")
        failures += [f"{src} {n}" for n, t in full.items() if not torch.equal(dest["m"][n].full_tensor(), t)]
        empty: dict[str, Any] = {"m": {}, "step": 0}
        reshard.load(empty, f"{root}/{src}")
        if sorted(empty["m"]) != sorted(full) or empty["step"] != 3:
            failures.append(f"{src} empty: {sorted(empty['m'])}")
        else:
            failures += [f"{src} empty {n}" for n, t in full.items() if not torch.equal(empty["m"][n], t)]
    return failures


def test_three_ranks_3d_meshes(tmp_path: Path) -> None:
    results = run_world(_three_ranks, 3, str(tmp_path), timeout_s=150)
    assert [f for r in results for f in r] == []
