"""Save from and load into GPU memory, one process, reshard beside DCP (GPU machines only).

    PYTHONPATH=$PWD/src:$PWD python -m bench.cuda_io --size-gib 1 --reps 3 --workdir /tmp

The model state of bench/state.py is built on ``cuda:0`` (or ``--device``) as plain
tensors; each repetition saves it with reshard and with DCP (``FileSystemWriter``
defaults), then loads each checkpoint into zeroed tensors on the same device (page
cache warm) and checks every element. Repetitions are interleaved; the table gives
medians and reshard / DCP ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import torch

import reshard
from bench.state import expected, model_specs, total_bytes
from reshard.core.layout import Box


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--device", default="cuda:0",
                    help="where the state lives; 'cpu' gives the same run from host memory")
    args = ap.parse_args()
    import torch.distributed.checkpoint as dcp

    specs = model_specs(args.size_gib)
    nbytes = total_bytes(specs)
    state = {s.name: expected(s, Box((0,) * len(s.shape), s.shape)).to(args.device) for s in specs}
    root = tempfile.mkdtemp(prefix="reshard-cuda-", dir=args.workdir)
    times: dict[str, list[float]] = {k: [] for k in
                                     ("reshard save", "dcp save", "reshard load", "dcp load")}
    try:
        for rep in range(args.reps):
            paths = {"reshard": os.path.join(root, f"r{rep}"), "dcp": os.path.join(root, f"d{rep}")}
            times["reshard save"].append(_timed(partial(reshard.save, state, paths["reshard"])))
            writer = dcp.FileSystemWriter(paths["dcp"])
            times["dcp save"].append(_timed(partial(dcp.save, state, storage_writer=writer)))
            for name in ("reshard", "dcp"):
                dest = {k: torch.zeros_like(v) for k, v in state.items()}
                if name == "reshard":
                    t = _timed(partial(reshard.load, dest, paths["reshard"]))
                else:
                    reader = dcp.FileSystemReader(paths["dcp"])
                    t = _timed(partial(dcp.load, dest, storage_reader=reader))
                bad = [k for k in state if not torch.equal(dest[k], state[k])]
                if bad:
                    raise SystemExit(f"{name} load differs in {bad[:5]}")
                times[f"{name} load"].append(t)
            for p in paths.values():
                shutil.rmtree(p)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"machine: {gpu}; state {nbytes / 2**30:.2f} GiB of "
          f"{len(specs)} tensors on {args.device}; {args.reps} interleaved reps, medians; "
          "every load checked element by element\n")
    print("| op | reshard s | DCP s | reshard GB/s | DCP GB/s | reshard / DCP speed |")
    print("|---|---|---|---|---|---|")
    for op in ("save", "load"):
        r, d = med[f"reshard {op}"], med[f"dcp {op}"]
        print(f"| {op} (warm) | {r:.3f} | {d:.3f} | {nbytes / r / 1e9:.2f} | "
              f"{nbytes / d / 1e9:.2f} | {d / r:.2f}x |")


if __name__ == "__main__":
    main()
