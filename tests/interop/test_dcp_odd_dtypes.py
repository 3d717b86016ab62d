"""A DCP checkpoint holding one tensor of a dtype reshard lacks (float8_e8m0fnu here) was
unreadable as a whole: load, open, inspect and verify all raised 'key 'a': dtype ... is
not supported', whatever keys were asked for. Now only that key raises, naming it."""

from __future__ import annotations

import warnings
from fractions import Fraction
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


def _load_on_two_ranks(rank: int, world: int, path: str) -> list[str]:
    got = {"b": torch.zeros(3)}
    reshard.load(got, path)
    assert torch.equal(got["b"], torch.arange(3.0))
    got = {"b": torch.zeros(3), "obj": None}
    reshard.load(got, path, allow_pickle=True)
    assert got["obj"] == Fraction(1, 3)
    refused = []
    for dest in ({"obj": None}, {"a": torch.zeros(4)}):
        try:
            reshard.load(dest, path)
        except reshard.UnsupportedValueError as e:
            refused.append(str(e).split(" (")[0][:60])
    return refused


def test_refused_and_pickled_dcp_values_on_several_ranks(tmp_path: Path) -> None:
    """The manifest of a DCP checkpoint is broadcast from rank 0: its refused and pickled
    value entries (subclasses of a slotted dataclass) arrived without their key and
    value, and every load on 2 ranks failed with 'rank 1: AttributeError: ... no
    attribute 'key'', whatever keys it asked for."""
    import torch.distributed.checkpoint as dcp

    from tests.helpers.world import run_world

    state = {"b": torch.arange(3.0), "obj": Fraction(1, 3)}
    if ODD is not None:
        state["a"] = torch.zeros(4, dtype=ODD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path))
    for refused in run_world(_load_on_two_ranks, 2, str(tmp_path), timeout_s=120):
        assert refused[0].startswith("DCP key 'obj' holds a Python object")
        assert ODD is None or refused[1].startswith("DCP key 'a': dtype torch.float8_e8m0fnu")


@pytest.mark.skipif(ODD is None, reason="this torch has no float8_e8m0fnu")
@pytest.mark.parametrize("zstd", [False, True])
def test_verify_checks_the_tensor_it_cannot_decode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], zstd: bool
) -> None:
    """verify counted a DCP tensor of a dtype reshard lacks as intact without reading a
    byte of it ('intact', exit 0); then it listed it as not checked (exit 4). Its item is
    a torch.save archive whose zip records carry CRC-32s over every byte, so verify now
    checks those without decoding the dtype: intact and exit 0 when they pass, DAMAGED
    naming the key (exit 1) when a byte of its data is flipped; damage elsewhere names
    only the damaged key."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    path = tmp_path / "dcp"
    odd = torch.arange(100, 164, dtype=torch.uint8).view(ODD)  # bytes found below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save({"a": odd, "b": torch.arange(3.0), "step": 7},
                 storage_writer=FileSystemWriter(str(path), _extensions=[ZStandard()] if zstd else None))
    report = reshard.verify(path)
    assert report.intact and not report.unchecked and not report.damaged, report
    assert report.chunks == 3 and report.frames == 3  # a, b and the value step
    assert report.bytes_checked == sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".distcp")
    assert main(["verify", str(path)]) == 0
    assert ": intact: 3 keys, 3 chunks" in capsys.readouterr().out
    (data,) = [p for p in path.iterdir() if p.suffix == ".distcp"]
    good = data.read_bytes()
    if zstd:
        # The data is compressed: flip a byte in the middle of each item in turn.
        with reshard.open(path) as ck:
            entries = {e.key[0]: e for e in ck.manifest.entries}
        (b_chunk,) = entries["b"].chunks  # type: ignore[union-attr]
        ((_, a_item),) = entries["a"].items  # type: ignore[union-attr]
        at = {"a": a_item.offset + a_item.length // 2, "b": b_chunk.offset + b_chunk.nbytes // 2}
    else:
        at = {"a": good.find(bytes(range(100, 164))) + 7,
              "b": good.find(torch.arange(3.0).numpy().tobytes()) + 5}
        assert at["a"] > 7 and at["b"] > 5
    for key in ("a", "b"):
        blob = bytearray(good)
        blob[at[key]] ^= 0x40
        data.write_bytes(bytes(blob))
        report = reshard.verify(path)
        assert not report.ok and not report.unchecked, report
        assert [d.key for d in report.damaged] == [key], report.damaged
        if key == "a":
            assert report.damaged[0].chunk_offsets == (0,)
            with reshard.open(path) as ck:  # 'b' still loads; 'a' stays refused for its dtype
                assert torch.equal(ck.read("b"), torch.arange(3.0))
        assert main(["verify", str(path)]) == 1
        out = capsys.readouterr().out
        assert "DAMAGED (1 problem)" in out and f"damaged: key {key!r}" in out and "not checked" not in out
    data.write_bytes(good)
    # A truncated file: both tensors' items (and the value before them) lie past its end.
    data.write_bytes(good[:at["a"]])
    report = reshard.verify(path)
    assert "a" in {d.key for d in report.damaged}
    assert any("truncated" in d.message for d in report.damaged if d.key == "a")


@pytest.mark.skipif(ODD is None, reason="this torch has no float8_e8m0fnu")
def test_indexed_read_of_a_refused_tensor_says_why(tmp_path: Path) -> None:
    """ck.read("a", 0) said "key 'a' is a plain value; it has no index" for a tensor
    that is refused for its dtype: the reason is what must be raised, index or not."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save({"a": torch.zeros(4, dtype=ODD), "v": Fraction(1, 3)},
                 checkpoint_id=str(tmp_path / "dcp"))
    with reshard.open(tmp_path / "dcp") as ck:
        for index in (0, (slice(0, 2),), ...):
            with pytest.raises(reshard.UnsupportedValueError,
                               match=r"DCP key 'a': dtype torch\.float8_e8m0fnu is not supported"):
                ck.read("a", index)
        with pytest.raises(reshard.UnsupportedValueError, match="'v'"):
            ck.read("v", 0)


@pytest.mark.parametrize("zstd", [False, True])
def test_a_value_too_large_to_read_is_refused_by_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, zstd: bool
) -> None:
    """A DCP value item past the 1 GiB reshard reads into memory for one value (here the
    bound is lowered to 4 KiB) made the whole directory unreadable, as corrupt ('a
    ...-byte value is too large'), and verify said only that. Now its key is refused,
    naming it; the other keys load, and verify lists it as not checked (exit 4) while
    checking the rest."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    from reshard.interop import dcp as reshard_dcp

    path = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save({"blob": bytes(8192), "b": torch.arange(3.0), "step": 7},
                 storage_writer=FileSystemWriter(str(path), _extensions=[ZStandard()] if zstd else None))
    monkeypatch.setattr(reshard_dcp, "_MAX_VALUE_NBYTES", 4096)
    got = {"b": torch.zeros(3), "step": 0}
    reshard.load(got, path)
    assert torch.equal(got["b"], torch.arange(3.0)) and got["step"] == 7
    with pytest.raises(reshard.UnsupportedValueError,
                       match=r"DCP key 'blob' holds a value of more than 4096 bytes"):
        reshard.load({"blob": None}, path)
    report = reshard.verify(path)
    assert report.ok and not report.intact and [u.key for u in report.unchecked] == ["blob"]
    assert report.chunks == 2  # 'b' and 'step'
    assert main(["verify", str(path)]) == 4
    out = capsys.readouterr().out
    assert "not checked: key 'blob': a DCP value of more than 4096 bytes" in out
