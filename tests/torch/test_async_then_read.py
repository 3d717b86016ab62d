"""Reading a path while this process's async save to it is in flight: ``load``,
``reshard.open``, ``verify`` and ``convert`` wait for the save, as ``save`` does. They used to read the
previous checkpoint while the commit deleted its files, and failed at random with
"data file ... does not exist" (seen 1 time in 6 on a 32 MB state). A symlinked path to
the same folder counts as the same path."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard


class SlowCodec:
    """Identity, but each frame's encode waits a little: keeps a save in flight."""

    name = "test-slow-identity"

    def __init__(self) -> None:
        self.started = threading.Event()

    def encode(self, data: memoryview) -> bytes:
        self.started.set()
        time.sleep(0.02)
        return bytes(data)

    def decode(self, data: memoryview) -> bytes:
        return bytes(data)


def _state(version: int) -> dict[str, Any]:
    return {"w": torch.arange(4096, dtype=torch.float32) + version * 10_000, "step": version}


def _blank() -> dict[str, Any]:
    return {"w": torch.zeros(4096), "step": None}


@pytest.mark.parametrize("reader", ["load", "open", "verify", "save", "convert"])
@pytest.mark.parametrize("via_symlink", [False, True])
def test_readers_wait_for_the_async_save_to_their_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str, via_symlink: bool
) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "1024")  # 16 frames: ~0.3 s in flight
    real = tmp_path / "step"
    reshard.save(_state(1), real)
    link = tmp_path / "latest"
    os.symlink(real, link)
    codec = SlowCodec()
    reshard.register_codec(codec)
    handle = reshard.async_save(_state(2), link if via_symlink else real, codec=codec.name)
    assert codec.started.wait(30) and not handle.done()
    path = real if via_symlink else link  # the other spelling of the same folder
    if reader == "load":
        sd = _blank()
        reshard.load(sd, path)
        assert handle.done() and sd["step"] == 2 and torch.equal(sd["w"], _state(2)["w"])
    elif reader == "open":
        with reshard.open(path) as ck:
            assert handle.done() and ck.read("step") == 2 and torch.equal(ck.read("w"), _state(2)["w"])
    elif reader == "verify":
        report = reshard.verify(path)
        assert handle.done() and report.ok and report.warnings == ()
    elif reader == "convert":
        # convert found the previous checkpoint (or none) while the commit ran.
        from reshard.interop.convert import convert

        convert(str(path), str(tmp_path / "out.safetensors"))
        assert handle.done()
        convert(str(tmp_path / "out.safetensors"), str(tmp_path / "back"))
        with reshard.open(tmp_path / "back") as ck:
            assert ck.read("step") == 2 and torch.equal(ck.read("w"), _state(2)["w"])
    else:
        reshard.save(_state(3), path)
        assert handle.done()
        sd = _blank()
        reshard.load(sd, real)
        assert sd["step"] == 3 and len(os.listdir(real / "data")) == 1
    handle.result()


class FailingCodec:
    name = "test-failing-in-background"

    def encode(self, data: memoryview) -> bytes:
        raise RuntimeError("injected: disk went away")

    def decode(self, data: memoryview) -> bytes:
        return bytes(data)


def test_background_failure_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A program that never calls result() (or exits first) used to lose a failed
    background save without a word; the failure is now also logged as a warning."""
    reshard.save(_state(1), tmp_path)
    codec = FailingCodec()
    reshard.register_codec(codec)
    with caplog.at_level("WARNING", logger="reshard"):
        handle = reshard.async_save(_state(2), tmp_path, codec=codec.name)
        with pytest.raises(reshard.CheckpointError, match="injected: disk went away"):
            handle.result(timeout=60)
    logged = [r.getMessage() for r in caplog.records if r.name == "reshard"]
    assert any("async_save" in m and str(tmp_path) in m and "injected: disk went away" in m
               for m in logged), logged
    sd = _blank()
    reshard.load(sd, tmp_path)
    assert sd["step"] == 1  # the previous checkpoint stays


@pytest.mark.parametrize("spelling", ["file-url", "file-no-authority", "memory"])
def test_other_spellings_of_the_path_wait_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """``file://`` and ``file:`` URLs of a local folder, and ``memory://a`` against
    ``memory:///a``, name the folder the async save writes: a load waits for it. The
    fsspec spellings used to count as other folders, and ``file:/abs`` as the relative
    folder ``file:``."""
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "1024")
    if spelling == "memory":
        name = f"reshard-tests/spelling-{os.getpid()}-{time.monotonic_ns()}"
        saved, read = f"memory://{name}", f"memory:///{name}"
    else:
        saved = str(tmp_path / "step")
        read = f"file://{saved}" if spelling == "file-url" else f"file:{saved}"
    reshard.save(_state(1), saved)
    codec = SlowCodec()
    reshard.register_codec(codec)
    handle = reshard.async_save(_state(2), saved, codec=codec.name)
    assert codec.started.wait(30) and not handle.done()
    sd = _blank()
    reshard.load(sd, read)
    assert handle.done() and sd["step"] == 2 and torch.equal(sd["w"], _state(2)["w"])
    handle.result()
    assert not os.path.exists("file:"), "file:/abs must not become a relative folder"
