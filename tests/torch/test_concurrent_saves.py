"""Saves to one path from two jobs at once, and the removal of leftovers by age."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

import reshard
from reshard.storage.local import LocalStore


def _data_files(path: Path) -> set[str]:
    return {p.name for p in (path / "data").iterdir()}


def test_two_saves_at_once_leave_the_last_committed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Save A writes its files, then waits at its commit while save B runs from start to
    end; A commits last. A's checkpoint must load whole: B's cleanup must not remove the
    files of A, which was still running."""
    monkeypatch.delenv("RESHARD_LEFTOVER_AGE_S", raising=False)
    path = tmp_path / "ckpt"
    reshard.save({"w": torch.zeros(64, 8)}, path)
    first = _data_files(path)
    a_state = {"w": torch.arange(512, dtype=torch.float32).reshape(64, 8)}
    b_state = {"w": -torch.arange(512, dtype=torch.float32).reshape(64, 8)}
    at_commit, go_on = threading.Event(), threading.Event()
    real = LocalStore.sync
    calls = {"n": 0}

    def paused(self: LocalStore, name: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # save A's commit (its first step, syncing data/) waits for B
            at_commit.set()
            assert go_on.wait(60)
        real(self, name)

    monkeypatch.setattr(LocalStore, "sync", paused)
    errors: list[BaseException] = []

    def save_a() -> None:
        try:
            reshard.save(a_state, path)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    thread = threading.Thread(target=save_a)
    thread.start()
    try:
        assert at_commit.wait(60)
        reshard.save(b_state, path)  # B commits first and replaces the first checkpoint
        out = {"w": torch.empty(64, 8)}
        reshard.load(out, path)
        assert torch.equal(out["w"], b_state["w"])
    finally:
        go_on.set()
        thread.join(60)
    assert not errors, errors
    out = {"w": torch.empty(64, 8)}
    reshard.load(out, path)
    assert torch.equal(out["w"], a_state["w"])
    assert reshard.verify(path).ok
    # The first checkpoint's files went with B's commit, B's with A's (A replaced B).
    assert not (first & _data_files(path))
    assert len(_data_files(path)) == 1


def test_leftovers_are_removed_once_old_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESHARD_LEFTOVER_AGE_S", raising=False)
    path = tmp_path / "ckpt"
    state = {"w": torch.arange(64, dtype=torch.float32)}
    reshard.save(state, path)
    first = _data_files(path)

    def leftover(seconds_ago: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - seconds_ago))
        name = f"{stamp}-{int(seconds_ago):012x}.0.bin"
        (path / "data" / name).write_bytes(b"partial")
        return name

    old, young = leftover(2 * 3600), leftover(60)
    reshard.save(state, path)
    files = _data_files(path)
    assert old not in files and not (first & files)  # a killed save's, and the replaced
    assert young in files  # may be a save to this path that is still running
    report = reshard.verify(path)
    assert report.ok and any(young in w for w in report.warnings)
    monkeypatch.setenv("RESHARD_LEFTOVER_AGE_S", "0")
    reshard.save(state, path)
    assert young not in _data_files(path) and len(_data_files(path)) == 1
    monkeypatch.setenv("RESHARD_LEFTOVER_AGE_S", "-1")
    with pytest.raises(reshard.CheckpointError, match="RESHARD_LEFTOVER_AGE_S"):
        reshard.save(state, path)
    out = {"w": torch.empty(64)}
    reshard.load(out, path)
    assert torch.equal(out["w"], state["w"])


def test_a_save_replacing_a_large_manifest_removes_its_files(tmp_path: Path) -> None:
    """The replaced manifest's save id is found whether its text names it before the
    entries (earlier writers) or after them, beyond the first 4 KiB."""
    path = tmp_path / "ckpt"
    reshard.save({f"k{i:04d}": torch.full((4,), i) for i in range(300)}, path)
    assert (path / "manifest.json").stat().st_size > 3 * 4096
    first = _data_files(path)
    reshard.save({"w": torch.ones(3)}, path)
    assert not (first & _data_files(path)) and len(_data_files(path)) == 1
    golden = Path(__file__).parents[1] / "compat" / "golden_v1"
    shutil.copytree(golden, tmp_path / "golden")
    reshard.save({"w": torch.ones(3)}, tmp_path / "golden")
    assert len(_data_files(tmp_path / "golden")) == 1
