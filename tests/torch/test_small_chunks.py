"""Many small tensors: batched writes (one torch.cat per dtype run) and whole-chunk loads
(one read per run of neighbouring chunks, every frame checked before any byte is copied)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import reshard
from reshard.errors import CorruptCheckpointError
from reshard.manifest_io import load_manifest
from reshard.storage import open_store
from reshard.transfer import coalesce


def _state() -> dict[str, object]:
    sd: dict[str, object] = {}
    for i in range(40):
        sd[f"f32.{i}"] = torch.arange(i * 5 + 1, dtype=torch.float32) + 0.5 * i
    sd["bf16"] = torch.arange(33, dtype=torch.float32).to(torch.bfloat16)
    sd["bool"] = torch.arange(13) % 3 == 0
    sd["u8"] = torch.arange(7, dtype=torch.uint8)  # odd byte counts: unaligned offsets after it
    sd["i64_2d"] = torch.arange(24, dtype=torch.int64).reshape(4, 6)
    sd["transposed"] = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()  # not contiguous
    sd["conj"] = (torch.arange(6, dtype=torch.float32) * (1 + 2j)).to(torch.complex64).conj()
    sd["neg"] = torch._neg_view(torch.arange(5, dtype=torch.float32))
    sd["scalar"] = torch.tensor(3.25)
    sd["empty"] = torch.empty(0, 3)
    sd["numpy"] = np.arange(9, dtype=np.int32).reshape(3, 3)
    sd["after"] = torch.arange(10, dtype=torch.int16)
    return sd


def _expected(sd: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in sd.items():
        out[k] = v.copy() if isinstance(v, np.ndarray) else v.resolve_conj().resolve_neg().clone()
    return out


def _zeros_like(sd: dict[str, object]) -> dict[str, object]:
    return {k: np.zeros_like(v) if isinstance(v, np.ndarray)
            else torch.zeros_like(v.resolve_conj().resolve_neg()) for k, v in sd.items()}


def _check(out: dict[str, object], want: dict[str, object]) -> None:
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(out[k], v), k
        else:
            assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


@pytest.mark.parametrize("codec", [None, "zstd"])
@pytest.mark.parametrize("frame", [None, "12"])
def test_small_tensors_roundtrip(tmp_path, monkeypatch, codec, frame) -> None:
    if frame:
        monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)  # several frames per small chunk
    sd = _state()
    want = _expected(sd)
    reshard.save(sd, tmp_path / "ck", codec=codec)
    out = _zeros_like(sd)
    reshard.load(out, tmp_path / "ck")
    _check(out, want)
    m = load_manifest(open_store(tmp_path / "ck"))
    spans = sorted((c.offset, c.nbytes) for e in m.entries for c in e.chunks)
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n == b  # back to back, no gaps


def test_whole_chunk_targets_take_the_fast_path(tmp_path, monkeypatch) -> None:
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    seen: list[int] = []
    real = coalesce.fill_whole_chunks

    def spy(store, whole, **kw):
        real(store, whole, **kw)
        seen.append(len(whole))

    monkeypatch.setattr(sys.modules["reshard.load"], "fill_whole_chunks", spy)
    out = _zeros_like(sd)
    out["transposed"] = torch.zeros(3, 4, dtype=torch.float64).t()  # strided destination: general path
    reshard.load(out, tmp_path / "ck")
    _check(out, _expected(sd))
    # every non-empty target but the strided one
    assert seen == [len(sd) - 2]


@pytest.mark.parametrize("frame", [None, "12"])
def test_flipped_byte_in_small_chunk_is_refused(tmp_path, monkeypatch, frame) -> None:
    if frame:
        monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    m = load_manifest(open_store(tmp_path / "ck"))
    entry = next(e for e in m.entries if e.key == ("f32.7",))
    chunk = entry.chunks[0]
    path = os.path.join(tmp_path / "ck", chunk.file)
    with open(path, "r+b") as f:
        f.seek(chunk.offset + chunk.nbytes - 1)  # last frame
        byte = f.read(1)
        f.seek(chunk.offset + chunk.nbytes - 1)
        f.write(bytes([byte[0] ^ 0x10]))
    out = _zeros_like(sd)
    with pytest.raises(CorruptCheckpointError, match=r"key 'f32\.7'.*CRC-32C"):
        reshard.load(out, tmp_path / "ck")
    assert not out["f32.7"].any()  # nothing of the bad chunk was copied


def test_truncated_and_missing_data_file(tmp_path) -> None:
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    m = load_manifest(open_store(tmp_path / "ck"))
    (file,) = m.files()
    path = os.path.join(tmp_path / "ck", file)
    size = os.path.getsize(path)
    os.truncate(path, size - 3)
    with pytest.raises(CorruptCheckpointError, match=r"key '.*'.*truncated"):
        reshard.load(_zeros_like(sd), tmp_path / "ck")
    os.remove(path)
    with pytest.raises(CorruptCheckpointError, match=r"key '.*'.*missing"):
        reshard.load(_zeros_like(sd), tmp_path / "ck")


@pytest.mark.parametrize("threads", ["1", "4"])
def test_runs_are_bounded_and_gaps_small(tmp_path, monkeypatch, threads) -> None:
    # Tiny run limit: every chunk read on its own (on one or several threads); the
    # result is the same.
    monkeypatch.setattr(coalesce, "MAX_RUN_NBYTES", 16)
    monkeypatch.setenv("RESHARD_IO_THREADS", threads)
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    out = _zeros_like(sd)
    reshard.load(out, tmp_path / "ck")
    _check(out, _expected(sd))
