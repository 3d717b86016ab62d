"""``reshard inspect`` (and ``Checkpoint.info``) of a DCP directory showed a tensor reshard
refuses (a dtype it lacks) as a plain "value", and a value that needs arbitrary pickle as
an ordinary value: nothing said that loading either key raises, or why. They are listed
as refused, the tensor with its dtype and shape, each with its reason."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import reshard
from reshard.cli import main

ODD = getattr(torch, "float8_e8m0fnu", None)


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch.distributed.checkpoint as dcp

    path = tmp_path_factory.mktemp("refused") / "dcp"
    state = {"m": {"b.0": torch.arange(3.0)}, "step": 7, "obj": Fraction(1, 3)}
    if ODD is not None:
        state["m"]["odd.w"] = torch.zeros(2, 5, dtype=ODD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=str(path))
    return path


@pytest.mark.skipif(ODD is None, reason="this torch has no float8_e8m0fnu")
def test_info_describes_a_refused_tensor(odd: Path) -> None:
    with reshard.open(odd) as ck:
        info = ck.info("m.odd.w")
        assert (info.kind, info.shape, info.dtype, info.nbytes, info.chunks) == (
            "tensor", (2, 5), ODD, 10, ())
        assert info.refused is not None and "dtype torch.float8_e8m0fnu is not supported" in info.refused
        with pytest.raises(reshard.UnsupportedValueError, match="float8_e8m0fnu"):
            ck.read("m.odd.w")
        assert ck.info("m.b.0").refused is None and ck.info("step").refused is None


def test_info_describes_a_value_that_needs_pickle(odd: Path) -> None:
    with reshard.open(odd) as ck:
        info = ck.info("obj")
        assert info.kind == "value" and info.refused is not None
        # The line naming the refused class, without torch's terminal escape codes.
        assert "fractions.Fraction" in info.refused and "\x1b" not in info.refused
        assert "allow_pickle=True" in info.refused
    with reshard.open(odd, allow_pickle=True) as ck:
        assert ck.info("obj").refused is None and ck.read("obj") == Fraction(1, 3)


def test_inspect_lists_refused_keys_with_reasons(odd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(odd)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line[0] in "mso"}
    assert rows["step"][1:] == ["value", "-", "-", "-", "-"]
    assert rows["obj"][1:3] == ["value", "(refused)"]
    assert rows["m.b.0"][1:4] == ["float32", "[3]", "1"]
    refused = [line for line in out.splitlines() if line.startswith("refused: ")]
    assert any(line.startswith("refused: obj: DCP key 'obj' holds a Python object") for line in refused)
    if ODD is not None:
        assert rows["m.odd.w"][1:4] == ["float8_e8m0fnu", "(refused", "tensor)"]
        assert rows["m.odd.w"][4] == "[2," and rows["m.odd.w"][5] == "5]"
        assert any(line.startswith("refused: m.odd.w: DCP key 'm.odd.w': dtype torch.float8_e8m0fnu")
                   for line in refused)
        assert "2 of the keys cannot be loaded or read:" in out
        assert "1 chunks, 12 B of tensor data" in out  # the refused tensor holds no readable data
    else:
        assert "1 of the keys cannot be loaded or read:" in out


def test_a_reshard_checkpoint_has_no_refused_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reshard.save({"t": torch.arange(2), "v": 3}, tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    assert "refused" not in capsys.readouterr().out
    with reshard.open(tmp_path) as ck:
        assert ck.info("t").refused is None and ck.info("v").refused is None


def test_refusal_reasons_escape_control_characters(tmp_path: Path) -> None:
    """The reason quotes the class name torch's weights_only loader refused, which comes
    from the checkpoint's pickle: a terminal escape in it reached whoever printed the
    error raw."""
    import sys
    import types

    import torch.distributed.checkpoint as dcp

    name = "evil\x1b[2J"
    module = types.ModuleType(name)
    module.Cls = type("Cls", (), {"__module__": name, "__qualname__": "Cls"})  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"obj": module.Cls(), "t": torch.arange(2)}, checkpoint_id=str(tmp_path))
    finally:
        del sys.modules[name]
    with pytest.raises(reshard.UnsupportedValueError) as caught:
        reshard.load({"obj": None}, tmp_path)
    message = str(caught.value)
    assert "evil\\x1b[2J" in message and "\x1b" not in message
    with reshard.open(tmp_path) as ck:
        assert "\x1b" not in (ck.info("obj").refused or "x\x1b")
