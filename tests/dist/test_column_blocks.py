"""save(..., column_blocks=k) in spawned worlds: checkpoints saved on 4 ranks from every
kind of layout (1-D and 2-D meshes with Shard(0)/Shard(1)/Replicate, strided locals,
LocalShardsWrapper and protocol row pieces with empty and uneven ranks, replicated plain
tensors, transposed views and numpy arrays), with k = 2 (save), 3 (async_save), 7
(RESHARD_COLUMN_BLOCKS) and 64 (more blocks than most dims have columns). Tile sizes are
shrunk (config.COLUMN_TILE_NBYTES / COLUMN_TILE_MIN_NBYTES) so small tensors are cut into
row runs and some boxes stay whole.

Checked: the manifest holds exactly layout.column_tiles of every distinct saved box (so
replicas agree and nothing is written twice or overlaps); every element loads back exactly
into Shard(1)/Shard(0)/Replicate on 2, 3 and 4 ranks and into plain tensors in one process;
a Shard(0) save with k=2, or with k=1 and column checksums (the default), loaded as
Shard(1) on 2 ranks reads about the bytes it needs, k=1 without column checksums about
twice that; ranks passing different or invalid values raise the same clear error on
every rank and leave the previous checkpoint loadable.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

from .layouts import Full, Layout, Mesh, Meshes, Rows, build, check

pytestmark = pytest.mark.dist

Problem = tuple[str, int, int, str]  # (scenario, world, rank, message)
TILE, TILE_MIN = 2048, 256  # bytes, shrunk from 16 MiB and 1 MiB
CHECKPOINTS = {"k2": 2, "k3": 3, "k7": 7, "k64": 64}

# (name, shape, dtype name)
SHAPES = [
    ("f32_1001", (37, 1001), "float32"),
    ("bf16", (33, 50), "bfloat16"),
    ("bool", (64, 129), "bool"),
    ("c64", (16, 31), "complex64"),
    ("f32_3d", (9, 10, 11), "float32"),
    ("i64_4d", (5, 6, 7, 8), "int64"),
    ("narrow", (40, 3), "float32"),  # fewer columns than most k
    ("one_col", (300, 1), "float32"),  # one part: row runs only
    ("one_row", (1, 3000), "int64"),  # a row larger than a tile
    ("at_min", (8, 8), "float32"),  # 256 bytes: cut whole, not as 4 row shards
    ("below_min", (7, 9), "float32"),  # 252 bytes: never cut
    ("empty0", (0, 40), "float32"),
    ("empty1", (40, 0), "float32"),
    ("vec", (500,), "float32"),  # one dim: never cut
]

SAVE_LAYOUTS: list[Layout] = [
    Mesh("4", "S0"), Mesh("4", "S1"), Mesh("4", "R"), Mesh("4", "S0", strided=True),
    Mesh("2x2", "S0,S1"), Mesh("2x2", "R,S1"), Mesh("2x2", "S1,S1"),
    Full(4), Rows("lsw", ()), Rows("proto", ()),
]
# Per loading world: (layout, checkpoints loaded into it). Every checkpoint is loaded
# sharded on dim 1 at least once, and whole in one process (test_..._in_one_process).
LOADS: dict[int, list[tuple[Layout, tuple[str, ...]]]] = {
    4: [(Mesh("2x2", "S1,S0"), ("k2",)), (Mesh("4", "S1"), ("k3", "k7"))],
    3: [(Mesh("3", "S1"), ("k7", "k64")), (Mesh("3", "S0"), ("k2",))],
    2: [(Mesh("2", "S1"), ("k2", "k3")), (Mesh("2", "S0"), ("k7",)), (Mesh("2", "R"), ("k64",))],
}


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def pattern(shape: tuple[int, ...], dtype_name: str, seed: int) -> Any:
    """Exact values that make a misplaced element visible (not periodic, unlike an
    arange taken modulo 256 for bfloat16 or 2 for bool)."""
    import math

    import torch

    n = math.prod(shape)
    g = torch.Generator().manual_seed(seed)
    if dtype_name == "bool":
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype_name == "bfloat16":
        mant = torch.randint(-128, 128, (n,), generator=g).double()
        scale = torch.pow(2.0, torch.randint(-8, 8, (n,), generator=g).double())
        return (mant * scale).to(torch.bfloat16).reshape(shape)
    if dtype_name == "complex64":
        re = torch.arange(n, dtype=torch.float32) + seed
        return torch.complex(re, -re - 0.5).reshape(shape)
    return (torch.arange(n, dtype=torch.int64) + seed).to(_dtype(dtype_name)).reshape(shape)


def _row_pieces(n0: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Uneven row pieces per rank: rank 1 holds none, rank 2 two."""
    a, b, c = n0 // 3, n0 // 2, (3 * n0) // 4
    per = [[(0, a)], [], [(a, b - a), (b, c - b)], [(c, n0 - c)]]
    return tuple(tuple(p for p in r if p[1] > 0) for r in per)


