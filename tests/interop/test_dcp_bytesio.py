"""io.BytesIO values of DCP checkpoints: DCP's default planner torch.saves them like any
value (``_io.BytesIO`` in the pickle), so reshard refused them as needing arbitrary pickle.
Now they are read without unpickling (the opcode stream is matched, never run) and load
as DCP's own load gives them: a BytesIO with the same bytes at the same position."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

import reshard
from reshard.cli import main


def _buffers() -> dict[str, io.BytesIO]:
    saved = io.BytesIO()
    torch.save({"x": torch.arange(3)}, saved)  # position at the end, as after a write
    moved = io.BytesIO(bytes(range(256)) * 3)  # every byte value, past U+007F too
    moved.seek(700)
    past_end = io.BytesIO(b"abc")
    past_end.seek(10)  # BytesIO allows a position past its end
    return {"saved": saved, "empty": io.BytesIO(), "moved": moved, "past_end": past_end,
            "nul": io.BytesIO(b"a\x00b\xff")}


def _dcp_save(state: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=str(path))


def _fresh() -> dict[str, Any]:
    return {**{k: io.BytesIO() for k in _buffers()}, "w": torch.zeros(6, dtype=torch.int64),
            "opt": {"buf": io.BytesIO(), "step": 0}}


def test_load_gives_what_dcp_load_gives_without_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state: dict[str, Any] = {**_buffers(), "w": torch.arange(6),
                             "opt": {"buf": io.BytesIO(b"nested"), "step": 7}}
    _dcp_save(state, tmp_path / "dcp")
    expected = _fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(expected, checkpoint_id=str(tmp_path / "dcp"))
    # Never unpickled: a torch.load that is not weights_only, or any pickle.Unpickler /
    # pickle.loads, fails the test.
    real_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("weights_only") is True, kwargs
        return real_load(*args, **kwargs)

    def no_pickle(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpickled")

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    for strict in (True, False):
        got = _fresh()
        reshard.load(got, tmp_path / "dcp", strict=strict)
        assert torch.equal(got["w"], torch.arange(6)) and got["opt"]["step"] == 7
        for k, buf in [*((k, got[k]) for k in _buffers()), ("opt.buf", got["opt"]["buf"])]:
            want = expected[k] if k in expected else expected["opt"]["buf"]
            assert type(buf) is io.BytesIO, k
            assert buf.getvalue() == want.getvalue() and buf.tell() == want.tell(), k
    assert got["saved"].getvalue() == state["saved"].getvalue() and got["moved"].tell() == 700
    assert got["past_end"].tell() == 10 and got["nul"].getvalue() == b"a\x00b\xff"
    # Into an empty container, and through open(): a new buffer on every read.
    holder: dict[str, Any] = {"opt": {}}
    reshard.load(holder, tmp_path / "dcp", strict=False)
    assert holder["opt"]["buf"].getvalue() == b"nested" and holder["opt"]["step"] == 7
    with reshard.open(tmp_path / "dcp") as ckpt:
        first, second = ckpt.read("moved"), ckpt.read("moved")
        assert first is not second and first.tell() == second.tell() == 700
        first.read()
        assert second.tell() == 700
        assert ckpt.info("moved").kind == "value" and ckpt.info("moved").refused is None


def test_inspect_verify_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _dcp_save({**_buffers(), "w": torch.arange(6)}, tmp_path / "dcp")
    assert main(["inspect", str(tmp_path / "dcp")]) == 0
    out = capsys.readouterr().out
    assert "refused" not in out and "moved" in out
    assert main(["verify", str(tmp_path / "dcp")]) == 0
    # reshard's value form has no BytesIO: convert says so (as bytes, a load of the output
    # would give bytes where the DCP directory gives a BytesIO).
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "io.BytesIO" in err and "'moved'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _archive(obj: object, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def test_only_the_exact_pickle_of_a_bytesio_is_read() -> None:
    """Everything else stays refused as needing arbitrary pickle: nothing is run."""
    from reshard.interop._dcp_bytesio import bytesio_state

    for name, buf in _buffers().items():
        state = bytesio_state(_archive(buf))
        assert state is not None and state.data == buf.getvalue() and state.position == buf.tell(), name
    tagged = io.BytesIO(b"x")
    tagged.note = "attribute"  # type: ignore[attr-defined]
    hostile = _archive(io.BytesIO(b"x"))
    with zipfile.ZipFile(io.BytesIO(hostile)) as zf:
        records = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))

    def with_pickle(data: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            for n, v in records.items():
                zf.writestr(n, data if n == pkl else v)
        return out.getvalue()

    # The BytesIO pickle, then a call of os.system before STOP.
    evil = records[pkl][:-1] + b"0cos\nsystem\n(S'echo hi'\ntR."
    for what, blob in {
        "attributes": _archive(tagged),
        "protocol 4": _archive(io.BytesIO(b"x"), pickle_protocol=4),
        "list of BytesIO": _archive([io.BytesIO(b"x")]),
        "bytes": _archive(b"x"),
        "tensor": _archive(torch.arange(3)),
        "os.system appended": with_pickle(evil),
        "not a pickle": with_pickle(b"\x80\x02garbage"),
        "not a zip": b"PK\x03\x04 nothing",
    }.items():
        assert bytesio_state(blob) is None, what
