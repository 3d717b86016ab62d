"""``reshard demo``: save a small model state from 4 CPU ranks on a (2, 2) mesh, load it
back on 2 ranks with other placements and in 1 plain process, and check every value."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import torch

from .dist.local_world import run_world
from .errors import StorageError

SAVE_WORLD = 4
HIDDEN = 96
VOCAB = 1003  # divides by none of the world sizes: uneven shards everywhere

# name -> (shape, dtype, placements on the (2, 2) save mesh, placements on the 2-rank load mesh)
LAYOUT: dict[str, tuple[tuple[int, ...], torch.dtype, str, str]] = {
    "model.embed.weight": ((VOCAB, HIDDEN), torch.float32, "S0,S1", "S1"),
    "model.layers.0.attn.qkv.weight": ((3 * HIDDEN, HIDDEN), torch.bfloat16, "R,S0", "S1"),
    "model.layers.0.mlp.up.weight": ((4 * HIDDEN + 5, HIDDEN), torch.float32, "S0,R", "S0"),
    "model.layers.0.norm.weight": ((HIDDEN,), torch.float32, "R,R", "S0"),
    "model.head.bias": ((VOCAB,), torch.float16, "S0,S0", "R"),
    "optim.state.0.exp_avg": ((VOCAB, HIDDEN), torch.float32, "S0,S1", "S0"),
}


def expected(name: str) -> torch.Tensor:
    shape, dtype, _, _ = LAYOUT[name]
    n = 1
    for s in shape:
        n *= s
    seed = sum(ord(c) for c in name)
    return ((torch.arange(n, dtype=torch.float64) * 0.37 + seed) % 251).reshape(shape).to(dtype)


def _placements(spec: str) -> list[Any]:
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if p == "R" else Shard(int(p[1:])) for p in spec.split(",")]


def _distributed_state(mesh: Any, which: int) -> dict[str, Any]:
    from torch.distributed.tensor import distribute_tensor

    model: dict[str, Any] = {}
    for name, (_, _, save_spec, load_spec) in LAYOUT.items():
        spec = (save_spec, load_spec)[which]
        value = expected(name) if which == 0 else torch.zeros_like(expected(name))
        model[name] = distribute_tensor(value, mesh, _placements(spec))
    return {"tensors": model, "step": 1000 if which == 0 else 0, "note": "reshard demo"}


def _save_rank(rank: int, world: int, path: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    import reshard

    mesh = init_device_mesh("cpu", (2, 2))
    state = _distributed_state(mesh, 0)
    t0 = time.perf_counter()
    reshard.save(state, path)
    return {"seconds": time.perf_counter() - t0}


def _load_rank(rank: int, world: int, path: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    import reshard

    mesh = init_device_mesh("cpu", (world,))
    state = _distributed_state(mesh, 1)
    t0 = time.perf_counter()
    reshard.load(state, path)
    seconds = time.perf_counter() - t0
    bad = [name for name, dt in state["tensors"].items() if not torch.equal(dt.full_tensor(), expected(name))]
    if state["step"] != 1000 or state["note"] != "reshard demo":
        bad.append("step/note")
    return {"seconds": seconds, "bad": bad}


def run_demo(*, workdir: str | None = None, keep: bool = False) -> int:
    import reshard

    if workdir is not None:
        try:
            os.makedirs(workdir, exist_ok=True)
        except FileExistsError as e:  # checked here, not as a traceback from 4 spawned ranks
            what = "it" if e.filename in (None, workdir) else e.filename
            raise StorageError(f"cannot use --workdir {workdir}: {what} exists and is not "
                               "a directory") from None
        except OSError as e:
            raise StorageError(f"cannot use --workdir {workdir}: {e.strerror or e}") from None
    root = workdir or tempfile.mkdtemp(prefix="reshard-demo-")
    path = os.path.join(root, "checkpoint")
    try:
        print(f"reshard {reshard.__version__} demo: checkpoint at {path}\n")
        print("State: a small model and optimizer state, uneven shapes, 3 dtypes:")
        for name, (shape, dtype, save_spec, load_spec) in LAYOUT.items():
            print(f"  {name:34s} {str(list(shape)):12s} {str(dtype)[6:]:9s} "
                  f"save [{save_spec}] on (2,2) -> load [{load_spec}] on (2,)")
        t0 = time.perf_counter()
        saved = run_world(_save_rank, SAVE_WORLD, path)
        print(f"\n1. saved from {SAVE_WORLD} ranks on a (2, 2) mesh in "
              f"{max(r['seconds'] for r in saved):.2f} s (spawn included: {time.perf_counter() - t0:.1f} s)")
        with reshard.open(path) as ckpt:
            stored = sum(c.nbytes for k in ckpt.keys() for c in ckpt.info(k).chunks)
            chunks = sum(len(ckpt.info(k).chunks) for k in ckpt.keys())
            print(f"   {len(ckpt.keys())} keys, {chunks} chunks (replicas written once), "
                  f"{stored / 2**20:.2f} MiB in {len(ckpt.manifest.files())} data files")
        loaded = run_world(_load_rank, 2, path)
        bad = sorted({b for r in loaded for b in r["bad"]})
        print(f"2. loaded on 2 ranks with other placements in {max(r['seconds'] for r in loaded):.2f} s: "
              + ("every value matches" if not bad else f"MISMATCH in {bad}"))
        failures = list(bad)
        plain: dict[str, Any] = {"tensors": {n: torch.zeros_like(expected(n)) for n in LAYOUT},
                                 "step": 0, "note": ""}
        t0 = time.perf_counter()
        reshard.load(plain, path)
        seconds = time.perf_counter() - t0
        bad1 = [n for n, t in plain["tensors"].items() if not torch.equal(t, expected(n))]
        print(f"3. loaded in 1 plain process (full tensors) in {seconds:.2f} s: "
              + ("every value matches" if not bad1 else f"MISMATCH in {bad1}"))
        failures += bad1
        # A --workdir checkpoint stays whatever --keep says: the folder is the user's.
        print(f"\nInspect it yourself: reshard inspect {path}" if keep or workdir else "")
        print("demo " + ("passed" if not failures else "FAILED"))
        return 0 if not failures else 1
    finally:
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
