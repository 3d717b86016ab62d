"""Strided identity pieces read, verified and cut into place a window of frames at a
time (transfer/read.py ``_read_windows``): every selection exact, whatever the frame
size (also frames that cut elements), and a flipped byte still fails its checksum."""

from __future__ import annotations

import itertools

import pytest
import torch

import reshard
from reshard.manifest_io import load_manifest
from reshard.storage import open_store
from reshard.transfer import read as read_mod


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "f32": torch.arange(37 * 29, dtype=torch.float32).reshape(37, 29),
        "bf16": (torch.arange(23 * 41) % 256).to(torch.bfloat16).reshape(23, 41),
        "i64": torch.arange(5 * 6 * 7, dtype=torch.int64).reshape(5, 6, 7),
        "u8": (torch.arange(19 * 33) % 251).to(torch.uint8).reshape(19, 33),
    }


def _selections(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    cuts = []
    for n in shape:
        cuts.append([slice(0, n), slice(1, n - 1), slice(n // 2, n), slice(0, max(1, n // 3))])
    return [sel for sel in itertools.product(*cuts)]


@pytest.mark.parametrize("frame", ["16", "20", "7"])
def test_windowed_strided_reads_are_exact(tmp_path, monkeypatch, frame) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)
    sd = _tensors()
    path = tmp_path / "ckpt"
    reshard.save(sd, path)
    monkeypatch.delenv("RESHARD_FRAME_RAW_NBYTES")
    calls = {"n": 0}
    real = read_mod._read_windows

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        real(*args, **kwargs)

    monkeypatch.setattr(read_mod, "_read_windows", counted)
    monkeypatch.setattr(read_mod, "WINDOW_NBYTES", 48)
    ckpt = reshard.open(path)
    bad = []
    for key, want in sd.items():
        for sel in _selections(tuple(want.shape)):
            got = ckpt.read(key, sel)
            if not torch.equal(got, want[sel]):
                bad.append((key, sel))
    assert not bad, bad[:5]
    assert calls["n"] > 20


def test_windowed_read_still_fails_a_flipped_byte(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "16")
    path = tmp_path / "ckpt"
    reshard.save({"w": torch.arange(40 * 30, dtype=torch.float32).reshape(40, 30)}, path)
    monkeypatch.setattr(read_mod, "WINDOW_NBYTES", 48)
    store = open_store(str(path), None)
    chunk = load_manifest(store).entries[0].chunks[0]
    store.close()
    at = chunk.frame_offsets()[len(chunk.frames) // 2] + 5  # a late window of the piece
    target = path / chunk.file
    data = bytearray(target.read_bytes())
    data[at] ^= 0x10
    target.write_bytes(bytes(data))
    with pytest.raises(reshard.CorruptCheckpointError, match=r"key 'w'.*CRC-32C"):
        reshard.open(path).read("w", (slice(0, 40), slice(3, 17)))
