"""A DCP checkpoint holding one tensor of a dtype reshard lacks (float8_e8m0fnu here) was
unreadable as a whole: load, open, inspect and verify all raised 'key 'a': dtype ... is
not supported', whatever keys were asked for. Now only that key raises, naming it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import reshard
from reshard.cli import main

ODD = getattr(torch, "float8_e8m0fnu", None)


@pytest.mark.skipif(ODD is None, reason="this torch has no float8_e8m0fnu")
def test_other_keys_of_a_dcp_checkpoint_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save({"a": torch.zeros(4, dtype=ODD), "b": torch.arange(3.0), "step": 7},
                 checkpoint_id=str(tmp_path / "dcp"))
    got = {"b": torch.zeros(3), "step": 0}
    reshard.load(got, tmp_path / "dcp")
    assert torch.equal(got["b"], torch.arange(3.0)) and got["step"] == 7
    refused = r"DCP key 'a': dtype torch\.float8_e8m0fnu is not supported"
    for dest in ({"a": torch.zeros(4)}, {"a": None}):
        with pytest.raises(reshard.UnsupportedValueError, match=refused):
            reshard.load(dest, tmp_path / "dcp")
    with reshard.open(tmp_path / "dcp") as ck:
        assert ck.keys() == ["a", "b", "step"] and torch.equal(ck.read("b"), torch.arange(3.0))
        with pytest.raises(reshard.UnsupportedValueError, match=refused):
            ck.read("a")
    assert reshard.verify(tmp_path / "dcp").ok
    assert main(["inspect", str(tmp_path / "dcp")]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'a'" in err and "convert cannot store it" in err
    assert not (tmp_path / "out").exists()
