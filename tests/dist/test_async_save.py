"""reshard.async_save: staged snapshots, errors through result(), one save in flight at a time,
background collectives beside the training's own. Single process and a 2-rank gloo world."""

from __future__ import annotations

import pathlib
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.helpers.world import run_world


@dataclass
class FailingCodec:
    """Fails to encode on the given ranks (all ranks when None)."""

    ranks: tuple[int, ...] | None = None
    name: str = "failing"

    def encode(self, data: memoryview) -> bytes:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        if self.ranks is None or rank in self.ranks:
            raise RuntimeError(f"boom on rank {rank}")
        return bytes(data)

    def decode(self, data: memoryview) -> bytes:
        return bytes(data)


@dataclass
class GateCodec:
    """Identity, but encoding waits until ``gate`` is set: holds a save in flight."""

    gate: threading.Event = field(default_factory=threading.Event)
    name: str = "gate"

    def encode(self, data: memoryview) -> bytes:
        if not self.gate.wait(timeout=60):
            raise RuntimeError("gate never opened")
        return bytes(data)

    def decode(self, data: memoryview) -> bytes:
        return bytes(data)


def _state() -> dict[str, Any]:
    return {
        "w": torch.arange(64 * 33, dtype=torch.float32).reshape(64, 33),
        "h": torch.arange(50, dtype=torch.bfloat16),
        "mask": torch.arange(9) % 3 == 0,
        "np": np.arange(20, dtype=np.int32),
        "step": 7,
    }


