"""Random checkpoints for test_random_worlds.py: each seed draws a state dict (nested
dicts and lists of tensors of random shapes, dtypes and layouts, plain values) and the
options of its save (codec, column_blocks with tiny tiles, column checksums on small
boxes, frame size, async or not); each world that loads it draws its own layouts and
read options (cooperative reads, memory maps, threads) and checks every element.

The draw of keys, shapes and dtypes depends on the seed only; the layouts on the seed
and the world, so that a world of 2 loads what a world of 3 saved with layouts of its own.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tests.helpers.column_checks import column_checksums_on_small_boxes

from .layouts import Full, Mesh, Meshes, Rows, build, check, global_tensor

DTYPES = [torch.float32, torch.bfloat16, torch.int64, torch.bool, torch.uint8, torch.float16,
          torch.complex64, torch.int16, torch.uint32, torch.float64]
MESHES = {
    1: ["1", "1x1"],
    2: ["2", "1x2", "2x1", "2x1x1"],
    3: ["3", "1x3", "3x1", "3x1x1", "1x1x3"],
    4: ["4", "2x2", "1x4", "4x1", "2x1x2", "2x2x1"],
}
Problem = tuple[int, str, str]  # (seed, where, message)
STRIDED = os.environ.get("RANDOM_WORLDS_STRIDED") == "1"
BIG = os.environ.get("RANDOM_WORLDS_BIG") == "1"
DCP = os.environ.get("RANDOM_WORLDS_DCP") == "1"


@dataclass(frozen=True)
class Numpy:
    """A numpy array holding the whole global tensor on every rank (dtypes numpy has)."""

    world: int


def spec(seed: int) -> list[tuple[tuple[Any, ...], tuple[int, ...], torch.dtype]]:
    """The tensors of seed ``seed``: (key path, shape, dtype)."""
    rng = random.Random(seed)
    out = []
    for i in range(rng.randint(2, 6)):
        ndim = rng.choice([0, 1, 1, 2, 2, 2, 3])
        shape = tuple(rng.choice([0, 1, 2, 3, 5, 7, 9, 12]) if rng.random() < 0.15
                      else rng.randint(1, 13) for _ in range(ndim))
        if BIG and ndim >= 2 and rng.random() < 0.5:  # past the small-chunk thresholds
            shape = (rng.randint(100, 700), rng.randint(100, 700)) + shape[2:]
        where = rng.choice([("model", f"w{i}"), ("optim", "state", i, "exp_avg"),
                            ("layers", i, "attn", "qkv"), (f"top{i}",)])
        out.append((where, shape, rng.choice(DTYPES)))
    return out


def values(seed: int) -> dict[str, Any]:
    rng = random.Random(seed * 7 + 1)
    return {"step": rng.randint(-2**70, 2**70), "lr": rng.random(), "name": f"run {seed} ü",
            "flags": [True, None, b"\x00\xff", {"x": float("inf")}], "empty": {}}


def layout(rng: random.Random, world: int, shape: tuple[int, ...]) -> Any:
    # torch's LocalShardsWrapper cannot be viewed (DTensor.from_local) beyond 2 dims.
    kinds = (["mesh", "mesh", "mesh", "full", "numpy"]
             + (["proto", "object", "sharded"] if shape else [])
             + (["lsw"] if 1 <= len(shape) <= 2 else []))
    kind = rng.choice(kinds)
    if kind == "full":
        return Full(world)
    if kind == "numpy":
        return Numpy(world)
    if kind == "mesh":
        mesh = rng.choice(MESHES[world])
        n = len(mesh.split("x"))
        choices = ["R"] + [f"S{d}" for d in range(len(shape))]
        if STRIDED:
            choices += [f"SS{d}/{f}" for d in range(len(shape)) for f in (2, 3)]
        return Mesh(mesh, ",".join(rng.choice(choices) for _ in range(n)),
                    strided=rng.random() < 0.2)
    # Rows of dim 0 cut into pieces, each given to a random rank; every rank holds at
    # least one piece (possibly empty), a rank may hold several.
    n0 = shape[0]
    cuts = sorted(rng.sample(range(1, n0), min(n0 - 1, rng.randint(0, 4)))) if n0 > 1 else []
    bounds = [0, *cuts, n0]
    pieces = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
    per_rank: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    for p in pieces:
        per_rank[rng.randrange(world)].append(p)
    for r in range(world):
        if kind == "sharded":  # ShardedTensor calls an empty shard overlapping: none at all
            continue
        if not per_rank[r]:
            per_rank[r].append((rng.randint(0, n0), 0))
        per_rank[r].sort()
    return Rows(kind, tuple(tuple(p) for p in per_rank))


def _blank(value: Any) -> Any:
    """``value`` with the same containers and every leaf 0 (what a load replaces)."""
    if isinstance(value, dict):
        return {k: _blank(v) for k, v in value.items()} if value else {}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return 0


def _set(sd: dict[Any, Any], key: tuple[Any, ...], leaf: Any) -> None:
    node: Any = sd
    for k in key[:-1]:
        node = node.setdefault(k, {})
    node[key[-1]] = leaf


def state(seed: int, world: int, rank: int, meshes: Meshes, *, saving: bool, salt: int) -> tuple[
        dict[Any, Any], list[tuple[tuple[Any, ...], Any, torch.Tensor]]]:
    """This rank's state dict of seed ``seed`` (layouts drawn with ``salt``) and, per
    tensor, (key, layout, global tensor)."""
    rng = random.Random(seed * 1000 + world * 10 + salt)
    sd: dict[Any, Any] = {}
    made = []
    for i, (key, shape, dtype) in enumerate(spec(seed)):
        full = global_tensor(shape, dtype, seed=seed + i)
        lay = layout(rng, world, shape)
        if not saving and rng.random() < 0.3 and not dtype.is_complex:
            # A destination of another dtype gets the values as copy_ converts them.
            dtype = rng.choice([d for d in DTYPES if not d.is_complex])
            full = full.to(dtype)
        if isinstance(lay, Numpy) and DCP:  # DCP pickles numpy arrays: refused by design
            lay = Full(world)
        if isinstance(lay, Numpy) and dtype not in (torch.bfloat16, torch.uint32):
            leaf = full.numpy().copy() if saving else np.full(shape, 3, dtype=full.numpy().dtype)
        else:
            if isinstance(lay, Numpy):
                lay = Full(world)
            leaf = build(lay, shape, dtype, rank, meshes, full if saving else None)
        _set(sd, key, leaf)
        made.append((key, lay, full))
    if saving:
        sd.update(values(seed))
    else:
        sd.update(_blank(values(seed)))
    return sd, made


def save_options(seed: int) -> dict[str, Any]:
    from reshard import ZstdCodec

    rng = random.Random(seed * 31 + 5)
    codec = rng.choice([None, None, "zstd", ZstdCodec(level=1, shuffle=True),
                        ZstdCodec(level=1, shuffle=True, planes=True)])
    if BIG:  # tiles of a few bytes on tensors of 100k elements: millions of chunks
        return {"codec": codec, "column_blocks": rng.choice([None, 2, 3]),
                "tile": rng.choice([1 << 12, 1 << 16]), "crc_parts": None,
                "frame": rng.choice([None, "4096", "24576"]), "async": rng.random() < 0.3}
    return {"codec": codec, "column_blocks": rng.choice([None, None, 2, 3, 5]),
            "tile": rng.choice([8, 40, 200]), "crc_parts": rng.choice([None, None, 2, 3]),
            "frame": rng.choice([None, "5", "24", "64"]), "async": rng.random() < 0.3}


def load_options(seed: int, world: int) -> dict[str, str]:
    rng = random.Random(seed * 17 + world)
    return {"RESHARD_EXCHANGE_READS": rng.choice(["0", "1"]), "RESHARD_EXCHANGE_MIN_NBYTES": "1",
            "RESHARD_MAP_READS": rng.choice(["0", "1"]),
            "RESHARD_IO_THREADS": rng.choice(["1", "3"])}


class _Skip(Exception):
    """DCP refused to save the seed's state (one of its own limits)."""


