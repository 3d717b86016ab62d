"""Reading DCP chunks: each blob is decoded once per destination box, not once per piece."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import reshard
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


def test_one_file_per_item_and_threads(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    sd = {f"t{i}": torch.arange(10 * (i + 1), dtype=torch.int32) + i for i in range(5)}
    sd["meta"] = {"epoch": 3, "shape": torch.Size([2, 3])}  # type: ignore[assignment]
    writer = FileSystemWriter(str(tmp_path / "dcp"), single_file_per_rank=False, thread_count=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=writer)
    assert len([n for n in (tmp_path / "dcp").iterdir() if n.suffix == ".distcp"]) > 2
    out: dict[str, object] = {k: torch.zeros_like(v) for k, v in sd.items() if k != "meta"}
    out["meta"] = {"epoch": 0}
    reshard.load(out, tmp_path / "dcp")
    assert out["meta"] == {"epoch": 3}
    for k, v in sd.items():
        if k != "meta":
            assert torch.equal(out[k], v), k  # type: ignore[arg-type]
    with pytest.raises(reshard.UnsupportedValueError, match="meta.shape"):
        reshard.load({"meta": {"shape": None}}, tmp_path / "dcp")
    got: dict[str, object] = {"meta": {"shape": None}}
    reshard.load(got, tmp_path / "dcp", allow_pickle=True)
    assert got == {"meta": {"shape": torch.Size([2, 3])}}