def _zeros(state: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.zeros_like(v)
        elif isinstance(v, np.ndarray):
            out[k] = np.zeros_like(v)
        else:
            out[k] = None
    return out


def _mutate(state: dict[str, Any]) -> None:
    state["w"].fill_(-1)
    state["h"].add_(1)
    state["mask"].logical_not_()
    state["np"][:] = -5
    state["step"] = 8


def _assert_equal_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(got[k], v), k
        elif isinstance(v, np.ndarray):
            assert np.array_equal(got[k], v), k
        else:
            assert got[k] == v, k


def _module() -> Any:
    return sys.modules["reshard.async_save"]


# Single process


def test_changes_after_return_do_not_reach_the_checkpoint(tmp_path: pathlib.Path) -> None:
    want = _state()
    live = _state()
    handle = reshard.async_save(live, tmp_path / "ck")
    _mutate(live)
    handle.result(timeout=60)
    assert handle.done()
    expected_nbytes = sum(t.numel() * t.element_size() for t in
                          (want["w"], want["h"], want["mask"], torch.from_numpy(want["np"])))
    assert handle.staged_nbytes == expected_nbytes
    assert handle.blocked_s >= 0
    out = _zeros(want)
    reshard.load(out, tmp_path / "ck")
    _assert_equal_state(out, want)


def test_async_save_to_memory_fs() -> None:
    want = _state()
    live = _state()
    url = "memory://reshard-async/ck"
    handle = reshard.async_save(live, url, storage_options={})
    _mutate(live)
    handle.result(timeout=60)
    out = _zeros(want)
    reshard.load(out, url)
    _assert_equal_state(out, want)


def test_background_failure_is_raised_by_result(tmp_path: pathlib.Path) -> None:
    handle = reshard.async_save({"x": torch.arange(10)}, tmp_path / "ck", codec=FailingCodec())
    with pytest.raises(reshard.CheckpointError, match="boom on rank 0"):
        handle.result(timeout=60)
    assert handle.done()
    with pytest.raises(reshard.CheckpointError, match="boom"):  # every call re-raises
        handle.result()
    with pytest.raises(reshard.CheckpointNotFoundError):  # nothing was committed
        reshard.open(tmp_path / "ck")


def test_planning_errors_raise_from_async_save(tmp_path: pathlib.Path) -> None:
    with pytest.raises(reshard.UnsupportedValueError):
        reshard.async_save({"x": object()}, tmp_path / "ck")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(reshard.StorageError, match="not a directory"):
        reshard.async_save({"x": torch.zeros(2)}, tmp_path / "file")


def test_second_async_save_waits_for_the_first(tmp_path: pathlib.Path) -> None:
    codec = GateCodec()
    first = reshard.async_save({"x": torch.arange(10)}, tmp_path / "ck", codec=codec)
    with pytest.raises(TimeoutError, match="still running"):
        first.result(timeout=0.05)
    returned: list[Any] = []
    second_thread = threading.Thread(
        target=lambda: returned.append(reshard.async_save({"x": torch.arange(10) * 2}, tmp_path / "ck"))
    )
    second_thread.start()
    second_thread.join(timeout=0.5)
    assert second_thread.is_alive() and not first.done()  # held back while the first is in flight
    codec.gate.set()
    second_thread.join(timeout=60)
    assert not second_thread.is_alive() and first.done()
    first.result()
    returned[0].result(timeout=60)
    assert torch.equal(reshard.open(tmp_path / "ck").read("x"), torch.arange(10) * 2)


def test_save_waits_for_an_async_save_in_flight(tmp_path: pathlib.Path) -> None:
    codec = GateCodec()
    first = reshard.async_save({"x": torch.arange(10)}, tmp_path / "ck", codec=codec)
    saver = threading.Thread(target=lambda: reshard.save({"x": torch.arange(10) * 3}, tmp_path / "ck"))
    saver.start()
    saver.join(timeout=0.5)
    assert saver.is_alive() and not first.done()
    codec.gate.set()
    saver.join(timeout=60)
    assert not saver.is_alive()
    first.result()
    assert torch.equal(reshard.open(tmp_path / "ck").read("x"), torch.arange(10) * 3)


def test_staging_buffers_are_reused(tmp_path: pathlib.Path) -> None:
    state = {"a": torch.arange(1000, dtype=torch.float64), "b": torch.arange(77, dtype=torch.int8)}
    reshard.async_save(state, tmp_path / "one").result(timeout=60)
    pool = _module()._POOL
    first = sorted(b.data_ptr() for bufs in pool._free.values() for b in bufs)
    assert len(first) == 2
    state["a"].mul_(2)
    reshard.async_save(state, tmp_path / "two").result(timeout=60)
    second = sorted(b.data_ptr() for bufs in pool._free.values() for b in bufs)
    assert first == second
    assert torch.equal(reshard.open(tmp_path / "two").read("a"), torch.arange(1000, dtype=torch.float64) * 2)
    assert torch.equal(reshard.open(tmp_path / "one").read("a"), torch.arange(1000, dtype=torch.float64))
    _module().release_staging_buffers()
    assert not pool._free


# Two ranks


def _world_async(rank: int, world_size: int, root: str) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world_size,))
    full_w = torch.arange(13 * 6, dtype=torch.float32).reshape(13, 6)  # uneven: 7 + 6 rows
    full_r = torch.arange(10, dtype=torch.int64)
    failures: list[str] = []
    report: dict[str, Any] = {}

    def live_state(scale: int = 1) -> dict[str, Any]:
        return {"w": distribute_tensor(full_w * scale, mesh, [Shard(0)]),
                "r": distribute_tensor(full_r * scale, mesh, [Replicate()]),
                "p": torch.arange(4) + 100 * scale, "step": scale}

    def load_full(path: str) -> dict[str, Any]:
        out = {"w": distribute_tensor(torch.zeros(13, 6), mesh, [Replicate()]),
               "r": distribute_tensor(torch.zeros(10, dtype=torch.int64), mesh, [Shard(0)]),
               "p": torch.zeros(4, dtype=torch.int64), "step": 0}
        reshard.load(out, path)
        return {"w": out["w"].full_tensor(), "r": out["r"].full_tensor(), "p": out["p"],
                "step": out["step"]}

    def check(name: str, got: dict[str, Any], scale: int) -> None:
        ok = (torch.equal(got["w"], full_w * scale) and torch.equal(got["r"], full_r * scale)
              and torch.equal(got["p"], torch.arange(4) + 100 * scale) and got["step"] == scale)
        if not ok:
            failures.append(f"{name}: loaded state differs from the state at async_save")

    # a. Changes right after return; the training's collectives run beside the save.
    live = live_state()
    handle = reshard.async_save(live, f"{root}/a")
    live["w"].to_local().fill_(-1)
    live["r"].to_local().fill_(-1)
    live["p"].fill_(-1)
    for i in range(20):
        t = torch.tensor([float(rank + i)])
        dist.all_reduce(t)
        if t.item() != sum(r + i for r in range(world_size)):
            failures.append(f"all_reduce {i} during the background save gave {t.item()}")
    handle.result(timeout=60)
    check("a", load_full(f"{root}/a"), 1)

    # b. A failure on rank 1 only: result() raises the same CheckpointError on every rank.
    handle = reshard.async_save(live_state(), f"{root}/b", codec=FailingCodec(ranks=(1,)))
    try:
        handle.result(timeout=60)
        failures.append("b: result() did not raise")
    except reshard.CheckpointError as e:
        report["b_error"] = f"{type(e).__name__}: {e}"

    # c. Back to back: the second call returns only after the first finished.
    first = reshard.async_save(live_state(2), f"{root}/c")
    second = reshard.async_save(live_state(3), f"{root}/c")
    if not first.done():
        failures.append("c: the second async_save returned while the first was in flight")
    first.result(timeout=60)
    second.result(timeout=60)
    check("c", load_full(f"{root}/c"), 3)

    # d. Ranks disagreeing on a shape: the planning error is raised by async_save itself.
    try:
        reshard.async_save({"x": torch.zeros(3 + rank)}, f"{root}/d")
        failures.append("d: async_save did not raise")
    except reshard.LayoutMismatchError as e:
        report["d_error"] = str(e)

    # e. An explicit process group.
    group = dist.new_group(list(range(world_size)))
    handle = reshard.async_save(live_state(4), f"{root}/e", process_group=group)
    handle.result(timeout=60)
    check("e", load_full(f"{root}/e"), 4)

    if failures:
        raise AssertionError(f"rank {rank}: " + "; ".join(failures))
    return report


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks(tmp_path: pathlib.Path) -> None:
    reports = run_world(_world_async, 2, str(tmp_path), timeout_s=150)
    assert reports[0]["b_error"] == reports[1]["b_error"]
    assert "boom on rank 1" in reports[0]["b_error"] and reports[0]["b_error"].startswith("CheckpointError")
    assert reports[0]["d_error"] == reports[1]["d_error"] and "'x'" in reports[0]["d_error"]