def _fits(layout: Layout, shape: tuple[int, ...]) -> Layout | None:
    """``layout`` made concrete for ``shape``, or None where it does not apply."""
    if isinstance(layout, Mesh):
        dims = [int(p[1:]) for p in layout.placements.split(",") if p != "R"]
        return layout if all(d < len(shape) for d in dims) else None
    if isinstance(layout, Rows):
        # torch's LocalShardsWrapper views need ndim <= 2.
        if shape[0] < 4 or (layout.kind == "lsw" and len(shape) != 2):
            return None
        return Rows(layout.kind, _row_pieces(shape[0]))
    return layout


def _load_layout(layout: Mesh, shape: tuple[int, ...]) -> Mesh:
    """``layout`` with shards on dims ``shape`` lacks replaced by Replicate."""
    parts = [p if p == "R" or int(p[1:]) < len(shape) else "R" for p in layout.placements.split(",")]
    return Mesh(layout.mesh, ",".join(parts))


def scenarios() -> list[tuple[str, tuple[int, ...], str, Layout, int]]:
    """(key, shape, dtype, save layout, seed) of every saved DTensor/tensor/object."""
    out = []
    for i, (name, shape, dt) in enumerate(SHAPES):
        for layout in SAVE_LAYOUTS:
            fit = _fits(layout, shape)
            if fit is not None:
                out.append((f"{layout if not isinstance(layout, Rows) else layout.kind}|{name}",
                            shape, dt, fit, 1000 * i + 7))
    return out


def replicated_extras() -> list[tuple[str, tuple[int, ...], str, str, int]]:
    """(key, shape, dtype, kind, seed): plain leaves every rank holds whole."""
    out = []
    for i, (name, shape, dt) in enumerate(SHAPES):
        if len(shape) >= 2:
            out.append((f"T|{name}", shape, dt, "transposed", 1000 * i + 11))
        if dt != "bfloat16":
            out.append((f"np|{name}", shape, dt, "numpy", 1000 * i + 13))
    return out


def global_of(key: str) -> Any:
    for k, shape, dt, _, seed in scenarios():
        if k == key:
            return pattern(shape, dt, seed)
    for k, shape, dt, _, seed in replicated_extras():
        if k == key:
            return pattern(shape, dt, seed)
    raise KeyError(key)


def _transposed(full: Any) -> Any:
    """A non-contiguous view holding ``full``'s values (column-major memory)."""
    dims = tuple(reversed(range(full.dim())))
    return full.permute(dims).contiguous().permute(dims)


def source_state(rank: int, meshes: Meshes) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key, shape, dt, layout, seed in scenarios():
        state[key] = build(layout, shape, _dtype(dt), rank, meshes, pattern(shape, dt, seed))
    for key, shape, dt, kind, seed in replicated_extras():
        full = pattern(shape, dt, seed)
        state[key] = _transposed(full) if kind == "transposed" else full.numpy().copy()
    return state


# The manifest: exactly the column tiles of every distinct saved box


def _saved_boxes(layout: Layout, shape: tuple[int, ...]) -> set[Any]:
    from reshard.core.layout import Box, full_box, shard_box

    if isinstance(layout, Mesh):
        placements = [("replicate", -1) if p == "R" else ("shard", int(p[1:]))
                      for p in layout.placements.split(",")]
        coords = itertools.product(*[range(n) for n in layout.mesh_shape])
        boxes = {shard_box(shape, layout.mesh_shape, placements, c) for c in coords}
    elif isinstance(layout, Rows):
        rest = tuple(shape[1:])
        boxes = {Box((off,) + (0,) * len(rest), (n,) + rest) for r in layout.rows for off, n in r}
    else:
        boxes = {full_box(shape)}
    return {b for b in boxes if not b.is_empty}


