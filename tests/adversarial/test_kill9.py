"""SIGKILL at any moment of a save over an existing checkpoint leaves exactly the old or
exactly the new state, never a mix and never an error; the next save removes the leftovers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import reshard
from tests.helpers.world import WorldError, run_world

from . import _kill
from ._state import blank_state, data_files, leftovers, load_version, make_state, state_version

OLD, NEW = 1, 2


def _save_in_child_and_kill(path: Path, point: str, *, codec: str | None, timeout_s: float = 60) -> None:
    """Fork; the child saves version NEW with ``point`` armed; it must die by SIGKILL."""
    half = os.path.getsize(data_files(path)[0]) // 2
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            _kill.install(point, half_nbytes=half)
            reshard.save(make_state(NEW), path, codec=codec)
        finally:
            os._exit(17)  # reached only if the kill point was never hit (or save raised)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child saving with kill point {point!r} hung")
        time.sleep(0.01)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"kill point {point!r} was never reached (exit status {status})"
    )


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_kill9_at_every_step_of_a_save(tmp_path: Path, codec: str | None) -> None:
    problems: list[str] = []
    for point in _kill.OLD_POINTS + _kill.NEW_POINTS:
        path = tmp_path / point.replace(":", "-")
        reshard.save(make_state(OLD), path)
        _save_in_child_and_kill(path, point, codec=codec)
        expected = OLD if point in _kill.OLD_POINTS else NEW
        try:
            got = load_version(path)
        except reshard.CheckpointError as e:
            problems.append(f"{point}: load raised {type(e).__name__}: {e}")
            continue
        if got != expected:
            problems.append(f"{point}: loaded version {got}, expected {expected}")
        report = reshard.verify(path)
        if not report.ok:
            problems.append(f"{point}: verify found damage: {report.damaged}")
        if point not in ("data:0",) and point in _kill.OLD_POINTS and not leftovers(path):
            problems.append(f"{point}: expected leftovers of the killed save")
        # The next save to the path succeeds and removes every leftover.
        reshard.save(make_state(3), path)
        if load_version(path) != 3 or leftovers(path):
            problems.append(f"{point}: after the next save: leftovers {leftovers(path)}")
    assert not problems, "\n".join(problems)


def _world_kill(rank: int, world_size: int, path: str, point: str, victim: int) -> None:
    import torch

    from . import _kill as kill

    torch.set_num_threads(1)
    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "512"
    os.environ["RESHARD_IO_THREADS"] = "1"
    if rank == victim:
        kill.install(point, half_nbytes=600)
    reshard.save(make_state(NEW), path)


def _world_save(rank: int, world_size: int, path: str, version: int) -> int | None:
    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "512"
    reshard.save(make_state(version), path)
    sd = blank_state()
    reshard.load(sd, path)
    return state_version(sd)


@pytest.mark.dist
def test_kill9_one_rank_of_two(tmp_path: Path) -> None:
    """2 ranks save over a 2-rank checkpoint; rank 1 is SIGKILLed 600 bytes into its data file
    while rank 0 goes on (and is left blocked in the next collective, as in a real job, until
    the harness kills it). The old checkpoint loads exactly; the next save cleans up."""
    path = tmp_path / "ckpt"
    assert run_world(_world_save, 2, str(path), OLD, timeout_s=120) == [OLD, OLD]
    assert len(data_files(path)) == 2  # both ranks hold part of the old checkpoint
    with pytest.raises(WorldError, match=r"rank \d (died|failed)"):
        run_world(_world_kill, 2, str(path), "data:600", 1, timeout_s=120)
    assert load_version(path) == OLD
    assert reshard.verify(path).ok
    assert len(leftovers(path)) >= 1  # rank 1's partial file (and rank 0's, if it finished)
    reshard.save(make_state(3), path)  # the next save, here from a single process
    assert load_version(path) == 3 and leftovers(path) == []
