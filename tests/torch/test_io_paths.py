"""The save/load byte paths the benchmark tuned: coalesced small chunks, overlapped
checksums and pipelined encoding of large chunks, batched reads, resharded reads."""

from __future__ import annotations

import pickle

import pytest
import torch

import reshard
from reshard.core.layout import Box, tiling_problem
from reshard.manifest_io import load_manifest
from reshard.storage import open_store
from reshard.transfer import write as write_mod


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = {f"small.{i}": torch.arange(i * 7 + 3, dtype=torch.float32) * (i + 1) for i in range(300)}
    sd["big"] = torch.randn(700, 913)  # several frames, odd sizes
    sd["big_bf16"] = torch.randn(1201, 333).to(torch.bfloat16)
    sd["mid"] = torch.arange(5000, dtype=torch.int64).reshape(50, 100)
    sd["empty"] = torch.empty(0, 4)
    return sd


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_mixed_sizes_roundtrip_and_slices(tmp_path, monkeypatch, codec) -> None:
    # Small frames and a low "small chunk" bound exercise every path: inline small chunks
    # coalesced into one write, large chunks checksummed/encoded on the pool.
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(64 * 1024 + 12))
    monkeypatch.setattr(write_mod, "SMALL_CHUNK_NBYTES", 30_000)
    monkeypatch.setattr(write_mod, "COALESCE_NBYTES", 50_000)
    sd = _state()
    reshard.save(sd, tmp_path / "ck", codec=codec)
    out = {k: torch.full_like(v, -1) for k, v in sd.items()}
    reshard.load(out, tmp_path / "ck")
    for k, v in sd.items():
        assert torch.equal(out[k], v), k
    with reshard.open(tmp_path / "ck") as ck:
        assert torch.equal(ck.read("big", (slice(13, 600), slice(100, 777))), sd["big"][13:600, 100:777])
        assert torch.equal(ck.read("big_bf16", (slice(None), slice(5, 6))), sd["big_bf16"][:, 5:6])
    m = load_manifest(open_store(tmp_path / "ck"))
    offsets = sorted((c.offset, c.nbytes) for e in m.entries for c in e.chunks)
    for (a, n), (b, _) in zip(offsets, offsets[1:]):
        assert a + n == b  # chunks back to back, in write order, no gaps


def test_manifest_pickles_equal(tmp_path) -> None:
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    m = load_manifest(open_store(tmp_path / "ck"))
    assert pickle.loads(pickle.dumps(m)) == m


def test_grid_tiling_fast_path_agrees() -> None:
    grid = [Box((r, c), (2, 3)) for r in (0, 2) for c in (0, 3, 6)]
    assert tiling_problem((4, 9), grid) is None
    assert tiling_problem((4, 9), grid[:-1]) is not None  # a hole
    assert tiling_problem((4, 9), grid + [Box((0, 0), (4, 3))]) is not None  # overlap
    assert tiling_problem((4, 9), [Box((0, 0), (4, 9))]) is None
    assert tiling_problem((4, 10), grid) is not None  # does not reach the end