def _expected_chunks(boxes: set[Any], itemsize: int, blocks: int) -> list[Any]:
    from reshard.core.layout import column_tiles

    out = []
    for b in boxes:
        out += [b] if b.numel * itemsize < TILE_MIN else column_tiles(b, itemsize, blocks, TILE)
    return sorted(out, key=lambda b: (b.offsets, b.sizes))


def check_manifest(path: str, blocks: int, world: int) -> list[Problem]:
    import reshard
    from reshard.core.layout import Box
    from reshard.format.dtypes import ITEMSIZE

    problems: list[Problem] = []
    where = f"manifest {os.path.basename(path)}"
    cut = 0
    with reshard.open(path) as ck:
        items = [(k, dt, _saved_boxes(lay, s)) for k, s, dt, lay, _ in scenarios()]
        items += [(k, dt, _saved_boxes(Full(1), s)) for k, s, dt, _, _ in replicated_extras()]
        for key, dt, boxes in items:
            got = sorted((Box(c.offsets, c.sizes) for c in ck.info(key).chunks),
                         key=lambda b: (b.offsets, b.sizes))
            want = _expected_chunks(boxes, ITEMSIZE[dt], blocks)
            if got != want:
                problems.append((f"{where} {key}", world, 0,
                                 f"{len(got)} chunks {got[:6]}..., want {len(want)} {want[:6]}..."))
            cut += len(got) > len(boxes)
        # Replicated tiles were written once: the data files hold exactly the chunks.
        listed = sum(c.nbytes for k in ck.keys() if ck.info(k).kind == "tensor"
                     for c in ck.info(k).chunks)
    data = os.path.join(path, "data")
    on_disk = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
    if on_disk != listed:
        problems.append((where, world, 0, f"data files hold {on_disk} bytes, chunks {listed}"))
    if cut < 50:
        problems.append((where, world, 0, f"only {cut} tensors were cut"))
    return problems


# Saving on 4 ranks, mismatches


def _agreed(rank: int, world: int, name: str, call: Any, want_type: type, want_text: list[str],
            ) -> list[Problem]:
    """``call()`` must raise ``want_type`` with the same message, naming ``want_text``, on
    every rank."""
    import torch.distributed as dist

    try:
        call()
        msg, kind = "no error", None
    except Exception as e:  # noqa: BLE001 - compared below
        msg, kind = str(e), type(e)
    msgs: list[Any] = [None] * world
    dist.all_gather_object(msgs, msg)
    problems: list[Problem] = []
    if len(set(msgs)) != 1:
        problems.append((name, world, rank, f"ranks raised different errors: {msgs}"))
    if kind is None or not issubclass(kind, want_type):
        problems.append((name, world, rank, f"raised {kind}: {msg}, want {want_type.__name__}"))
    elif not all(t in msg for t in want_text):
        problems.append((name, world, rank, f"message {msg!r} lacks {want_text}"))
    return problems


def mismatches(rank: int, world: int, root: str) -> list[Problem]:
    import torch

    import reshard
    from reshard.errors import ConfigError

    path = os.path.join(root, "mismatch")
    x = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64)  # 16 KiB, cut
    reshard.save({"x": x}, path, column_blocks=2)
    sd = {"x": torch.zeros(64, 64)}
    p: list[Problem] = []
    p += _agreed(rank, world, "different column_blocks", lambda: reshard.save(
        sd, path, column_blocks=3 if rank == 2 else 2), reshard.CheckpointError,
        ["column_blocks", "rank 0 2", "rank 2 3"])
    p += _agreed(rank, world, "different column_blocks (async)", lambda: reshard.async_save(
        sd, path, column_blocks=1 if rank == 3 else 4).result(), reshard.CheckpointError,
        ["column_blocks", "rank 0 4", "rank 3 1"])
    os.environ["RESHARD_COLUMN_BLOCKS"] = str(2 + rank % 2)
    p += _agreed(rank, world, "different RESHARD_COLUMN_BLOCKS", lambda: reshard.save(sd, path),
                 reshard.CheckpointError, ["column_blocks", "RESHARD_COLUMN_BLOCKS", "rank 1 3"])
    os.environ["RESHARD_COLUMN_BLOCKS"] = "abc" if rank == 1 else "2"
    p += _agreed(rank, world, "bad RESHARD_COLUMN_BLOCKS on rank 1", lambda: reshard.save(sd, path),
                 ConfigError, ["RESHARD_COLUMN_BLOCKS", "rank 1"])
    del os.environ["RESHARD_COLUMN_BLOCKS"]
    for bad in (0, 2.0, True, "2", 1025):
        p += _agreed(rank, world, f"column_blocks={bad!r} on rank 3", lambda bad=bad: reshard.save(
            sd, path, column_blocks=bad if rank == 3 else 2), ConfigError,
            ["column_blocks", repr(bad), "rank 3"])
    # The previous checkpoint is whole, and the world still saves and loads.
    reshard.load(sd, path)
    if not torch.equal(sd["x"], x):
        p.append(("after mismatches", world, rank, "the previous checkpoint changed"))
    reshard.save({"x": x + 1}, path, column_blocks=4)
    reshard.load(sd, path)
    if not torch.equal(sd["x"], x + 1):
        p.append(("after mismatches", world, rank, "a save after the errors did not load back"))
    return p


