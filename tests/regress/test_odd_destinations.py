"""Regressions from the odd-layout hunt, one process: each test names the bug it pins."""

from __future__ import annotations

import pytest
import torch

import reshard


def _one_element_views() -> dict[str, torch.Tensor]:
    # torch calls a one-element tensor contiguous whatever its strides.
    return {
        "step": torch.zeros(4, dtype=torch.int16)[::2][:1],  # (1,) stride (2,)
        "col": torch.zeros(9, dtype=torch.complex64).as_strided((1, 1), (5, 3)),
        "zero_stride": torch.zeros((), dtype=torch.float64).expand(1),  # (1,) stride (0,)
    }


@pytest.mark.parametrize("codec", [None, "zstd", reshard.ZstdCodec(planes=False),
                                   reshard.ZstdCodec(shuffle=False)])
@pytest.mark.parametrize("frame", ["3", "4096"])
def test_one_element_destination_with_a_stride(tmp_path, monkeypatch, codec, frame):
    # Bug: decoding straight into such a destination viewed it as bytes, which torch
    # refuses for a last stride other than 1: the load failed as a CorruptCheckpointError
    # ("self.stride(-1) must be 1 to view Short as Byte") for every codec but identity.
    dests = _one_element_views()
    want = {k: (torch.arange(v.numel(), dtype=torch.float64) + 7).to(v.dtype).reshape(v.shape)
            for k, v in dests.items()}
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)
    reshard.save(want, tmp_path, codec=codec)
    reshard.load(dests, tmp_path)
    for k, v in dests.items():
        assert torch.equal(v, want[k]), k
