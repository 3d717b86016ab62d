"""Column checksums of CUDA tensors: their bytes reach the writer in pinned pieces cut
anywhere (transfer.device_copy), and the tile checksums must equal those of the same
tensor saved from host memory. Skipped without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import reshard

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _column_crcs(path: Path) -> dict[str, object]:
    doc = json.loads((path / "manifest.json").read_text())
    return {e["key"][0]: e["chunks"][0].get("column_crcs") for e in doc["entries"]}


@pytest.mark.parametrize("parts", ["2", "3"])
def test_cuda_tensors_get_the_column_checksums_of_host_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: str
) -> None:
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", parts)
    g = torch.Generator().manual_seed(7)
    host = {"big": torch.randn(9000, 1001, generator=g),  # 36 MiB: several 32 MiB pieces
            "bf16": torch.randn(3001, 777, generator=g).to(torch.bfloat16),
            "wide": torch.randn(3, 700001, generator=g), "3d": torch.randn(500, 77, 9, generator=g)}
    reshard.save(host, tmp_path / "host")
    reshard.save({k: v.cuda() for k, v in host.items()}, tmp_path / "cuda")
    want = _column_crcs(tmp_path / "host")
    assert all(v is not None for v in want.values())
    assert _column_crcs(tmp_path / "cuda") == want
    with reshard.open(tmp_path / "cuda") as ck:
        for key, full in host.items():
            half = -(-full.shape[1] // int(parts))
            assert torch.equal(ck.read(key, (slice(None), slice(half, 2 * half))), full[:, half:2 * half])
    assert reshard.verify(tmp_path / "cuda").ok
