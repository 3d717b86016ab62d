"""Regressions found by red-teaming, one process: each test names the bug it pins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reshard


def _arange(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape).to(dtype)


@pytest.mark.parametrize("frame_raw_nbytes", [5, 7, 13])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64, torch.complex128])
@pytest.mark.parametrize("codec", [None, "zstd"])
def test_frames_that_split_elements_read_exactly(tmp_path, monkeypatch, frame_raw_nbytes, dtype,
                                                 codec):
    # Bug: with frame_raw_nbytes not a multiple of the item size, partial reads viewed
    # the decoded bytes from a frame start inside an element: bfloat16 read garbage
    # silently (CRCs pass), wider dtypes raised a numpy ValueError.
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(frame_raw_nbytes))
    x = _arange((5, 7), dtype)
    reshard.save({"a": x}, tmp_path, codec=codec)
    monkeypatch.delenv("RESHARD_FRAME_RAW_NBYTES")
    with reshard.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.read("a"), x)
        assert torch.equal(ckpt.read("a", (slice(1, 4), slice(2, 6))), x[1:4, 2:6])
        assert torch.equal(ckpt.read("a", (3, slice(1, 6))), x[3, 1:6])
    dest = {"a": torch.zeros(5, 7, dtype=torch.complex128)}
    reshard.load(dest, tmp_path)
    assert torch.equal(dest["a"], x.to(torch.complex128))
    assert reshard.verify(tmp_path).ok