def _save(seed: int, world: int, rank: int, root: str, meshes: Meshes) -> None:
    import reshard
    from reshard import config

    opts = save_options(seed)
    sd, _ = state(seed, world, rank, meshes, saving=True, salt=0)
    saved = (config.COLUMN_TILE_MIN_NBYTES, config.COLUMN_TILE_NBYTES)
    config.COLUMN_TILE_MIN_NBYTES, config.COLUMN_TILE_NBYTES = 0, opts["tile"]
    if opts["frame"] is not None:
        os.environ["RESHARD_FRAME_RAW_NBYTES"] = opts["frame"]
    try:
        with column_checksums_on_small_boxes(opts["crc_parts"]):
            path = os.path.join(root, f"s{seed}")
            kw = {"codec": opts["codec"], "column_blocks": opts["column_blocks"]}
            if DCP:  # torch.distributed.checkpoint writes it; reshard reads it
                import torch.distributed.checkpoint as dcp

                try:
                    dcp.save(sd, checkpoint_id=path)
                except BaseException:  # CheckpointException: a layout DCP itself refuses
                    if rank == 0:
                        open(os.path.join(root, f"skip{seed}"), "w").close()
                    raise _Skip from None
            elif opts["async"]:
                reshard.async_save(sd, path, **kw).result()
            else:
                reshard.save(sd, path, **kw)
    finally:
        config.COLUMN_TILE_MIN_NBYTES, config.COLUMN_TILE_NBYTES = saved
        os.environ.pop("RESHARD_FRAME_RAW_NBYTES", None)


