"""A store that fails chosen operations on chosen ranks of a 2-rank world.

Whatever step fails, on whichever rank: every rank raises the same CheckpointError (no hang),
the previous checkpoint at the path stays intact and loadable, and the next save cleans up.
Failures after the commit (removing the previous files) do not fail the save.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import pytest

import reshard
from reshard.storage import LocalStore
from tests.helpers.world import run_world

from ._state import RotCodec, blank_state, leftovers, make_state, state_version

# (name, operation, failing rank, version expected at the path afterwards: 1 = old, 2 = new)
SAVE_FAULTS = [
    ("open_writer on rank 0", "open_writer", 0, 1),
    ("open_writer on rank 1", "open_writer", 1, 1),
    ("write on rank 0", "write", 0, 1),
    ("write on rank 1", "write", 1, 1),
    ("data file fsync/close on rank 1", "fsync", 1, 1),
    ("data file fsync/close on rank 0", "fsync", 0, 1),
    ("write_atomic (commit) on rank 0", "write_atomic", 0, 1),
    ("user codec encode on rank 1", "codec", 1, 1),
    ("unsupported value on rank 1", "value", 1, 1),
    ("list during post-commit cleanup", "list", 0, 2),
    ("delete during post-commit cleanup", "delete", 0, 2),
]
LOAD_FAULTS = [
    ("read_bytes (manifest) on rank 0", "read_bytes", 0),
    ("size on rank 1", "size", 1),
    ("read_into on rank 1", "read_into", 1),
    ("read_into on rank 0", "read_into", 0),
    ("view (mapped read) on rank 1", "view", 1),
    ("view (mapped read) on rank 0", "view", 0),
]


class Injected(OSError):
    """What a failing disk raises: a plain OSError, not a reshard error."""


class _FaultyWriter:
    def __init__(self, inner: Any, op: str) -> None:
        self._inner, self._op, self._writes = inner, op, 0

    def write(self, data: Any) -> int:
        self._writes += 1
        if self._op == "write" and self._writes == 1:  # small chunks go out in one write
            raise Injected(errno.ENOSPC, "injected: no space left on device")
        return int(self._inner.write(data))

    def close(self) -> None:
        if self._op == "fsync":
            raise Injected(errno.EIO, "injected: fsync failed")
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultyStore:
    """A LocalStore whose operation ``op`` fails when ``armed``."""

    def __init__(self, path: str, op: str, armed: bool) -> None:
        self._inner = LocalStore(path)
        if op == "read_into":
            self._inner._map_reads = False  # every read then goes through read_into
        self._op, self._armed = op, armed
        self.location = self._inner.location

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not self._armed:
            return attr
        if name == "open_writer" and self._op in ("write", "fsync"):
            return lambda n: _FaultyWriter(attr(n), self._op)
        if name != self._op:
            return attr

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise Injected(errno.EIO, f"injected: {name} failed")

        return fail


def _arm(module: str, op: str, armed: bool) -> None:
    sys.modules[module].open_store = lambda path, *_, **__: FaultyStore(os.fspath(path), op, armed)  # type: ignore[attr-defined]


def _disarm() -> None:
    from reshard.storage import open_store

    sys.modules["reshard.save"].open_store = open_store  # type: ignore[attr-defined]
    sys.modules["reshard.load"].open_store = open_store  # type: ignore[attr-defined]


class _RankCodec(RotCodec):
    name = "test-fails-on-rank-1"

    def encode(self, data: memoryview) -> bytes:
        import torch.distributed as dist

        if dist.get_rank() == 1:
            raise RuntimeError("injected: encoder failed on rank 1")
        return super().encode(data)


def _load_version(path: str) -> int | None:
    sd = blank_state()
    reshard.load(sd, path)
    return state_version(sd)


def _faults_world(rank: int, world_size: int, root: str) -> dict[str, Any]:
    """Run every scenario; return per scenario the error this rank saw and any problems."""
    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "512"
    seen: dict[str, Any] = {}
    problems: list[str] = []
    for name, op, victim, expected in SAVE_FAULTS:
        path = os.path.join(root, name.replace(" ", "_"))
        reshard.save(make_state(1), path)
        state = make_state(2)
        codec = None
        if op == "codec":
            codec = _RankCodec()
        elif op == "value" and rank == victim:
            state["step"] = object()  # type: ignore[assignment]
        elif op not in ("codec", "value"):
            _arm("reshard.save", op, rank == victim)
        try:
            reshard.save(state, path, codec=codec)
            seen[name] = None
        except reshard.CheckpointError as e:
            seen[name] = (type(e).__name__, str(e))
        except BaseException as e:  # noqa: BLE001 - a non-CheckpointError is the failure
            problems.append(f"{name}: rank {rank} raised {type(e).__name__}: {e}")
        finally:
            _disarm()
        if (seen.get(name) is None) != (expected == 2):
            problems.append(f"{name}: rank {rank}: expected {'success' if expected == 2 else 'an error'}, "
                            f"got {seen.get(name)}")
        got = _load_version(path)
        if got != expected:
            problems.append(f"{name}: after the failed save the path holds version {got}, not {expected}")
        reshard.save(make_state(3), path)
        if _load_version(path) != 3:
            problems.append(f"{name}: the next save did not load back")
        if rank == 0 and leftovers(path):
            problems.append(f"{name}: leftovers after the next save: {leftovers(path)}")
    path = os.path.join(root, "load")
    reshard.save(make_state(1), path)
    for name, op, victim in LOAD_FAULTS:
        _arm("reshard.load", op, rank == victim)
        try:
            reshard.load(blank_state(), path)
            problems.append(f"{name}: load succeeded on rank {rank}")
        except reshard.CheckpointError as e:
            seen[name] = (type(e).__name__, str(e))
        except BaseException as e:  # noqa: BLE001
            problems.append(f"{name}: rank {rank} raised {type(e).__name__}: {e}")
        finally:
            _disarm()
        if _load_version(path) != 1:
            problems.append(f"{name}: checkpoint changed by a failed load")
    return {"seen": seen, "problems": problems}


@pytest.mark.dist
def test_faults_on_chosen_ranks(tmp_path: Any) -> None:
    results = run_world(_faults_world, 2, str(tmp_path), timeout_s=240)
    problems = [p for r in results for p in r["problems"]]
    assert not problems, "\n".join(problems)
    for name, *_ in SAVE_FAULTS + LOAD_FAULTS:
        r0, r1 = results[0]["seen"][name], results[1]["seen"][name]
        assert r0 == r1, f"{name}: ranks disagree: {r0} vs {r1}"  # the same error on every rank
        if r0 is not None:
            assert "injected" in r0[1] or "cannot be stored" in r0[1], (name, r0)
