"""Blocked time of ``reshard.async_save`` against a full synchronous ``reshard.save``.

Same ranks, same state, same disk; repetitions interleaved sync / async. For each rank:
the time ``save`` takes, the time ``async_save`` blocks the caller (planning + staging
copy), the time until ``handle.result()`` returns, the staged bytes (the host memory the
staging buffers hold) and the peak RSS growth. Every checkpoint is loaded back and checked.

    PYTHONPATH=$PWD/src:$PWD python -m bench.async_save --size-gib 0.5 --ranks 2 --reps 3
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from reshard.dist.local_world import run_world


def _state(size_gib: float, rank: int, world: int, mesh: Any) -> dict[str, Any]:
    from torch.distributed.tensor import Shard, distribute_tensor

    cols = 4096
    rows_total = max(world, int(size_gib * 2**30 / 4 / cols / 8))
    gen = torch.Generator().manual_seed(1234)
    state = {}
    for i in range(8):
        full = torch.randn(rows_total, cols, generator=gen)
        state[f"layer{i}.weight"] = distribute_tensor(full, mesh, [Shard(0)])
    return state


def _rank(rank: int, world: int, path: str, size_gib: float, reps: int) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import reshard

    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    state = _state(size_gib, rank, world, mesh)
    expected = {k: v.to_local().clone() for k, v in state.items()}
    out: dict[str, list[float]] = {"sync_s": [], "blocked_s": [], "async_total_s": []}
    staged = 0
    staging_rss: list[int] = []
    for rep in range(reps):
        for mode in ("sync", "async"):
            target = os.path.join(path, f"{mode}-{rep}")
            dist.barrier()
            t0 = time.perf_counter()
            if mode == "sync":
                reshard.save(state, target)
                out["sync_s"].append(time.perf_counter() - t0)
            else:
                rss_before = _rss()
                handle = reshard.async_save(state, target)
                out["blocked_s"].append(time.perf_counter() - t0)
                staging_rss.append(_rss() - rss_before)
                for v in state.values():  # training goes on: the saved copy must not change
                    v.to_local().add_(1.0)
                handle.result()
                out["async_total_s"].append(time.perf_counter() - t0)
                staged = handle.staged_nbytes
                for k, v in state.items():
                    v.to_local().copy_(expected[k])
            dist.barrier()
            check = {k: torch.zeros_like(v) for k, v in state.items()}
            reshard.load(check, target)
            if any(not torch.equal(check[k].to_local(), expected[k]) for k in state):
                raise AssertionError(f"rank {rank}: {mode} save {rep} did not verify")
            dist.barrier()
            if rank == 0:
                shutil.rmtree(target)
            gc.collect()
    local_nbytes = sum(v.to_local().numel() * 4 for v in state.values())
    return {**out, "staged_nbytes": staged, "local_nbytes": local_nbytes,
            "staging_rss": staging_rss}


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=0.5)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="reshard-async-bench-", dir=args.workdir)
    try:
        results = run_world(_rank, args.ranks, root, args.size_gib, args.reps, timeout_s=1800)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(key: str) -> float:
        # Per repetition, the slowest rank sets the time; then the median over repetitions.
        return statistics.median(max(r[key][i] for r in results) for i in range(args.reps))

    sync_s, blocked_s, total_s = med("sync_s"), med("blocked_s"), med("async_total_s")
    print(f"## async_save vs save: {args.size_gib} GiB on {args.ranks} ranks, "
          f"median of {args.reps} (slowest rank per repetition), every checkpoint verified\n")
    print("| measure | seconds | vs synchronous save |")
    print("|---|---:|---:|")
    print(f"| synchronous `save` | {sync_s:.3f} | 1.00 |")
    print(f"| `async_save` blocked the caller | {blocked_s:.3f} | {blocked_s / sync_s:.2f} |")
    print(f"| `async_save` until `result()` | {total_s:.3f} | {total_s / sync_s:.2f} |")
    for rank, r in enumerate(results):
        grew = ", ".join(f"{g / 2**20:.0f}" for g in r["staging_rss"])
        print(f"\nrank {rank}: staged {r['staged_nbytes'] / 2**20:.0f} MiB (its share to write) of "
              f"{r['local_nbytes'] / 2**20:.0f} MiB local shards; resident memory grew by "
              f"{grew} MiB across each async_save call (buffers are reused from the 2nd save on)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
