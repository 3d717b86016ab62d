"""CUDA tensors: save from and load into GPU memory, a one-rank NCCL world, async_save's
pinned staging, and two gloo ranks sharing one GPU. Skipped on machines without CUDA."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.helpers.world import run_world

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cuda_state() -> dict[str, Any]:
    dev = torch.device("cuda", 0)
    return {
        "w": torch.arange(257 * 129, dtype=torch.float32, device=dev).reshape(257, 129),
        "b": torch.arange(1000, dtype=torch.float32, device=dev).to(torch.bfloat16),
        "i": torch.arange(-50, 50, dtype=torch.int64, device=dev),
        "m": torch.arange(77, device=dev) % 3 == 0,
        "t": torch.arange(40 * 6, dtype=torch.float16, device=dev).reshape(40, 6).t(),
        "z": torch.tensor(3.5, device=dev),
        "e": torch.empty(0, 5, device=dev),
        "nested": {"cpu": torch.arange(12, dtype=torch.int32).reshape(3, 4), "n": 7,
                   "np": np.arange(6, dtype=np.float64)},
    }


def _zeros_like(sd: dict[str, Any], device: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out[k] = _zeros_like(v, device)
        elif isinstance(v, torch.Tensor):
            out[k] = torch.zeros(v.shape, dtype=v.dtype, device=device or v.device)
        elif isinstance(v, np.ndarray):
            out[k] = np.zeros_like(v)
        else:
            out[k] = None
    return out


def _check_equal(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    for k, w in want.items():
        g = got[k]
        if isinstance(w, dict):
            _check_equal(g, w, f"{where}.{k}")
        elif isinstance(w, torch.Tensor):
            assert g.shape == w.shape and g.dtype == w.dtype, f"{where}.{k}"
            assert torch.equal(g.cpu(), w.cpu()), f"{where}.{k} differs"
        elif isinstance(w, np.ndarray):
            assert np.array_equal(g, w), f"{where}.{k} differs"
        else:
            assert g == w, f"{where}.{k}: {g!r} != {w!r}"


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_large_cuda_tensors_stream_through_pinned_pieces(
    tmp_path: pathlib.Path, codec: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reshard.transfer import device_copy

    # Pieces of 1 MiB (4 frames): several pieces per tensor, a short last piece.
    monkeypatch.setattr(device_copy, "PIECE_NBYTES", 1 << 20)
    calls = {"n": 0}
    real = device_copy.pieces

    def counted(tensor: torch.Tensor, piece_nbytes: int):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(tensor, piece_nbytes)

    monkeypatch.setattr(device_copy, "pieces", counted)
    dev = torch.device("cuda", 0)
    sd = {
        "big": torch.arange(1_300_007, dtype=torch.float32, device=dev),
        "wide_t": torch.arange(700 * 900, dtype=torch.bfloat16, device=dev).reshape(700, 900).t(),
        "mask": torch.arange(3_000_001, device=dev) % 7 == 0,
        "c": torch.complex(torch.arange(2e5), -torch.arange(2e5)).to(dev).conj(),
    }
    reshard.save(sd, tmp_path / "ck", codec=codec)
    assert calls["n"] == 4
    back = _zeros_like(sd, None)
    reshard.load(back, tmp_path / "ck")
    _check_equal(back, {k: v.resolve_conj() for k, v in sd.items()}, "streamed")
    assert reshard.verify(tmp_path / "ck").ok


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_single_process_cuda_round_trip(tmp_path: pathlib.Path, codec: str | None) -> None:
    sd = _cuda_state()
    reshard.save(sd, tmp_path / "ck", codec=codec)
    into_cuda = _zeros_like(sd, None)
    reshard.load(into_cuda, tmp_path / "ck")
    assert into_cuda["w"].device.type == "cuda"  # loaded in place, not replaced
    _check_equal(into_cuda, sd, "cuda")
    into_cpu = _zeros_like(sd, "cpu")
    reshard.load(into_cpu, tmp_path / "ck")
    _check_equal(into_cpu, sd, "cpu")
    # A checkpoint saved from CPU loads into GPU tensors.
    cpu_sd = {k: v for k, v in into_cpu.items()}
    reshard.save(cpu_sd, tmp_path / "from_cpu", codec=codec)
    back = _zeros_like(sd, None)
    reshard.load(back, tmp_path / "from_cpu")
    _check_equal(back, sd, "from_cpu")
    ck = reshard.open(tmp_path / "ck")
    assert torch.equal(ck.read("w", (slice(3, 9), 5)), sd["w"][3:9, 5].cpu())


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_cuda_tensors_saved_in_column_blocks(
    tmp_path: pathlib.Path, codec: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reshard import config

    monkeypatch.setattr(config, "COLUMN_TILE_NBYTES", 300_000)  # several row tiles per part
    dev = torch.device("cuda", 0)
    sd = {
        "w": torch.arange(1000 * 333, dtype=torch.float32, device=dev).reshape(1000, 333),
        "wide_t": torch.arange(700 * 900, dtype=torch.bfloat16, device=dev).reshape(700, 900).t(),
        "cube": torch.arange(64 * 50 * 48, dtype=torch.int64, device=dev).reshape(64, 50, 48),
        "v": torch.arange(300_000, dtype=torch.float32, device=dev),
    }
    reshard.save(sd, tmp_path / "ck", codec=codec, column_blocks=3)
    ck = reshard.open(tmp_path / "ck")
    assert sorted({(c.offsets[1], c.sizes[1]) for c in ck.info("w").chunks}) == [
        (0, 111), (111, 111), (222, 111)]
    assert len(ck.info("w").chunks) > 3 and len(ck.info("v").chunks) == 1
    assert len(ck.info("cube").chunks) > 3 and len(ck.info("wide_t").chunks) > 3
    assert torch.equal(ck.read("cube", (slice(5, 60), slice(17, 40), 3)), sd["cube"][5:60, 17:40, 3].cpu())
    ck.close()
    for device in (None, "cpu"):
        back = _zeros_like(sd, device)
        reshard.load(back, tmp_path / "ck")
        _check_equal(back, sd, f"column blocks into {device or 'cuda'}")
    assert reshard.verify(tmp_path / "ck").ok


def _nccl_world(rank: int, world: int, root: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    assert dist.get_backend() == "nccl"
    mesh = init_device_mesh("cuda", (world,))
    full = torch.arange(96 * 40, dtype=torch.float32, device="cuda").reshape(96, 40)
    sd = {
        "s0": DTensor.from_local(full.clone(), mesh, [Shard(0)], run_check=False),
        "r": DTensor.from_local(full[:5].clone(), mesh, [Replicate()], run_check=False),
        "plain": full[7].clone(),
        "step": 11,
    }
    reshard.save(sd, f"{root}/sync")
    dest = {
        "s0": DTensor.from_local(torch.zeros_like(full), mesh, [Shard(0)], run_check=False),
        "r": DTensor.from_local(torch.zeros(5, 40, device="cuda"), mesh, [Replicate()],
                                run_check=False),
        "plain": torch.zeros(40, device="cuda"),
        "step": None,
    }
    reshard.load(dest, f"{root}/sync")
    assert torch.equal(dest["s0"].to_local(), full)
    assert torch.equal(dest["r"].to_local(), full[:5])
    assert torch.equal(dest["plain"], full[7]) and dest["step"] == 11

    # async_save: staged through pinned host buffers; changes after return are not saved.
    for attempt in range(2):
        live = {"w": full.clone() + attempt, "b": full[:, :8].to(torch.bfloat16) + attempt}
        handle = reshard.async_save(live, f"{root}/async{attempt}")
        live["w"].add_(1000)
        live["b"].zero_()
        handle.result()
        got = {"w": torch.zeros_like(full), "b": torch.zeros(96, 8, dtype=torch.bfloat16,
                                                              device="cuda")}
        reshard.load(got, f"{root}/async{attempt}")
        assert torch.equal(got["w"], full + attempt), "async_save saved a later change"
        assert torch.equal(got["b"], full[:, :8].to(torch.bfloat16) + attempt)
    pool = sys.modules["reshard.async_save"]._POOL._free
    assert any(pinned for (_, pinned) in pool), f"no pinned staging buffer kept: {list(pool)}"


def test_nccl_one_rank_dtensor_and_async_save(tmp_path: pathlib.Path) -> None:
    run_world(_nccl_world, 1, str(tmp_path), backend="nccl", timeout_s=240)


def _gloo_shared_gpu(rank: int, world: int, root: str) -> None:
    import os

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from reshard.transfer import exchange

    torch.cuda.set_device(0)
    # Small frames and no size floor, so the S1 load takes the cooperative read path
    # (shared frames read by one rank, pieces swapped) into GPU destinations.
    os.environ.update({"RESHARD_FRAME_RAW_NBYTES": "512", "RESHARD_EXCHANGE_READS": "1",
                       "RESHARD_EXCHANGE_MIN_NBYTES": "1"})
    runs = {"n": 0}
    real_run = exchange.run

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs["n"] += 1
        return real_run(*args, **kwargs)

    exchange.run = counted
    mesh = init_device_mesh("cuda", (world,))
    shape = (91, 137)  # uneven along both dims on 2 ranks
    full = torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape)

    def local(d: int) -> torch.Tensor:
        return torch.chunk(full, world, dim=d)[rank].clone().cuda()

    sd = {"w": DTensor.from_local(local(0), mesh, [Shard(0)], run_check=False,
                                  shape=full.shape, stride=full.stride())}
    reshard.save(sd, f"{root}/ck", codec=None)
    for d in (0, 1):
        dest = {"w": DTensor.from_local(torch.zeros_like(local(d)), mesh, [Shard(d)],
                                        run_check=False, shape=full.shape,
                                        stride=full.stride())}
        reshard.load(dest, f"{root}/ck")
        assert torch.equal(dest["w"].to_local().cpu(), local(d).cpu()), f"Shard({d})"
    assert runs["n"] >= 1, "the Shard(1) load did not use cooperative reads"


def test_gloo_two_ranks_share_one_gpu(tmp_path: pathlib.Path) -> None:
    run_world(_gloo_shared_gpu, 2, str(tmp_path), timeout_s=240)
