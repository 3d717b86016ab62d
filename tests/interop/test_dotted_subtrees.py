"""An empty container in the state dict (a fresh optimizer's ``state``) receives the saved
subtree below its key (README) from checkpoints whose keys are dotted names too: DCP
directories and the output of ``reshard convert``. Those raised MissingKeysError
('optim.state'), although a non-empty nested state dict matched the same keys by name."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.interop.convert import convert


def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.05, betas=(0.8, 0.9))


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.arange(8.0).reshape(2, 4) / 8
    opt.zero_grad()
    model(x).square().sum().backward()
    opt.step()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    root = tmp_path_factory.mktemp("dotted")
    model, opt = _model_and_optimizer(0)
    for _ in range(3):
        _step(model, opt)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that no process group is initialized
        dcp.save(state, checkpoint_id=str(root / "dcp"))
    convert(str(root / "dcp"), str(root / "from_dcp"))
    reshard.save(state, root / "native")
    convert(str(root / "native"), str(root / "converted"))
    convert(str(root / "converted"), str(root / "st.safetensors"))
    convert(str(root / "st.safetensors"), str(root / "from_st"))
    _step(model, opt)  # the step a resumed run must repeat exactly
    return {"root": root, "model": model, "opt": opt}


@pytest.mark.parametrize("source", ["native", "dcp", "from_dcp", "converted", "from_st"])
def test_fresh_optimizer_resumes_exactly(trained: dict[str, Any], source: str) -> None:
    model, opt = _model_and_optimizer(1)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    assert state["optim"]["state"] == {}
    reshard.load(state, trained["root"] / source)
    assert sorted(state["optim"]["state"]) == [0, 1, 2, 3]  # int keys, as the optimizer's own
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) or opt.param_groups[0]["betas"] == [0.8, 0.9]
    _step(model, opt)
    for mine, ref in zip(model.parameters(), trained["model"].parameters()):
        assert torch.equal(mine, ref), source
        assert torch.equal(opt.state[mine]["exp_avg_sq"], trained["opt"].state[ref]["exp_avg_sq"])


def test_empty_lists_and_nested_dicts_by_dotted_name(tmp_path: Path) -> None:
    saved = {"a": {"0": torch.arange(3), "x": {"y": 5, "z": [1.5, "s"]}},
             "l": [torch.arange(2), torch.arange(4)], "t": (7, 8), "k.dot": 1}
    reshard.save(saved, tmp_path / "native")
    convert(str(tmp_path / "native"), str(tmp_path / "flat"))
    with reshard.open(tmp_path / "flat") as ck:  # one dotted name per key, types gone
        assert {e.key for e in ck.manifest.entries} == {
            ("a.0",), ("a.x.y",), ("a.x.z.0",), ("a.x.z.1",), ("l.0",), ("l.1",), ("t.0",), ("t.1",),
            ("k.dot",)}
    got: dict[str, Any] = {"a": {}, "l": [], "t": ()}
    reshard.load(got, tmp_path / "flat")
    # The dotted names say nothing of key types: "0" comes back as 0.
    assert list(got["a"]) == [0, "x"] and torch.equal(got["a"][0], torch.arange(3))
    assert got["a"]["x"] == {"y": 5, "z": [1.5, "s"]}
    assert type(got["l"]) is list and [t.tolist() for t in got["l"]] == [[0, 1], [0, 1, 2, 3]]
    assert got["t"] == (7, 8)
    # An empty container at a top-level dotted key's first part: filled by name as well.
    got = {"k": {}}
    reshard.load(got, tmp_path / "flat", strict=True)
    assert got == {"k": {"dot": 1}}
    # Still missing where nothing is saved below the key.
    with pytest.raises(reshard.MissingKeysError, match="'nothing'"):
        reshard.load({"nothing": {}}, tmp_path / "flat")


def test_a_value_and_keys_below_it_is_a_clear_error(tmp_path: Path) -> None:
    """Dotted names 'a.0' and 'a.0.x' cannot both be built into the empty dict at 'a'."""
    reshard.save({"a.0": 1, "a": {"0": {"x": torch.arange(2)}}}, tmp_path / "native")
    convert(str(tmp_path / "native"), str(tmp_path / "flat"))
    got: dict[str, Any] = {"a": {}}
    reshard.load(got, tmp_path / "native")  # by key parts: only ('a', '0', 'x') is below 'a'
    assert list(got["a"]) == ["0"] and torch.equal(got["a"]["0"]["x"], torch.arange(2))
    with pytest.raises(reshard.LayoutMismatchError, match=r"key 'a\.0'.*empty dict at 'a'"):
        reshard.load({"a": {}}, tmp_path / "flat")


def test_keys_too_deep_for_a_state_dict_are_refused_by_key(tmp_path: Path) -> None:
    """A manifest key of 5000 parts (or a dotted name of 5000 parts) below an empty
    container raised 'CheckpointError: rank 0: RecursionError' while the container was
    built; a LayoutMismatchError names the key. Other keys still load."""
    import json

    from tests.adversarial._state import rewrite_manifest

    def lengthen(doc: dict[str, Any]) -> None:
        for e in doc["entries"]:
            if e["key"] == ["a", "b"]:
                e["key"] = ["a", *["x"] * 5000]
            if e["key"] == ["c.d"]:
                e["key"] = [".".join(["c"] + ["x"] * 5000)]

    reshard.save({"a": {"b": 1}, "c.d": 2, "t": torch.arange(3)}, tmp_path)
    rewrite_manifest(tmp_path, lengthen)
    assert len(json.loads((tmp_path / "manifest.json").read_text())["entries"][0]["key"]) == 5001
    for empty in ({"a": {}}, {"c": []}):
        with pytest.raises(reshard.LayoutMismatchError, match=f"key '{next(iter(empty))}'.*5001 parts"):
            reshard.load(dict(empty), tmp_path)
    got = {"t": torch.zeros(3, dtype=torch.int64)}
    reshard.load(got, tmp_path)
    assert torch.equal(got["t"], torch.arange(3))
