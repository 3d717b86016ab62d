"""CPU seconds of a 2-rank zstd save, two reshard source trees interleaved (A, B, A, B, ...).

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.zstd_save_ab --a /tmp/base/src --b src \
        --rounds 4 --reps 3 --datasets fp32,bf16,optim

Each round runs one spawned gloo world per tree (a subprocess with PYTHONPATH pointing at
that tree) that saves each dataset of ``bench.state.zstd_specs`` (Shard(0), ``codec="zstd"``
unless --level says otherwise) ``--reps`` times, removing the target before each save.
Per save it records every rank's CPU seconds (user + system, all threads, getrusage) and
the wall time; the table shows, per dataset and tree, the median over all saves of the
largest rank's CPU s and of the wall time, and the size ratio. CPU seconds are the steadier
signal on a shared machine; wall time is shown for reference only. Export tree A with e.g.
``git archive <commit> src | tar -x -C /tmp/base``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


def _rank(rank: int, world: int, datasets: list[str], gib: float, reps: int, level: int,
          root: str) -> list[dict[str, Any]]:
    import torch
    import torch.distributed as dist

    import reshard
    from bench import probes, state
    from reshard.codecs import ZstdCodec

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    out = []
    for ds in datasets:
        specs = state.zstd_specs(ds, gib)
        sd = state.build(specs, state.layout("S0", world), rank)
        raw = state.total_bytes(specs)
        path = os.path.join(root, ds)
        for rep in range(reps + 1):  # the first save warms up (imports, allocator)
            dist.barrier()
            if rank == 0:
                probes.remove(path)
                os.sync()
            probes.trim_heap()
            dist.barrier()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            reshard.save(sd, path, codec=ZstdCodec(level=level))
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter() - t0
            cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            sys_s = ru1.ru_stime - ru0.ru_stime
            dist.barrier()
            if rep:
                out.append({"dataset": ds, "cpu": cpu, "sys": sys_s, "t": t,
                            "disk": probes.disk_bytes(path) if rank == 0 else 0, "raw": raw})
        del sd
    return out


def _child(args: argparse.Namespace) -> None:
    from tests.helpers.world import run_world

    root = tempfile.mkdtemp(prefix="zstd_save_ab.", dir=args.workdir)
    try:
        ranks = run_world(_rank, 2, args.datasets.split(","), args.gib, args.reps, args.level,
                          root, timeout_s=600)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for i, rec in enumerate(ranks[0]):
        rows.append({"dataset": rec["dataset"], "cpu": max(r[i]["cpu"] for r in ranks),
                     "sys": max(r[i]["sys"] for r in ranks), "t": max(r[i]["t"] for r in ranks),
                     "ratio": rec["raw"] / rec["disk"]})
    print(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True, help="reshard source tree A (the folder holding reshard/)")
    p.add_argument("--b", required=True)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--datasets", default="fp32,bf16,optim")
    p.add_argument("--gib", type=float, default=0.5, help="size of each dataset (bench default 0.5)")
    p.add_argument("--level", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a)
        return
    here = os.getcwd()
    res: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(a.rounds):
        for label, src in (("A", a.a), ("B", a.b)):
            env = dict(os.environ, PYTHONPATH=f"{os.path.abspath(src)}:{here}")
            cmd = [sys.executable, "-m", "bench.profiling.zstd_save_ab", "--child", "--a", a.a,
                   "--b", a.b, "--reps", str(a.reps), "--datasets", a.datasets, "--gib", str(a.gib),
                   "--level", str(a.level), "--workdir", a.workdir]
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            for row in json.loads(done.stdout.strip().splitlines()[-1]):
                res.setdefault((row["dataset"], label), []).append(row)
    print("| dataset | tree | CPU s, max rank (median) | of which sys | wall s (median) | size ratio |"
          "\n|---|---|---|---|---|---|")
    for ds in a.datasets.split(","):
        for label in ("A", "B"):
            rows = res[(ds, label)]
            med = {k: statistics.median(r[k] for r in rows) for k in ("cpu", "sys", "t", "ratio")}
            print(f"| {ds} | {label} | {med['cpu']:.3f} | {med['sys']:.3f} | {med['t']:.3f} | "
                  f"{med['ratio']:.3f} |")


if __name__ == "__main__":
    main()