def _load(seed: int, world: int, rank: int, root: str, meshes: Meshes, salt: int) -> list[Problem]:
    import reshard

    sd, made = state(seed, world, rank, meshes, saving=False, salt=salt)
    env = load_options(seed, world + salt)
    os.environ.update(env)
    where = f"load@{world}/{salt} {env}"
    try:
        reshard.load(sd, os.path.join(root, f"s{seed}"))
    except Exception as e:  # noqa: BLE001 - reported with the seed
        return [(seed, where, f"{type(e).__name__}: {e}")]
    finally:
        for k in env:
            del os.environ[k]
    problems: list[Problem] = []
    for key, lay, full in made:
        node: Any = sd
        for k in key:
            node = node[k]
        if isinstance(lay, Numpy):
            ok = isinstance(node, np.ndarray) and node.dtype == full.numpy().dtype and (
                node.shape == full.numpy().shape) and np.array_equal(node, full.numpy())
            msgs = [] if ok else [f"numpy: got {node!r}, want {full.numpy()!r}"]
        elif isinstance(lay, Full):  # layouts.check slices, which a 0-d tensor refuses
            ok = node.dtype == full.dtype and node.shape == full.shape and torch.equal(node, full)
            msgs = [] if ok else [f"full: got {node}, want {full}"]
        else:
            msgs = check(lay, node, full, meshes)
        for msg in msgs:
            problems.append((seed, where, f"{key} {lay}: {msg}"))
    for k, v in values(seed).items():
        if repr(sd[k]) != repr(v):
            problems.append((seed, where, f"value {k}: {sd[k]!r} != {v!r}"))
    return problems


def random_world(rank: int, world: int, root: str, save_seeds: list[int],
                 load_seeds: list[int]) -> list[Problem]:
    """Save ``save_seeds`` (and load each back on this world with other layouts), then
    load ``load_seeds`` (saved by other worlds)."""
    meshes = Meshes()
    problems: list[Problem] = []
    for seed in save_seeds:
        try:
            _save(seed, world, rank, root, meshes)
        except _Skip:
            continue
        except Exception as e:  # noqa: BLE001
            problems.append((seed, f"save@{world}", f"{type(e).__name__}: {e}"))
            continue
        problems += _load(seed, world, rank, root, meshes, salt=1)
    for seed in load_seeds:
        if os.path.exists(os.path.join(root, f"skip{seed}")):
            continue
        problems += _load(seed, world, rank, root, meshes, salt=2)
    return problems