def _amp_state(rank: int, meshes: Meshes, fill: bool, placement: str, world: int) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    full = pattern(AMP_SHAPE, "float32", 5)
    src = full if fill else torch.zeros_like(full)
    return {"w": distribute_tensor(src, meshes.get((world,)), [Shard(int(placement[1:]))])}


AMP_SHAPE = (1024, 1280)  # 5 MiB float32: boxes of 1.25 MiB on 4 ranks, over the real minimum


def save_all(rank: int, world: int, root: str, meshes: Meshes) -> None:
    import reshard
    from reshard import config

    # The amplification checkpoints use the real tile sizes. "amp1" has neither column
    # blocks nor column checksums; "amp1c" has column checksums (the default).
    os.environ["RESHARD_COLUMN_CHECKSUMS"] = "0"
    for k in (1, 2):
        reshard.save(_amp_state(rank, meshes, True, "S0", world), os.path.join(root, f"amp{k}"),
                     column_blocks=k)
    del os.environ["RESHARD_COLUMN_CHECKSUMS"]
    reshard.save(_amp_state(rank, meshes, True, "S0", world), os.path.join(root, "amp1c"))
    config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = TILE, TILE_MIN
    state = source_state(rank, meshes)
    reshard.save(state, os.path.join(root, "k2"), column_blocks=2)
    reshard.async_save(state, os.path.join(root, "k3"), column_blocks=3).result()
    os.environ["RESHARD_COLUMN_BLOCKS"] = "7"
    reshard.save(state, os.path.join(root, "k7"))
    del os.environ["RESHARD_COLUMN_BLOCKS"]
    reshard.save(state, os.path.join(root, "k64"), column_blocks=64)


# Loading


