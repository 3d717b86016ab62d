"""Spawn a local world of CPU processes with a hard timeout (demo, tests, bench).

``run_world(fn, world_size, *args)`` runs ``fn(rank, world_size, *args)`` in every rank
(spawn context, file rendezvous). The first rank to fail, or the timeout, kills the
others, and the failing rank's traceback is raised in the parent naming its rank.
``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT_S = 180.0


class WorldError(AssertionError):
    """A rank failed or the world timed out."""


def _child(
    fn: Callable[..., Any], rank: int, world_size: int, init_file: str, results: Any,
    args: tuple[Any, ...], backend: str,
) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(
            backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=120),
        )
        value = fn(rank, world_size, *args)
        results.put((rank, "ok", value))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def run_world(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = DEFAULT_TIMEOUT_S,
    backend: str = "gloo",
) -> list[Any]:
    """Run ``fn`` on ``world_size`` ranks; return each rank's return value by rank.

    ``backend="nccl"`` puts rank r on GPU ``r % device_count`` (GPU checks only)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [
            ctx.Process(target=_child, args=(fn, r, world_size, init_file, results, args, backend),
                        daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        values: dict[int, Any] = {}
        errors: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(values) + len(errors) < world_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorldError(
                        f"world of {world_size} timed out after {timeout_s:.0f} s; "
                        f"finished ranks: {sorted(values)}; failed: {sorted(errors)}\n"
                        + "\n".join(errors.values())
                    )
                try:
                    rank, status, payload = results.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    dead = [r for r, p in enumerate(procs)
                            if p.exitcode is not None and r not in values and r not in errors]
                    if dead:
                        time.sleep(0.5)  # let a final report arrive
                        while not results.empty():
                            rank, status, payload = results.get()
                            (values if status == "ok" else errors)[rank] = payload
                        dead = [r for r in dead if r not in values and r not in errors]
                        if dead:
                            raise WorldError(
                                f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}"
                            ) from None
                    continue
                if status == "ok":
                    values[rank] = payload
                else:
                    errors[rank] = payload
                    # Give the other ranks a moment to report the agreed error, then stop.
                    grace = time.monotonic() + 5
                    while len(values) + len(errors) < world_size and time.monotonic() < grace:
                        try:
                            r2, s2, p2 = results.get(timeout=0.2)
                            (values if s2 == "ok" else errors)[r2] = p2
                        except queue.Empty:
                            pass
                    first = min(errors)
                    raise WorldError(f"rank {first} failed:\n{errors[first]}")
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join(timeout=10)
    return [values[r] for r in range(world_size)]
