"""Same-process A/B of the pure planning code of two reshard trees (CPU seconds).

    cp -r <old tree>/src/reshard /tmp/base_pkg/reshard_base     # the old tree, renamed
    PYTHONPATH=$PWD/src:$PWD:/tmp/base_pkg python -m bench.profiling.ab_planning --ranks 256

Builds the simulated world of bench.simulate, then alternates old and new ``--rounds``
times and prints the median CPU seconds of each phase: plan_save, save.manifest_json
(the save's commit step, from the ranks' write records), Manifest.to_json,
Manifest.from_json and one rank's plan_reads of every entry (the resharded target of
bench.simulate). The same phases as bench.simulate's save and load planning, each tree
with its own classes. Alternating in one process cancels most machine noise.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import time
from functools import partial
from typing import Any

from bench import simulate as S


def _cpu(fn: Any) -> tuple[Any, float]:
    gc.collect()
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def _written(write: Any, per_rank: list[Any], plan: Any) -> list[Any]:
    """bench.simulate's write records, built with this tree's WrittenColumns."""
    out = []
    for rank, tasks in enumerate(plan.tasks):
        cols = write.WrittenColumns()
        for t in tasks:
            raw = per_rank[rank][t.item_index].boxes[t.box_index].numel * S.ITEMSIZE
            cols.add(t.item_index, t.box_index, raw,
                     [(f.nbytes, f.crc32c) for f in S._frames(raw)])
        out.append(cols.done(f"data/sim.{rank}.bin", S.FRAME))
    return out


def _reads(planner: Any, layout: Any, parsed: Any, world: int, rank: int) -> int:
    """One rank's read plans of every entry, for bench.simulate's resharded target."""
    pieces = 0
    for e in parsed.entries:
        box = S.target_boxes(world, rank, e.shape)
        pieces += len(planner.plan_reads(e.chunks, layout.Box(box.offsets, box.sizes), S.ITEMSIZE,
                                         max_piece_nbytes=16 << 20))
    return pieces


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
                       importlib.import_module(f"{pkg}.format.manifest"),
                       importlib.import_module(f"{pkg}.save"),
                       importlib.import_module(f"{pkg}.transfer.write"))
    specs = S.tensors(a.tensors)
    times: dict[str, dict[str, list[float]]] = {
        "plan_save": {}, "manifest_json": {}, "to_json": {}, "from_json": {}, "plan_reads": {}}
    rank = a.ranks // 2 + 3
    for r in range(a.rounds):
        # Alternate which tree goes first, so neither always runs on a warmer heap.
        for label, (planner, layout, manifest, save, write) in (
                list(libs.items()) if r % 2 == 0 else list(libs.items())[::-1]):
            per_rank = []
            for descs in S.describe_all(a.ranks, specs):
                per_rank.append([planner.TensorDesc(
                    key=d.key, dtype=d.dtype, shape=d.shape, container=d.container,
                    boxes=tuple(layout.Box(b.offsets, b.sizes) for b in d.boxes)) for d in descs])
            plan, t = _cpu(partial(planner.plan_save, per_rank))
            times["plan_save"].setdefault(label, []).append(t)
            written = _written(write, per_rank, plan)
            _, t = _cpu(partial(save.manifest_json, plan, per_rank, written, save_id="sim",
                                world_size=a.ranks, codec_spec=manifest.IDENTITY,
                                created_unix_s=0.0))
            times["manifest_json"].setdefault(label, []).append(t)
            del written
            m = S.build_manifest(a.ranks, per_rank, plan)
            m = manifest.Manifest.from_json(m.to_json())  # as this tree's own classes
            blob, t = _cpu(m.to_json)
            times["to_json"].setdefault(label, []).append(t)
            parsed, t = _cpu(partial(manifest.Manifest.from_json, blob))
            times["from_json"].setdefault(label, []).append(t)
            _, t = _cpu(partial(_reads, planner, layout, parsed, a.ranks, rank))
            times["plan_reads"].setdefault(label, []).append(t)
            del per_rank, plan, m, blob, parsed
    print(f"{a.ranks} ranks x {a.tensors} tensors, median CPU s of {a.rounds} alternating rounds")
    print("| phase | old | new | speedup |\n|---|---|---|---|")
    for phase, t in times.items():
        o, n = statistics.median(t["old"]), statistics.median(t["new"])
        print(f"| {phase} | {o:.2f} | {n:.2f} | {o / n:.2f}x |")


if __name__ == "__main__":
    main()
