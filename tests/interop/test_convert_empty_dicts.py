"""DCP writes nothing for an empty dict (a fresh optimizer's ``state`` saved before its
first step), and a strict load of the DCP directory leaves such a dict empty, as
``dcp.load`` does. ``reshard convert`` of that directory cannot record the dict either,
and a strict load of its output failed with "no key 'optim.state', 'extra', ..." where the
DCP directory loaded. Now the output says it came from DCP (``library_version``
``<version>+dcp``) and loads as the directory does; a reshard save still records empty
dicts, so there a missing one is still missing."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

import reshard
from reshard.cli import main
from reshard.interop.convert import convert


def _state(seed: int) -> tuple[dict[str, Any], torch.optim.Optimizer, torch.nn.Module]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.25 if seed == 0 else 0.5)
    state = {"model": model.state_dict(), "optim": opt.state_dict(),
             "extra": {}, "nested": {"a": {}, "b": seed, "c": {"d": {}}}, "l": [1 + seed, 2]}
    return state, opt, model


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


def test_converted_dcp_loads_as_the_dcp_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved, _, model = _state(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(saved, checkpoint_id=str(tmp_path / "dcp"))
    convert(str(tmp_path / "dcp"), str(tmp_path / "converted"))
    # A conversion of the conversion (re-laid in column blocks) keeps the label.
    convert(str(tmp_path / "converted"), str(tmp_path / "again"), column_blocks=2)
    results = {}
    for name in ("dcp", "converted", "again"):
        for strict in (True, False):
            got, fresh_opt, _ = _state(1)
            reshard.load(got, tmp_path / name, strict=strict)
            results[name, strict] = got
            assert got["optim"]["state"] == {} and got["extra"] == {}, name
            assert got["nested"] == {"a": {}, "b": 0, "c": {"d": {}}} and got["l"] == [1, 2], name
            assert got["optim"]["param_groups"][0]["lr"] == 0.25, name
            assert torch.equal(got["model"]["weight"], model.weight.detach()), name
            fresh_opt.load_state_dict(got["optim"])
    reference = results["dcp", True]
    assert all(_equal(reference, r) for r in results.values())
    for name in ("converted", "again"):
        with reshard.open(tmp_path / name) as ckpt:
            assert ckpt.manifest.library_version == f"{reshard.__version__}+dcp"
    assert main(["inspect", str(tmp_path / "converted")]) == 0
    assert "converted from a torch.distributed.checkpoint" in capsys.readouterr().out
    # What DCP does record, a load of either still misses where it is missing.
    for name in ("dcp", "converted"):
        with pytest.raises(reshard.MissingKeysError, match="'nothing'"):
            reshard.load({"nothing": []}, tmp_path / name)
        with pytest.raises(reshard.MissingKeysError, match="'absent'"):
            reshard.load({"absent": torch.zeros(1)}, tmp_path / name)


def test_native_and_non_dcp_conversions_stay_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reshard checkpoint (and its conversion) records empty dicts: one it lacks is missing."""
    reshard.save({"w": torch.arange(3), "e": {}}, tmp_path / "native")
    convert(str(tmp_path / "native"), str(tmp_path / "converted"))
    for name in ("native", "converted"):
        with reshard.open(tmp_path / name) as ckpt:
            assert ckpt.manifest.library_version == reshard.__version__
        got: dict[str, Any] = {"w": torch.zeros(3, dtype=torch.int64), "e": {}}
        reshard.load(got, tmp_path / name)
        assert torch.equal(got["w"], torch.arange(3)) and got["e"] == {}
        with pytest.raises(reshard.MissingKeysError, match="'other'"):
            reshard.load({"w": torch.zeros(3, dtype=torch.int64), "other": {}}, tmp_path / name)
    assert main(["inspect", str(tmp_path / "converted")]) == 0
    assert "converted from" not in capsys.readouterr().out
