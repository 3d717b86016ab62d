"""One rank's Shard(1) fill of a row-saved checkpoint: column checksums against frames.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.column_fill --dir /var/tmp/cf --size-gib 1

In one process (no process group): saves rank 0's Shard(0) shards of the bench model
state of a 4-rank save (``--size-gib`` of state, a quarter of it saved) twice, with
column checksums (``RESHARD_COLUMN_CHECKSUMS`` = each of ``--parts``, default 2) and
without (``0``); then, taking turns, fills the first of ``--of`` (default 2) parts of the
columns of every tensor of two or more dims (of the rows of the others) from each, warm,
and prints the median CPU seconds of the fill, its bytes read and the CPU seconds of each save. Every fill is
checked against the saved values.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import time
from typing import Any


def _targets(manifest: Any, of: int) -> list[Any]:
    import torch

    from reshard.adapters.tensors import torch_dtype
    from reshard.core.layout import Box
    from reshard.format.manifest import TensorEntry
    from reshard.transfer.read import Target

    out = []
    for e in manifest.entries:
        if not isinstance(e, TensorEntry):
            continue
        if len(e.shape) >= 2:
            box = Box((0,) * len(e.shape), (e.shape[0], -(-e.shape[1] // of), *e.shape[2:]))
        else:
            box = Box((0,), (-(-e.shape[0] // of),))
        out.append(Target(entry=e, box=box, tensor=torch.zeros(box.sizes, dtype=torch_dtype(e.dtype))))
    return out


def _warm(path: str) -> None:
    for name in os.listdir(os.path.join(path, "data")):
        with open(os.path.join(path, "data", name), "rb") as f:
            while f.read(16 << 20):
                pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="fill threads (default: as loads)")
    p.add_argument("--of", type=int, default=2,
                   help="the reader holds the first of this many column parts (Shard(1) over as many ranks)")
    p.add_argument("--parts", default="2",
                   help="RESHARD_COLUMN_CHECKSUMS values to compare with frames only, comma separated")
    args = p.parse_args()

    import torch

    import reshard
    from bench import state
    from bench.profiling.reshard_loads import _model_specs
    from reshard import config
    from reshard.manifest_io import load_manifest
    from reshard.storage import open_store
    from reshard.transfer.read import fill

    torch.set_num_threads(1)
    threads = args.threads or config.io_threads()
    specs = _model_specs(args.size_gib)
    saved = {s.name: state.expected(s, state.local_box(s, state.layout("S0", 4), 0)) for s in specs}
    modes = {f"column checksums in {k}": k for k in args.parts.split(",")} | {"frames only": "0"}
    paths = {mode: os.path.join(args.dir, f"parts{parts}") for mode, parts in modes.items()}
    for mode, parts in modes.items():
        shutil.rmtree(paths[mode], ignore_errors=True)
        os.environ["RESHARD_COLUMN_CHECKSUMS"] = parts
        t0 = time.process_time()
        reshard.save(saved, paths[mode])
        print(f"save ({mode}): {time.process_time() - t0:.3f} CPU s")
    os.environ.pop("RESHARD_COLUMN_CHECKSUMS")
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    read: dict[str, int] = {}
    gc.disable()  # as load does
    for _ in range(args.reps):
        for mode in modes:
            store = open_store(paths[mode])
            targets = _targets(load_manifest(store), args.of)
            _warm(paths[mode])
            before = store.bytes_read
            t0 = time.process_time()
            fill(store, targets, threads=threads, max_piece_nbytes=config.max_piece_nbytes())
            cpu[mode].append(time.process_time() - t0)
            read[mode] = store.bytes_read - before
            store.close()
            for t in targets:
                want = saved[t.entry.key[0]][t.box.slices()]
                assert torch.equal(t.tensor, want), (mode, t.name)
    needed = sum(t.tensor.nbytes for t in targets)
    for mode in modes:
        v = cpu[mode]
        print(f"{mode}: fill median {statistics.median(v):.3f} CPU s (min {min(v):.3f}, max {max(v):.3f}), "
              f"read {read[mode] / needed:.2f}x the {needed >> 20} MiB needed, {threads} threads")
    gc.enable()
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
