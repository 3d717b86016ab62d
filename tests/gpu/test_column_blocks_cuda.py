"""save/async_save(..., column_blocks=k) of CUDA tensors: the tiles are non-contiguous
views on the GPU, copied to host piece by piece (large) or gathered (small); every
element loads back exactly into GPU and host tensors. Conjugate and negative views too:
async_save's non-blocking staging copy of a non-contiguous conjugate or negative CUDA
view (each tile of one) dropped its lazy bit, so the checkpoint held the unconjugated
values (seen on an H200, torch 2.11; the whole, contiguous view copied right).
Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import reshard

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _pattern(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    v = torch.arange(n, dtype=torch.int64) + seed
    if dtype == torch.bool:
        v = (v * 2654435761) % 7 < 3
    elif dtype == torch.bfloat16:
        v = (v * 2654435761) % 255 - 127  # exact, not periodic in a power of two
    return v.to(dtype).reshape(shape)


def _state() -> dict[str, Any]:
    cases = {"f32_34mib": ((2100, 4096), torch.float32), "bf16": ((700, 1000), torch.bfloat16),
             "i64": ((400, 333), torch.int64), "bool": ((1100, 1000), torch.bool),
             "f32_1001": ((300, 1001), torch.float32), "one_col": ((4200, 1, 1024), torch.float32),
             "small": ((30, 40), torch.float32)}
    sd = {k: _pattern(s, dt, i).cuda() for i, (k, (s, dt)) in enumerate(cases.items())}
    c = sd["f32_1001"]
    sd["colmajor"] = c.t().contiguous().t()
    sd["conj"] = torch.conj(torch.complex(c, -c).conj().resolve_conj())
    sd["neg"] = torch._neg_view(-c)
    assert sd["conj"].is_conj() and sd["neg"].is_neg()
    return sd


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu().resolve_conj(), b.cpu().resolve_conj()
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


@pytest.mark.parametrize("how", ["save", "async_save"])
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_cuda_column_blocks_round_trip(tmp_path: Path, how: str, blocks: int) -> None:
    sd = _state()
    if how == "save":
        reshard.save(sd, tmp_path / "ck", column_blocks=blocks)
    else:
        reshard.async_save(sd, tmp_path / "ck", column_blocks=blocks).result()
    with reshard.open(tmp_path / "ck") as ck:
        assert len(ck.info("f32_34mib").chunks) >= blocks
        # One part of 16.4 MiB: two row runs.
        assert len(ck.info("one_col").chunks) == (2 if blocks > 1 else 1)
        assert len(ck.info("small").chunks) == 1
        for key in ("conj", "neg"):
            assert _same(ck.read(key, (slice(None), slice(400, 900))), sd[key][:, 400:900]), key
    for device in ("cuda", "cpu"):
        out = {k: torch.zeros(v.shape, dtype=v.dtype, device=device) for k, v in sd.items()}
        reshard.load(out, tmp_path / "ck")
        bad = [k for k in sd if not _same(out[k], sd[k])]
        assert not bad, (device, bad)
