"""Reading DCP chunks: each blob is decoded once per destination box, not once per piece."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import reshard
import torch
from reshard.interop import dcp as dcp_interop


def test_one_decode_per_chunk_and_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.checkpoint as dcp

    full = torch.arange(64 * 48, dtype=torch.float32).reshape(64, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": full}, checkpoint_id=str(tmp_path / "dcp"))
    monkeypatch.setenv("RESHARD_MAX_PIECE_NBYTES", "256")  # far below the 12 KiB blob
    calls: list[int] = []
    real = dcp_interop.DcpTorchSaveCodec.decode

    def counting(self: dcp_interop.DcpTorchSaveCodec, data: memoryview) -> memoryview:
        calls.append(len(data))
        return real(self, data)

    monkeypatch.setattr(dcp_interop.DcpTorchSaveCodec, "decode", counting)
    with reshard.open(tmp_path / "dcp") as ck:
        part = ck.read("w", (slice(3, 60), slice(5, 20)))  # not contiguous in the chunk
    assert torch.equal(part, full[3:60, 5:20])
    assert len(calls) == 1
