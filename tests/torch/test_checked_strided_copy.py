"""Strided reads of uncoded chunks through the frame path (transfer/read._read_piece):
with frames that cut elements, every element lands exactly, mapped or read, and every
frame a read spans is checked, including frames whose bytes the box does not keep."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

import reshard
from tests.helpers.files import xor_byte


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "f32": torch.arange(37 * 23, dtype=torch.float32).reshape(37, 23),
        "bf16": torch.randn(5, 7, 11, generator=g).to(torch.bfloat16),
        "bool": torch.rand(40, 9, generator=g) > 0.5,
        "c128": torch.randn(13, 6, dtype=torch.complex128, generator=g),
        "i8": torch.randint(-128, 128, (3, 4, 5, 6), dtype=torch.int8, generator=g),
    }


def _boxes(shape: tuple[int, ...], rng: random.Random, n: int) -> list[tuple[slice, ...]]:
    """Boxes that keep part of a later dim, so the read is strided."""
    out = []
    for _ in range(n):
        box = []
        for d, size in enumerate(shape):
            lo = rng.randrange(size) if d else rng.randrange(max(1, size // 2))
            hi = rng.randrange(lo + 1, size + 1)
            box.append(slice(lo, hi))
        out.append(tuple(box))
    return out


@pytest.mark.parametrize("frame", [7, 64, 1000])
@pytest.mark.parametrize("mapped", ["1", "0"])
def test_strided_boxes_land_exactly_for_any_run_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: int, mapped: str
) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(frame))
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", "0")
    monkeypatch.setenv("RESHARD_MAP_READS", mapped)
    state = _state()
    reshard.save(state, tmp_path)
    rng = random.Random(frame)
    bad = []
    with reshard.open(tmp_path) as ck:
        for key, value in state.items():
            for box in _boxes(tuple(value.shape), rng, 24):
                got = ck.read(key, box)
                if not torch.equal(got.view(torch.uint8), value[box].contiguous().view(torch.uint8)):
                    bad.append(f"{key} {box}")
    assert not bad, bad[:5]


def _frames_of(path: Path, key: str) -> tuple[str, list[int]]:
    """The data file of ``key``'s one chunk and its frames' file offsets (and end)."""
    with reshard.open(path) as ck:
        (entry,) = [e for e in ck.manifest.entries if e.key == (key,)]
    (chunk,) = entry.chunks
    return str(path / chunk.file), chunk.frame_offsets()


@pytest.mark.parametrize("piece", [1 << 10, 1 << 20])
def test_every_frame_of_a_strided_read_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """A flipped bit in any frame the read spans fails the read and names that frame,
    even where the flipped byte lies in a column the box leaves out."""
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "96")
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", "0")
    monkeypatch.setenv("RESHARD_MAX_PIECE_NBYTES", str(piece))  # 1 KiB: several pieces
    value = torch.arange(30 * 16, dtype=torch.float32).reshape(30, 16)
    reshard.save({"w": value}, tmp_path)
    file, offs = _frames_of(tmp_path, "w")
    box = (slice(3, 27), slice(2, 5))  # rows 3..26: bytes 192..1740 of the chunk
    first, last = 192 // 96, (26 * 64 + 5 * 4 - 1) // 96
    missed = []
    for i, pos in itertools.product(range(first, last + 1), (0, 50, 95)):
        at = offs[i] + pos
        xor_byte(file, at, 1)
        try:
            with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError) as err:
                ck.read("w", box)
            if f"frame {i} " not in str(err.value):
                missed.append(f"byte {at}: {err.value}")
        finally:
            xor_byte(file, at, 1)
    assert not missed, missed[:5]
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("w", box), value[box])
