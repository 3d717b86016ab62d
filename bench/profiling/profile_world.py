"""cProfile rank 0 of a gloo world doing reshard save + load of a bench state.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.profile_world --data tiny --world 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import time


def _rank(rank: int, world: int, data: str, size_gib: float, n: int, save_layout: str,
          load_layout: str, path: str, codec: str, top: int) -> str:
    import torch.distributed as dist

    import reshard
    from bench import state
    from bench.worlds import WorldConfig, specs_for

    cfg = WorldConfig(workdir="", size_gib=size_gib, zstd_gib=size_gib, tiny_n=n, drop_caches=False)
    specs = specs_for(cfg, data)
    sd = state.build(specs, state.layout(save_layout, world), rank)
    tg = state.targets(specs, state.layout(load_layout, world), rank)
    out = io.StringIO()
    for what, op in (("save", lambda: reshard.save(sd, path, codec=None if codec == "identity" else codec)),
                     ("load", lambda: reshard.load(tg, path))):
        op()  # warm-up (imports, page cache)
        dist.barrier()
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        op()
        pr.disable()
        dist.barrier()
        out.write(f"== {what}: {time.perf_counter() - t0:.3f} s (profiled)\n")
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(top)
        pstats.Stats(pr, stream=out).sort_stats("cumtime").print_stats(top)
    bad = state.verify(specs, state.layout(load_layout, world), rank, tg)
    assert not bad, bad
    return out.getvalue()


def main() -> None:
    from tests.helpers.world import run_world

    p = argparse.ArgumentParser()
    p.add_argument("--data", default="tiny")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--size-gib", type=float, default=0.25)
    p.add_argument("--tiny-n", type=int, default=5000)
    p.add_argument("--save-layout", default="S0")
    p.add_argument("--load-layout", default="S0")
    p.add_argument("--codec", default="identity")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    path = f"/var/tmp/reshard-profile-{os.getpid()}"
    try:
        out = run_world(_rank, a.world, a.data, a.size_gib, a.tiny_n, a.save_layout,
                        a.load_layout, path, a.codec, a.top, timeout_s=900)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    print(out[0])


if __name__ == "__main__":
    main()
