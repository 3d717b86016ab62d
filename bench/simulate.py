"""Planning cost for a simulated large world: no processes, no I/O.

    PYTHONPATH=$PWD/src:$PWD python -m bench.simulate [--ranks 256,512,1024,2048]
        [--tensors 500] [--out-json FILE] [--out-md FILE]

For each world size N the state is ``--tensors`` tensors on a 2-D mesh (N/8, 8):
80% are 8192 x 8192 fp32 matrices placed [Shard(0), Shard(1)] (one box per rank), 20%
are 8192-long fp32 vectors placed [Shard(0), Replicate()] (each box held by the 8 ranks
of a tensor-parallel group, so the save plan must deduplicate them). Boxes come from
reshard.core.layout.shard_box. Phases timed, each with its peak memory growth:

* describe: building every rank's TensorDesc list (what each rank would send);
* plan_save: the coordinator's dedup, tiling check and writer choice;
* written: every rank's WrittenFile record (one chunk per box it was told to write, frames
  of 256 KiB with their CRC-32C), what each rank's writer returns; rank-side work, so
  like describe it is reported but not part of the coordinator's save planning;
* manifest: the coordinator's commit step turning plan + records into manifest.json
  (reshard.save.manifest_json, the function save() calls; its size is reported);
* parse: Manifest.from_json with full validation and load()'s JSON parser (fast_json),
  what load() does before it plans;
* plan_reads: one rank's read plan for a resharded target layout, mesh (8, N/8) with
  [Shard(1), Shard(0)] for matrices (every target box cuts across saved boxes).

Times are CPU seconds of this one process (time.process_time), which other load on the
machine disturbs far less than wall time; wall times are in the JSON. Not simulated: the
object collectives that carry descriptions and records to the coordinator and the parsed
manifest to every rank (pickling), and all I/O.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from functools import partial
from typing import Any

from reshard import __version__, fast_json
from reshard.core.layout import Box, shard_box
from reshard.core.planner import SavePlan, TensorDesc, plan_reads, plan_save
from reshard.format.manifest import IDENTITY, Chunk, Frame, Manifest, TensorEntry
from reshard.save import manifest_json
from reshard.transfer.write import WrittenColumns, WrittenFile

from .probes import peak_rss_bytes, python_speed_s, reset_peak_rss, rss_bytes

TP = 8
FRAME = 256 * 1024
ITEMSIZE = 4


def _coord(rank: int, mesh: tuple[int, int]) -> tuple[int, int]:
    return rank // mesh[1], rank % mesh[1]


def tensors(n: int) -> list[tuple[str, tuple[int, ...]]]:
    n_vec = n // 5
    return ([(f"layers.{i}.weight", (8192, 8192)) for i in range(n - n_vec)]
            + [(f"layers.{i}.norm", (8192,)) for i in range(n_vec)])


def describe_all(world: int, specs: list[tuple[str, tuple[int, ...]]]) -> list[list[TensorDesc]]:
    mesh = (world // TP, TP)
    per_rank: list[list[TensorDesc]] = []
    for rank in range(world):
        coord = _coord(rank, mesh)
        descs = []
        for name, shape in specs:
            placements = (("shard", 0), ("shard", 1)) if len(shape) == 2 else (
                ("shard", 0), ("replicate", -1))
            box = shard_box(shape, mesh, placements, coord)
            descs.append(TensorDesc(key=(name,), dtype="float32", shape=shape,
                                    container="torch", boxes=(box,)))
        per_rank.append(descs)
    return per_rank


def _frames(raw: int) -> tuple[Frame, ...]:
    return tuple(Frame(nbytes=min(FRAME, raw - s), crc32c=(s * 2654435761) & 0xFFFFFFFF)
                 for s in range(0, raw, FRAME))


def written_all(world: int, per_rank: list[list[TensorDesc]],
                plan: SavePlan) -> list[WrittenFile]:
    """Each rank's record of what it wrote to its data file (what its writer returns)."""
    out = []
    for rank, tasks in enumerate(plan.tasks):
        cols = WrittenColumns()
        for t in tasks:
            raw = per_rank[rank][t.item_index].boxes[t.box_index].numel * ITEMSIZE
            cols.add(t.item_index, t.box_index, raw, [(f.nbytes, f.crc32c) for f in _frames(raw)])
        out.append(cols.done(f"data/sim.{rank}.bin", FRAME))
    return out


def build_manifest(world: int, per_rank: list[list[TensorDesc]], plan: Any) -> Manifest:
    """The same manifest as a Manifest object (for bench.profiling.ab_planning)."""
    chunks: dict[tuple[Any, ...], list[Chunk]] = {}
    for rank, tasks in enumerate(plan.tasks):
        offset = 0
        for t in tasks:
            desc = per_rank[rank][t.item_index]
            box = desc.boxes[t.box_index]
            raw = box.numel * ITEMSIZE
            frames = tuple(Frame(nbytes=min(FRAME, raw - s), crc32c=(s * 2654435761) & 0xFFFFFFFF)
                           for s in range(0, raw, FRAME))
            chunks.setdefault(desc.key, []).append(Chunk(
                box=box, file=f"data/sim.{rank}.bin", offset=offset, nbytes=raw, raw_nbytes=raw,
                codec=IDENTITY, frame_raw_nbytes=FRAME, frames=frames))
            offset += raw
    entries = tuple(
        TensorEntry(key=d.key, dtype=d.dtype, shape=d.shape, container="torch",
                    chunks=tuple(sorted(chunks[d.key], key=lambda c: c.box.offsets)))
        for d in plan.entries)
    return Manifest(save_id="sim", world_size=world, created_unix_s=0.0,
                    library_version=__version__, entries=entries)


