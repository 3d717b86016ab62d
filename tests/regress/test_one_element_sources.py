"""One-element tensors whose stride is not 1 as the *source* of bytes (the destination
side is pinned in test_odd_destinations): torch calls them contiguous whatever their
strides, so ``.contiguous()`` does not copy them, and viewing them as bytes failed."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import reshard
from reshard.cli import main as cli


def _views() -> dict[str, torch.Tensor]:
    return {
        "step": (torch.arange(4, dtype=torch.float32) + 3)[::2][:1],  # (1,) stride (2,)
        "col": torch.arange(8, dtype=torch.bfloat16).reshape(1, 4, 2)[..., 0][:, 1:2],  # (1, 1) stride (8, 2)
        "cube": (torch.arange(8, dtype=torch.int64) + 5).reshape(2, 2, 2)[1:, :1, 1:].transpose(0, 2),
        "cplx": torch.arange(9.).to(torch.complex64).as_strided((1, 1), (5, 3), 4),
        "plain": torch.arange(6, dtype=torch.float16).reshape(2, 3),
    }


def test_a_dcp_checkpoint_of_one_element_views_reads_loads_verifies_and_converts(tmp_path: Path) -> None:
    # Bug: DCP stores each tensor with torch.save, which keeps its strides; decoding such
    # an item viewed the loaded one-element tensor as bytes, which torch refuses for a
    # last stride other than 1: read and load raised CorruptCheckpointError ("frame 0
    # does not decode with codec 'dcp-torch-save': RuntimeError: self.stride(-1) must be
    # 1 to view Float as Byte"), verify called an intact checkpoint DAMAGED, convert failed.
    import torch.distributed.checkpoint as dcp

    src = _views()
    want = {k: v.clone() for k, v in src.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save(src, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    with reshard.open(tmp_path / "dcp") as ck:
        for k, v in want.items():
            got = ck.read(k)
            assert got.dtype == v.dtype and torch.equal(got, v), k
    out = {k: torch.full_like(v, 1) for k, v in want.items()}
    reshard.load(out, tmp_path / "dcp")
    for k, v in want.items():
        assert torch.equal(out[k], v), k
    report = reshard.verify(tmp_path / "dcp")
    assert report.ok, report.damaged
    assert cli(["convert", "--quiet", str(tmp_path / "dcp"), str(tmp_path / "conv")]) == 0
    with reshard.open(tmp_path / "conv") as ck:
        for k, v in want.items():
            assert torch.equal(ck.read(k), v), k


class _Sub(torch.Tensor):
    """A tensor subclass with memory of its own (not batched with plain tensors on save)."""


def test_a_one_element_view_of_a_tensor_subclass_saves(tmp_path: Path) -> None:
    # Bug: a tensor that is not a plain Tensor or Parameter is written on its own, from
    # adapters.tensor_bytes, which viewed it as bytes: the save failed on every rank with
    # "rank 0: RuntimeError: self.stride(-1) must be 1 to view Float as Byte".
    sd = {k: torch.Tensor._make_subclass(_Sub, v.as_strided(v.shape, v.stride(), v.storage_offset()))
          for k, v in _views().items()}
    for codec in (None, "zstd"):
        path = tmp_path / str(codec)
        reshard.save(sd, path, codec=codec)
        with reshard.open(path) as ck:
            for k, v in _views().items():
                got = ck.read(k)
                assert got.dtype == v.dtype and torch.equal(got, v), (codec, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_one_element_cuda_view_of_a_tensor_subclass_saves(tmp_path: Path) -> None:
    # The same bug in device_copy.pieces: a CUDA tensor written on its own is fetched in
    # pieces from a flat byte view of it.
    def on_cuda(v: torch.Tensor) -> torch.Tensor:  # the same view of a CUDA copy of its storage
        whole = torch.empty(0, dtype=v.dtype).set_(v.untyped_storage()).cuda()
        return torch.Tensor._make_subclass(_Sub, whole.as_strided(v.shape, v.stride(), v.storage_offset()))

    sd = {k: on_cuda(v) for k, v in _views().items()}
    assert all(sd[k].stride() == v.stride() for k, v in _views().items())
    reshard.save(sd, tmp_path)
    with reshard.open(tmp_path) as ck:
        for k, v in _views().items():
            assert torch.equal(ck.read(k), v), k
