"""Same-process A/B of the pure planning code of two reshard trees (CPU seconds).

    cp -r <old tree>/src/reshard /tmp/base_pkg/reshard_base     # the old tree, renamed
    PYTHONPATH=$PWD/src:$PWD:/tmp/base_pkg python -m bench.profiling.ab_planning --ranks 256

Builds the simulated world of bench.simulate once, then alternates old and new
(plan_save, Manifest.to_json, Manifest.from_json) ``--rounds`` times and prints the
median CPU seconds of each. Alternating in one process cancels most machine noise.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import time
from typing import Any

from bench import simulate as S


def _cpu(fn: Any) -> tuple[Any, float]:
    gc.collect()
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", type=int, default=256)
    p.add_argument("--tensors", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--old", default="reshard_base")
    a = p.parse_args()
    libs = {}
    for label, pkg in (("old", a.old), ("new", "reshard")):
        libs[label] = (importlib.import_module(f"{pkg}.core.planner"),
                       importlib.import_module(f"{pkg}.core.layout"),
                       importlib.import_module(f"{pkg}.format.manifest"))
    specs = S.tensors(a.tensors)
    times: dict[str, dict[str, list[float]]] = {"plan_save": {}, "to_json": {}, "from_json": {}}
    for _ in range(a.rounds):
        for label, (planner, layout, manifest) in libs.items():
            per_rank = []
            for descs in S.describe_all(a.ranks, specs):
                per_rank.append([planner.TensorDesc(
                    key=d.key, dtype=d.dtype, shape=d.shape, container=d.container,
                    boxes=tuple(layout.Box(b.offsets, b.sizes) for b in d.boxes)) for d in descs])
            plan, t = _cpu(lambda: planner.plan_save(per_rank))
            times["plan_save"].setdefault(label, []).append(t)
            m = S.build_manifest(a.ranks, per_rank, plan)
            m = manifest.Manifest.from_json(m.to_json())  # as this tree's own classes
            blob, t = _cpu(m.to_json)
            times["to_json"].setdefault(label, []).append(t)
            _, t = _cpu(lambda: manifest.Manifest.from_json(blob))
            times["from_json"].setdefault(label, []).append(t)
            del per_rank, plan, m, blob
    print(f"{a.ranks} ranks x {a.tensors} tensors, median CPU s of {a.rounds} alternating rounds")
    print("| phase | old | new | speedup |\n|---|---|---|---|")
    for phase, t in times.items():
        o, n = statistics.median(t["old"]), statistics.median(t["new"])
        print(f"| {phase} | {o:.2f} | {n:.2f} | {o / n:.2f}x |")


if __name__ == "__main__":
    main()