def target_boxes(world: int, rank: int, shape: tuple[int, ...]) -> Box:
    mesh = (TP, world // TP)
    coord = _coord(rank, mesh)
    placements = (("shard", 1), ("shard", 0)) if len(shape) == 2 else (
        ("replicate", -1), ("shard", 0))
    return shard_box(shape, mesh, placements, coord)


_WALL: list[float] = []


def _phase(fn: Any) -> tuple[Any, float, int]:
    gc.collect()
    reset_peak_rss()
    before = rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds: this is one thread of pure Python, and CPU time is far less disturbed
    # than wall time by other work on the machine. Wall time goes to the JSON too.
    _WALL.append(dt)
    return out, cpu, max(0, peak_rss_bytes() - before)


def simulate(world: int, n_tensors: int) -> dict[str, Any]:
    specs = tensors(n_tensors)
    res: dict[str, Any] = {"ranks": world, "tensors": n_tensors}
    # partial, not closures: the big objects are deleted below to measure the parse alone.
    per_rank, res["describe_s"], res["describe_mem"] = _phase(partial(describe_all, world, specs))
    plan, res["plan_save_s"], res["plan_save_mem"] = _phase(partial(plan_save, per_rank))
    res["write_tasks"] = sum(len(t) for t in plan.tasks)
    written, res["written_s"], _ = _phase(partial(written_all, world, per_rank, plan))
    manifest = partial(manifest_json, plan, per_rank, written, save_id="sim", world_size=world,
                       codec_spec=IDENTITY, created_unix_s=0.0)
    (blob, _files), res["manifest_s"], res["manifest_mem"] = _phase(manifest)
    res["manifest_bytes"] = len(blob)
    del per_rank, plan, written, manifest
    parse = partial(Manifest.from_json, blob, loads=fast_json.loads)
    parsed, res["parse_s"], res["parse_mem"] = _phase(parse)
    res["chunks"] = sum(len(e.chunks) for e in parsed.entries)  # type: ignore[union-attr]
    del blob, parse
    rank = world // 2 + 3

    def reads() -> int:
        pieces = 0
        for e in parsed.entries:
            box = target_boxes(world, rank, e.shape)
            pieces += len(plan_reads(e.chunks, box, ITEMSIZE, max_piece_nbytes=16 << 20))
        return pieces

    res["read_pieces"], res["plan_reads_s"], res["plan_reads_mem"] = _phase(reads)
    res["wall_s"] = dict(zip(("describe", "plan_save", "written", "manifest", "parse", "plan_reads"),
                             _WALL))
    _WALL.clear()
    res["save_planning_s"] = res["plan_save_s"] + res["manifest_s"]
    res["load_planning_s"] = res["parse_s"] + res["plan_reads_s"]
    return res


def markdown(results: list[dict[str, Any]]) -> str:
    base = results[0]
    lines = [
        "| ranks | chunks | manifest MiB | describe cpu s | plan_save s | manifest build+JSON s | "
        "parse s | plan_reads s (1 rank) | save planning s (x vs first) | "
        "load planning s (x vs first) | peak mem growth MiB (plan_save / manifest / parse) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r["ranks"] / base["ranks"]
        lines.append(
            f"| {r['ranks']} | {r['chunks']} | {r['manifest_bytes'] / 2**20:.1f} | "
            f"{r['describe_s']:.2f} | {r['plan_save_s']:.2f} | {r['manifest_s']:.2f} | "
            f"{r['parse_s']:.2f} | {r['plan_reads_s']:.3f} | "
            f"{r['save_planning_s']:.2f} ({r['save_planning_s'] / base['save_planning_s']:.1f}x for {f:.0f}x ranks) | "
            f"{r['load_planning_s']:.2f} ({r['load_planning_s'] / base['load_planning_s']:.1f}x) | "
            f"{r['plan_save_mem'] / 2**20:.0f} / {r['manifest_mem'] / 2**20:.0f} / "
            f"{r['parse_mem'] / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="256,512,1024,2048")
    p.add_argument("--tensors", type=int, default=500)
    p.add_argument("--out-json")
    p.add_argument("--out-md")
    a = p.parse_args(argv)
    results = []
    for world in (int(x) for x in a.ranks.split(",")):
        if world % TP:
            p.error(f"--ranks: {world} is not a multiple of {TP}")
        r = simulate(world, a.tensors)
        print(f"[simulate] {world} ranks: save planning {r['save_planning_s']:.2f} s, "
              f"load planning {r['load_planning_s']:.2f} s, manifest "
              f"{r['manifest_bytes'] / 2**20:.1f} MiB", flush=True)
        results.append(r)
    speed = python_speed_s()
    md = markdown(results) + (
        f"\nCPU speed check: a 5M-iteration Python loop took {speed:.2f} CPU s on this machine "
        "during the run (~0.3-0.45 s on an idle modern core).\n")
    print(md)
    if a.out_json:
        with open(a.out_json, "w") as f:
            json.dump({"results": results, "python_loop_5M_cpu_s": speed}, f, indent=1)
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
