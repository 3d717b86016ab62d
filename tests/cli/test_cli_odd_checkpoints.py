"""inspect, verify and convert on checkpoints at the edges: empty, only plain values, 0-d and
empty tensors, keys with odd characters (the empty key "", spaces, '/', '..', non-ASCII,
a tab), from reshard and from DCP directories; every conversion is read back exactly.

A DCP directory holding the key "" (``dcp.save({"": t})`` writes it) was refused as a
whole: 'CorruptCheckpointError: state_dict_metadata key '' is not a name', for inspect,
verify, convert and load alike."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.cli import main
from reshard.interop.convert import convert

ODD_KEYS = {"": torch.arange(1), "a b": torch.arange(2), "x/y": torch.arange(3.0), "..": torch.arange(4),
            "é ": torch.arange(5, dtype=torch.int16), "tab\t": torch.arange(6, dtype=torch.uint8)}
STATES: dict[str, dict[str, Any]] = {
    "empty": {},
    "values": {"a": 1, "b": {"c": "x", "d": None, "e": 2.5}, "f": [1, "two"], "g": b"\x00\xff"},
    "shapes": {"z": torch.tensor(3.5), "e": torch.zeros(0, 4), "ee": torch.zeros(3, 0, 2, dtype=torch.int64),
               "one": torch.tensor([True, False, True])},
    "keys": ODD_KEYS,
}


def _flat(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, name + "."))
        elif isinstance(v, list):
            out.update(_flat(dict(enumerate(v)), name + "."))
        else:
            out[name] = v
    return out


def _check(path: Path, want: dict[str, Any], where: str) -> None:
    with reshard.open(path) as ck:
        assert sorted(ck.keys()) == sorted(want), where
        for k, v in want.items():
            got = ck.read(k)
            if isinstance(v, torch.Tensor):
                assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), (where, k)
            else:
                assert got == v and type(got) is type(v), (where, k)


def _save(kind: str, state: dict[str, Any], path: Path) -> None:
    if kind == "reshard":
        reshard.save(state, path)
        return
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=str(path))


@pytest.mark.parametrize("kind", ["reshard", "dcp"])
def test_inspect_verify_convert_round_trips(tmp_path: Path, kind: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name, state in STATES.items():
        src = tmp_path / name
        _save(kind, state, src)
        want = _flat(state)
        _check(src, want, f"{kind} {name}")
        assert main(["inspect", str(src), "--chunks"]) == 0, name
        out = capsys.readouterr().out
        assert f"\n{len(want)} keys, " in out, (name, out)
        assert main(["verify", str(src)]) == 0, name
        assert "intact" in capsys.readouterr().out
        assert main(["convert", "--quiet", str(src), str(tmp_path / f"{name}_r")]) == 0, name
        _check(tmp_path / f"{name}_r", want, f"{kind} {name} -> reshard")
        st = tmp_path / f"{name}.safetensors"
        assert main(["convert", "--quiet", str(src), str(st)]) == 0, name
        convert(str(st), str(tmp_path / f"{name}_back"))
        _check(tmp_path / f"{name}_back", want, f"{kind} {name} -> safetensors -> reshard")
        capsys.readouterr()


def test_dcp_key_that_is_empty_loads(tmp_path: Path) -> None:
    _save("dcp", {"": torch.arange(3), "m": {"": torch.arange(2.0)}, "v": 1}, tmp_path)
    got = {"": torch.zeros(3, dtype=torch.int64), "m": {}, "v": 0}
    reshard.load(got, tmp_path)
    assert torch.equal(got[""], torch.arange(3)) and got["v"] == 1
    assert list(got["m"]) == [""] and torch.equal(got["m"][""], torch.arange(2.0))


def test_errors_escape_control_characters_from_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hostile DCP .metadata naming a global with a terminal escape: the refusal quoted
    it raw, and inspect, verify and convert sent it to the terminal."""
    (tmp_path / "dcp").mkdir()
    (tmp_path / "dcp" / ".metadata").write_bytes(b"\x80\x04cos\x1b[2J\nsystem\n.")
    for command in (["inspect", str(tmp_path / "dcp")], ["verify", str(tmp_path / "dcp")],
                    ["convert", "--quiet", str(tmp_path / "dcp"), str(tmp_path / "out")]):
        assert main(command) == 1
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert "os\\x1b[2J.system" in text and "\x1b" not in text, command
    with pytest.raises(reshard.CorruptCheckpointError) as caught:
        reshard.open(tmp_path / "dcp")
    assert "\x1b" not in str(caught.value)
