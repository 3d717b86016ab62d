"""Save from and load into GPU memory, one process, reshard beside DCP (GPU machines only).

    PYTHONPATH=$PWD/src:$PWD python -m bench.cuda_io --size-gib 1 --reps 3 --workdir /tmp

The model state of bench/state.py is built on ``cuda:0`` as plain tensors; each repetition
saves it with reshard and with DCP (``FileSystemWriter`` defaults), then loads each
checkpoint into zeroed GPU tensors (page cache warm) and checks every element.
Repetitions are interleaved; the table gives medians and reshard / DCP ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

import reshard
from bench.state import expected, model_specs, total_bytes
from reshard.core.layout import Box


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    import torch.distributed.checkpoint as dcp

    specs = model_specs(args.size_gib)
    nbytes = total_bytes(specs)
    state = {s.name: expected(s, Box((0,) * len(s.shape), s.shape)).cuda() for s in specs}
    root = tempfile.mkdtemp(prefix="reshard-cuda-", dir=args.workdir)
    times: dict[str, list[float]] = {k: [] for k in
                                     ("reshard save", "dcp save", "reshard load", "dcp load")}
    try:
        for rep in range(args.reps):
            paths = {"reshard": os.path.join(root, f"r{rep}"), "dcp": os.path.join(root, f"d{rep}")}
            times["reshard save"].append(_timed(lambda: reshard.save(state, paths["reshard"])))
            times["dcp save"].append(_timed(lambda: dcp.save(
                state, storage_writer=dcp.FileSystemWriter(paths["dcp"]))))
            for name in ("reshard", "dcp"):
                dest = {k: torch.zeros_like(v) for k, v in state.items()}
                if name == "reshard":
                    t = _timed(lambda: reshard.load(dest, paths["reshard"]))
                else:
                    t = _timed(lambda: dcp.load(
                        dest, storage_reader=dcp.FileSystemReader(paths["dcp"])))
                bad = [k for k in state if not torch.equal(dest[k], state[k])]
                if bad:
                    raise SystemExit(f"{name} load differs in {bad[:5]}")
                times[f"{name} load"].append(t)
            for p in paths.values():
                shutil.rmtree(p)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device: {torch.cuda.get_device_name(0)}; state {nbytes / 2**30:.2f} GiB of "
          f"{len(specs)} tensors on cuda:0; {args.reps} interleaved reps, medians; "
          "every load checked element by element\n")
    print("| op | reshard s | DCP s | reshard GB/s | DCP GB/s | reshard / DCP speed |")
    print("|---|---|---|---|---|---|")
    for op in ("save", "load"):
        r, d = med[f"reshard {op}"], med[f"dcp {op}"]
        print(f"| {op} (warm) | {r:.3f} | {d:.3f} | {nbytes / r / 1e9:.2f} | "
              f"{nbytes / d / 1e9:.2f} | {d / r:.2f}x |")


if __name__ == "__main__":
    main()