def load_all(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    import reshard

    problems: list[Problem] = []
    keys = [(k, s, dt) for k, s, dt, _, _ in scenarios()]
    keys += [(k, s, dt) for k, s, dt, _, _ in replicated_extras()]
    wants = {k: global_of(k) for k, _, _ in keys}
    for layout, names in LOADS[world]:
        for name in names:
            lays = {k: _load_layout(layout, s) for k, s, _ in keys}
            sd = {k: build(lays[k], s, _dtype(dt), rank, meshes, None) for k, s, dt in keys}
            tag = f"{name} -> {layout}"
            try:
                reshard.load(sd, os.path.join(root, name))
            except Exception as e:  # noqa: BLE001 - reported with its scenario
                problems.append((tag, world, rank, f"load raised {type(e).__name__}: {e}"))
                continue
            for k, _, _ in keys:
                problems += [(f"{tag} {k}", world, rank, m)
                             for m in check(lays[k], sd[k], wants[k], meshes)]
    return problems


def load_amplification(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    """Shard(1) and Shard(0) on 2 ranks from the Shard(0) save of 4 ranks: bytes read
    against bytes needed, and every element."""
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    import reshard

    problems: list[Problem] = []
    full = pattern(AMP_SHAPE, "float32", 5)
    need = full.numel() * 4 // world
    for k, placement in ((2, "S1"), (1, "S1"), ("1c", "S1"), (2, "S0"), ("1c", "S0")):
        path = os.path.join(root, f"amp{k}")
        sd = _amp_state(rank, meshes, False, placement, world)
        stats = reshard.load(sd, path)
        manifest = os.path.getsize(os.path.join(path, "manifest.json"))
        want = distribute_tensor(full, meshes.get((world,)), [Shard(int(placement[1:]))]).to_local()
        tag = f"amp k={k} -> {placement}"
        if not torch.equal(sd["w"].to_local(), want):
            problems.append((tag, world, rank, "values differ"))
        ratio = (stats.bytes_read - manifest) / need
        if k != 1 and stats.bytes_read > 1.05 * need + manifest:
            problems.append((tag, world, rank, f"read {stats.bytes_read} for {need} needed "
                                               f"(+{manifest} manifest): {ratio:.2f}x"))
        if k == 1 and ratio < 1.9:
            problems.append((tag, world, rank, f"row-major chunks read only {ratio:.2f}x: "
                                               "the comparison lost its meaning"))
    return problems


def column_world(rank: int, world: int, root: str) -> list[Problem]:
    import torch.distributed as dist

    meshes = Meshes()
    problems: list[Problem] = []
    if world == 4:
        with failing_marks(root, world):
            save_all(rank, world, root, meshes)
        dist.barrier()
        if rank == 0:
            mark_stage(root, world, "saved")
            for name, k in CHECKPOINTS.items():
                problems += check_manifest(os.path.join(root, name), k, world)
        problems += mismatches(rank, world, root)
    wait_for_stage(root, 4, "saved")
    from reshard import config

    config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = TILE, TILE_MIN  # as saved
    if world == 3:  # cooperative reads of tiles, too
        os.environ.update({"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1"})
    problems += load_all(rank, world, root, meshes)
    if world == 2:
        problems += load_amplification(rank, world, root, meshes)
    return problems


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[int, Any]]:
    root = str(tmp_path_factory.mktemp("column_blocks"))
    return root, run_worlds_at_once(column_world, (4, 3, 2), root, timeout_s=240)


def _report(problems: list[Problem]) -> str:
    lines = [f"{n} [world {w}, rank {r}]: {m}" for n, w, r, m in problems[:30]]
    return f"{len(problems)} problems:\n" + "\n".join(lines)


@pytest.mark.parametrize("world", [4, 3, 2])
def test_column_blocks_save_on_4_load_everywhere(outcome: tuple[str, dict[int, Any]], world: int) -> None:
    result = outcome[1][world]
    if isinstance(result, BaseException):
        raise result
    problems = [p for rank_problems in result for p in rank_problems]
    assert not problems, _report(problems)


def test_column_blocks_load_in_one_process(outcome: tuple[str, dict[int, Any]]) -> None:
    """Plain tensors and numpy arrays in a process without torch.distributed, then
    partial reads across the column blocks through reshard.open."""
    import numpy as np
    import torch

    import reshard

    root, results = outcome
    if isinstance(results[4], BaseException):
        pytest.skip("the saving world failed (reported by its own test)")
    problems = []
    for name in CHECKPOINTS:
        keys = [(k, s) for k, s, _, _, _ in scenarios()] + [(k, s) for k, s, _, _, _ in replicated_extras()]
        wants = {k: global_of(k) for k, _ in keys}
        sd = {k: (np.zeros(tuple(s), dtype=wants[k].numpy().dtype) if k.startswith("np|")
                  else torch.zeros(s, dtype=wants[k].dtype)) for k, s in keys}
        reshard.load(sd, os.path.join(root, name))
        for k, _ in keys:
            got = torch.from_numpy(sd[k]) if k.startswith("np|") else sd[k]
            problems += [f"{name} {k}: {m}" for m in check(Full(1), got, wants[k], None)]
        if name not in ("k3", "k64"):
            continue
        with reshard.open(os.path.join(root, name)) as ck:
            for k, s in keys:
                if len(s) >= 2 and s[1] > 2:
                    lo, hi = s[1] // 3, s[1] - 1
                    got = ck.read(k, (slice(None), slice(lo, hi)))
                    if k.startswith("np|"):  # numpy entries read back as numpy
                        assert isinstance(got, np.ndarray), type(got)
                        got = torch.from_numpy(got)
                    if not torch.equal(got, wants[k][:, lo:hi]):
                        problems.append(f"{name} {k}: read of columns {lo}:{hi} differs")
    assert not problems, "\n".join(problems[:30])
