"""Spawned gloo worlds for tests: see reshard.dist.local_world.

Worlds of several sizes may run at the same time (each spawn imports torch once) and
coordinate through flag files under a shared root, since they share no process group:
``mark_stage`` after a stage, ``wait_for_stage`` before depending on another world's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reshard.dist.local_world import DEFAULT_TIMEOUT_S, WorldError, run_world

__all__ = ["DEFAULT_TIMEOUT_S", "WorldError", "failing_marks", "mark_stage", "run_world",
           "run_worlds_at_once", "wait_for_stage"]


def mark_stage(root: str, world: int, stage: str) -> None:
    """Record that the world of ``world`` ranks has reached ``stage`` ("failed" aborts
    every waiter)."""
    Path(root, f"{stage}-{world}").touch()


@contextmanager
def failing_marks(root: str, world: int) -> Iterator[None]:
    """Mark the world of ``world`` ranks "failed" when the block raises, so that the
    worlds waiting for its stages stop instead of timing out."""
    try:
        yield
    except BaseException:
        mark_stage(root, world, "failed")
        raise


def wait_for_stage(root: str, world: int, stage: str, timeout_s: float = 150.0) -> None:
    """Wait until the world of ``world`` ranks has marked ``stage``."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(os.path.join(root, f"{stage}-{world}")):
        if os.path.exists(os.path.join(root, f"failed-{world}")):
            raise RuntimeError(f"the world of {world} failed before it reached {stage!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the world of {world} did not reach {stage!r} in {timeout_s} s")
        time.sleep(0.1)


def run_worlds_at_once(
    fn: Callable[..., Any], worlds: tuple[int, ...], root: str, *, timeout_s: float
) -> dict[int, Any]:
    """Run ``fn(rank, world, root)`` in worlds of each size at the same time; each world's
    per-rank results, or the exception it raised (after marking it failed)."""
    results: dict[int, Any] = {}

    def run(world: int) -> None:
        try:
            results[world] = run_world(fn, world, root, timeout_s=timeout_s)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            mark_stage(root, world, "failed")
            results[world] = e

    threads = [threading.Thread(target=run, args=(w,)) for w in worlds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
