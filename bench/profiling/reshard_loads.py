"""Time (and optionally cProfile) resharded reshard loads of the bench checkpoints.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.reshard_loads --dir /var/tmp/rr --save
    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.reshard_loads --dir /var/tmp/rr --reps 5

Saves (with --save) the w4 Shard(0) and w4 (2,2) checkpoints, then loads them on 2 ranks
(Shard(1) and Shard(0); the Shard(0) one also as Shard(0), whole chunks read straight into
the destination) warm, printing per-rank wall and CPU seconds and bytes read.
``--only S0->S1`` (or a saved layout, ``--only 2D``) picks cases.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import time

CASES = (("S0", "S1"), ("2D", "S0"), ("S0", "S0"))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def _model_specs(size_gib: float) -> list:  # type: ignore[type-arg]
    from bench.worlds import WorldConfig, specs_for

    cfg = WorldConfig(workdir="", size_gib=size_gib, zstd_gib=size_gib, tiny_n=1, drop_caches=False)
    return specs_for(cfg, "model")


def _cases(specs: list, world: int, rank: int, d: str, only: str):  # type: ignore[no-untyped-def,type-arg]
    """Each (saved layout, load layout, Layout, zeroed targets, checkpoint path) to load."""
    from bench import state

    for src, dst in CASES:
        if only and only not in (src, f"{src}->{dst}"):
            continue
        lay = state.layout(dst, world)
        yield src, dst, lay, state.targets(specs, lay, rank), os.path.join(d, src)


def _save(rank: int, world: int, d: str, size_gib: float) -> None:
    import reshard
    from bench import state

    specs = _model_specs(size_gib)
    for lay in ("S0", "2D"):
        sd = state.build(specs, state.layout(lay, world), rank)
        reshard.save(sd, os.path.join(d, lay))


def _load(rank: int, world: int, d: str, size_gib: float, reps: int, prof: bool, only: str) -> str:
    import torch
    import torch.distributed as dist

    import reshard
    from bench import probes, state

    torch.set_num_threads(1)
    specs = _model_specs(size_gib)
    out = io.StringIO()
    for src, dst, lay, sd, path in _cases(specs, world, rank, d, only):
        for rep in range(reps):
            if rank == 0:
                probes.make_warm([path])
            dist.barrier()
            pr = cProfile.Profile() if prof and rep == reps - 1 else None
            c0, r0, t0 = _cpu(), _rchar(), time.perf_counter()
            if pr:
                pr.enable()
            stats = reshard.load(sd, path)
            if pr:
                pr.disable()
            t1, c1, r1 = time.perf_counter(), _cpu(), _rchar() + stats.bytes_mapped
            dist.barrier()
            t2 = time.perf_counter()
            out.write(f"{src}->{dst} rep {rep} rank {rank}: wall {t1 - t0:.3f} (all {t2 - t0:.3f}) "
                      f"cpu {c1 - c0:.3f} read {(r1 - r0) / 2**20:.0f} MiB\n")
            if pr:
                pstats.Stats(pr, stream=out).sort_stats(os.environ.get("PSTATS_SORT", "tottime")).print_stats(int(os.environ.get("PSTATS_N", "18")))
        bad = state.verify(specs, lay, rank, sd)
        assert not bad, bad
    return out.getvalue()


def _ab(rank: int, world: int, d: str, size_gib: float, reps: int, modes: list[str],
        cold: bool, only: str) -> str:
    """Interleave the modes (``NAME=VALUE,...`` environment settings) rep by rep."""
    import statistics

    import torch
    import torch.distributed as dist

    import reshard
    from bench import probes, state

    torch.set_num_threads(1)
    specs = _model_specs(size_gib)
    out = io.StringIO()
    for src, dst, lay, sd, path in _cases(specs, world, rank, d, only):
        got: dict[str, list[tuple[float, float, int]]] = {m: [] for m in modes}
        for _rep in range(reps):
            for mode in modes:
                env = dict(kv.split("=", 1) for kv in mode.split(",") if kv)
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                state.zero_(sd)
                if rank == 0:
                    if cold:
                        probes.make_cold([path], drop_caches=False)
                    else:
                        probes.make_warm([path])
                dist.barrier()
                c0, r0, t0 = _cpu(), _rchar(), time.perf_counter()
                stats = reshard.load(sd, path)
                c1, r1 = _cpu(), _rchar() + stats.bytes_mapped
                dist.barrier()
                wall = time.perf_counter() - t0
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                bad = state.verify(specs, lay, rank, sd)
                assert not bad, (mode, bad)
                got[mode].append((wall, c1 - c0, r1 - r0))
        for mode in modes:
            walls = [w for w, _, _ in got[mode]]
            cpus = [c for _, c, _ in got[mode]]
            out.write(f"{src}->{dst} {'cold' if cold else 'warm'} rank {rank} [{mode or 'default'}]: "
                      f"wall median {statistics.median(walls):.3f} min {min(walls):.3f} "
                      f"cpu median {statistics.median(cpus):.3f} read {got[mode][0][2] / 2**20:.0f} MiB\n")
    return out.getvalue()


def main() -> None:
    from tests.helpers.world import run_world

    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--size-gib", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--save", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--only", default="")
    p.add_argument("--ab", nargs="*", default=None,
                   help="modes to interleave, each NAME=VALUE,... ('' = defaults)")
    p.add_argument("--cold", action="store_true")
    a = p.parse_args()
    if a.save:
        run_world(_save, 4, a.dir, a.size_gib, timeout_s=600)
    if a.ab is not None:
        for o in run_world(_ab, 2, a.dir, a.size_gib, a.reps, a.ab, a.cold, a.only, timeout_s=900) or []:
            print(o)
        return
    outs = run_world(_load, 2, a.dir, a.size_gib, a.reps, a.profile, a.only, timeout_s=600)
    for o in outs or []:
        print(o)


if __name__ == "__main__":
    main()
