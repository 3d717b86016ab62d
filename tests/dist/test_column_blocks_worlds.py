"""column_blocks checkpoints saved by worlds of 4 and 3 ranks and loaded by the other.

The world of 4 saves from 3-D meshes ((2, 1, 2), (1, 2, 2), (2, 2, 1)), a
LocalShardsWrapper and a protocol subclass; the world of 3 from 1-D, (1, 3), (3, 1) and
(3, 1, 1) meshes and its own row pieces. Each saves with k = 2, 3 and 5 mixed with zstd,
tiny frames that are not a multiple of any element size (RESHARD_FRAME_RAW_NBYTES),
async_save, and a sharedfs:// URL (an fsspec store: cooperative reads by default).
Dtypes bf16, bool, int8, complex128, f32, int64; 1-D to 5-D; k above the number of
columns; boxes just above, at and below COLUMN_TILE_MIN_NBYTES (shrunk to 1 KiB), so one
tensor holds cut and whole boxes side by side. Every element is checked after loads into
other meshes and row pieces of the other world and its own, with and without cooperative
reads.

Read amplification, at the real 1 MiB floor and 16 MiB tiles: a Shard(0) save on 4 ranks
of boxes at the floor with k=3, loaded Shard(1) on 3 ranks, reads about what it needs;
boxes one row under the floor stay whole, and the same load reads them about 3 times over.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.helpers import sharedfs
from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

from .layouts import Full, Layout, Mesh, Meshes, Rows, build, check
from .test_column_blocks import pattern

pytestmark = pytest.mark.dist

Problem = tuple[str, int, int, str]  # (scenario, world, rank, message)
TILE, TILE_MIN = 4096, 1024  # bytes, shrunk from 16 MiB and 1 MiB

# (name, shape, dtype name)
SHAPES = [
    ("f32_31", (31, 32), "float32"),  # S0 on 4: 1024, 1024, 1024, 896 bytes: cut and whole
    ("f32_23", (23, 32), "float32"),  # S0 on 3: 1024, 1024, 896
    ("bf16_narrow", (300, 2), "bfloat16"),  # k above the number of columns
    ("bool", (40, 33), "bool"),
    ("i8", (200, 7), "int8"),
    ("c128", (12, 9), "complex128"),
    ("f32_5d", (4, 10, 3, 2, 5), "float32"),
    ("i64_1d", (1000,), "int64"),
]

SAVE_LAYOUTS: dict[int, list[Layout]] = {
    4: [Mesh("2x1x2", "S0,R,S1"), Mesh("1x2x2", "R,S0,S0"), Mesh("2x2x1", "S1,S1,S0"),
        Mesh("2x1x2", "S1,S0,R", strided=True), Rows("lsw", ()), Rows("proto", ()), Full(4)],
    3: [Mesh("3", "S0"), Mesh("3", "S1"), Mesh("1x3", "R,S1"), Mesh("3x1", "S0,S1"),
        Mesh("3x1x1", "S1,R,S0"), Rows("proto", ()), Rows("lsw", ())],
}
# (name, saving world, column_blocks, codec, frame raw bytes, async, sharedfs)
CHECKPOINTS = [
    ("w4_k2_zstd", 4, 2, "zstd", "1001", False, False),
    ("w4_k5_fs", 4, 5, None, "333", True, True),
    ("w4_k3", 4, 3, None, "16", False, False),  # whole elements: cooperative reads apply
    ("w3_k3_zstd_fs", 3, 3, "zstd", "777", False, True),
    ("w3_k5", 3, 5, None, "48", True, False),
    ("w3_k2", 3, 2, None, "4099", False, False),
]
# Per loading world: (layout, checkpoints, cooperative reads forced on)
LOADS: dict[int, list[tuple[Layout, tuple[str, ...], bool]]] = {
    4: [(Mesh("2x2", "S1,S0"), ("w3_k5", "w4_k3"), True),
        (Mesh("4", "S1"), ("w3_k2", "w4_k2_zstd", "w3_k3_zstd_fs"), False),
        (Mesh("2x1x2", "R,S1,S0"), ("w3_k5", "w4_k5_fs"), False),
        (Rows("proto", ()), ("w3_k3_zstd_fs", "w4_k3"), False)],
    3: [(Mesh("3", "S1"), ("w4_k3", "w3_k5"), True),
        (Mesh("1x3", "S0,S1"), ("w4_k3", "w3_k3_zstd_fs", "w4_k2_zstd"), False),
        (Mesh("3x1", "R,S1"), ("w4_k5_fs", "w3_k2"), False),
        (Rows("lsw", ()), ("w4_k2_zstd",), False)],
}


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _row_pieces(n0: int, world: int, flip: bool) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Uneven row pieces per rank, one rank holding none and one holding two; ``flip``
    gives another plan (for loads)."""
    a, b, c = n0 // 3, n0 // 2, (3 * n0) // 4
    if world == 4:
        per = [[(0, a)], [], [(a, b - a), (b, c - b)], [(c, n0 - c)]]
    else:
        per = [[(0, a), (c, n0 - c)], [(a, c - a)], []]
    if flip:
        per = per[::-1]
    return tuple(tuple(p for p in r if p[1] > 0) for r in per)


def _fits(layout: Layout, shape: tuple[int, ...], world: int, *, loading: bool) -> Layout | None:
    """``layout`` made concrete for ``shape``: shards on dims ``shape`` lacks become
    Replicate; row layouts get this world's pieces (LocalShardsWrapper: 2-D only)."""
    if isinstance(layout, Mesh):
        parts = [p if p == "R" or int(p[1:]) < len(shape) else "R"
                 for p in layout.placements.split(",")]
        return Mesh(layout.mesh, ",".join(parts), layout.strided)
    if isinstance(layout, Rows):
        if shape[0] < 4 or (layout.kind == "lsw" and len(shape) != 2):
            return None
        return Rows(layout.kind, _row_pieces(shape[0], world, flip=loading))
    return layout


def scenarios(world: int) -> list[tuple[str, tuple[int, ...], str, Layout, int]]:
    """(key, shape, dtype, save layout, seed) of what the world of ``world`` saves."""
    out = []
    for i, (name, shape, dt) in enumerate(SHAPES):
        for j, layout in enumerate(SAVE_LAYOUTS[world]):
            fit = _fits(layout, shape, world, loading=False)
            if fit is not None:
                out.append((f"{j}:{fit}|{name}" if not isinstance(fit, Rows) else f"{fit.kind}|{name}",
                            shape, dt, fit, 100 * i + 7 * j + world))
    return out


def _save_all(rank: int, world: int, root: str, meshes: Meshes) -> None:
    import reshard
    from reshard import config

    state = {key: build(lay, shape, _dtype(dt), rank, meshes, pattern(shape, dt, seed))
             for key, shape, dt, lay, seed in scenarios(world)}
    for name, w, k, codec, frame, is_async, remote in CHECKPOINTS:
        if w != world:
            continue
        path = _path(root, name, remote)
        if frame is None:
            os.environ.pop("RESHARD_FRAME_RAW_NBYTES", None)
        else:
            os.environ["RESHARD_FRAME_RAW_NBYTES"] = frame
        if is_async:
            reshard.async_save(state, path, codec=codec, column_blocks=k).result()
        else:
            reshard.save(state, path, codec=codec, column_blocks=k)
    os.environ.pop("RESHARD_FRAME_RAW_NBYTES", None)
    assert config.COLUMN_TILE_MIN_NBYTES == TILE_MIN


def _path(root: str, name: str, remote: bool) -> str:
    local = os.path.join(root, name)
    return sharedfs.url(local) if remote else local


def _check_cut(root: str) -> list[Problem]:
    """Every checkpoint holds more chunks than boxes (the cut happened), and f32_31 on 4
    ranks S0 kept its 896-byte box whole while cutting the others."""
    import reshard

    problems: list[Problem] = []
    for name, w, _, _, _, _, remote in CHECKPOINTS:
        with reshard.open(_path(root, name, remote)) as ck:
            chunks = sum(len(ck.info(key).chunks) for key, *_ in scenarios(w))
            if chunks < 2 * len(scenarios(w)):
                problems.append((f"manifest {name}", w, 0, f"only {chunks} chunks"))
            if w == 4:
                key = next(key for key, *_ in scenarios(4) if key.startswith("1:") and "f32_31" in key)
                rows = sorted({(c.offsets[0], c.sizes[0]) for c in ck.info(key).chunks})
                last = [c for c in ck.info(key).chunks if c.offsets[0] >= 24]
                if len(last) != 1 or len(rows) < 4:
                    problems.append((f"manifest {name} {key}", w, 0,
                                     f"the 896-byte box was cut or the others not: {rows}"))
    return problems


def _load_all(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    import reshard
    from reshard.transfer import exchange as exchange_module

    real_run, runs = exchange_module.run, [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs[0] += 1
        return real_run(*args, **kwargs)

    exchange_module.run = counted  # type: ignore[assignment]
    problems: list[Problem] = []
    for layout, names, exchange in LOADS[world]:
        if exchange:
            os.environ.update({"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1",
                               "RESHARD_EXCHANGE_ROUND_NBYTES": "512"})
        else:  # auto: on for the sharedfs:// checkpoints, off for local ones
            os.environ.pop("RESHARD_EXCHANGE_READS", None)
        for name in names:
            _, saver, *_, remote = next(c for c in CHECKPOINTS if c[0] == name)
            keys = [(key, shape, dt, seed) for key, shape, dt, _, seed in scenarios(saver)]
            lays = {key: _fits(layout, shape, world, loading=True) or Full(world)
                    for key, shape, _, _ in keys}
            sd = {key: build(lays[key], shape, _dtype(dt), rank, meshes, None)
                  for key, shape, dt, _ in keys}
            tag = f"{name} -> {layout}{' exchanged' if exchange else ''}"
            before = runs[0]
            try:
                reshard.load(sd, _path(root, name, remote))
            except Exception as e:  # noqa: BLE001 - reported with its scenario
                problems.append((tag, world, rank, f"load raised {type(e).__name__}: {e}"))
                continue
            if exchange and runs[0] == before:
                problems.append((tag, world, rank, "no cooperative reads were made"))
            for key, shape, dt, seed in keys:
                problems += [(f"{tag} {key}", world, rank, m)
                             for m in check(lays[key], sd[key], pattern(shape, dt, seed), meshes)]
        for var in ("RESHARD_EXCHANGE_READS", "RESHARD_EXCHANGE_MIN_NBYTES",
                    "RESHARD_EXCHANGE_ROUND_NBYTES"):
            os.environ.pop(var, None)
    exchange_module.run = real_run  # type: ignore[assignment]
    return problems


# Read amplification at the real floor

AMP = {"amp_at": (1024, 1024), "amp_below": (1020, 1024)}  # f32 S0 boxes of 1 MiB and 1 MiB - 1 row


def _amp_state(world: int, meshes: Meshes, fill: bool, dim: int) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    out = {}
    for key, shape in AMP.items():
        full = pattern(shape, "float32", 3)
        out[key] = distribute_tensor(full if fill else torch.zeros_like(full),
                                     meshes.get((world,)), [Shard(dim)])
    return out


def _load_amplification(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    import reshard

    problems: list[Problem] = []
    os.environ["RESHARD_EXCHANGE_READS"] = "0"
    for key, shape in AMP.items():
        sd = _amp_state(world, meshes, False, 1)
        only = {key: sd[key]}
        path = os.path.join(root, "amp")
        stats = reshard.load(only, path, strict=False)
        manifest = os.path.getsize(os.path.join(path, "manifest.json"))
        full = pattern(shape, "float32", 3)
        want = distribute_tensor(full, meshes.get((world,)), [Shard(1)]).to_local()
        if not torch.equal(only[key].to_local(), want):
            problems.append((f"amp {key}", world, rank, "values differ"))
        ratio = (stats.bytes_read - manifest) / (want.numel() * 4)
        low, high = (0.99, 1.05) if key == "amp_at" else (2.5, 3.5)
        if not low <= ratio <= high:
            problems.append((f"amp {key}", world, rank,
                             f"read {ratio:.2f}x the bytes needed, want {low}..{high}"))
    os.environ.pop("RESHARD_EXCHANGE_READS")
    return problems


def worlds(rank: int, world: int, root: str) -> list[Problem]:
    import torch.distributed as dist

    import reshard
    from reshard import config

    sharedfs.register()
    meshes = Meshes()
    problems: list[Problem] = []
    with failing_marks(root, world):
        if world == 4:  # at the real tile sizes
            reshard.save(_amp_state(world, meshes, True, 0), os.path.join(root, "amp"),
                         column_blocks=3)
        config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = TILE, TILE_MIN
        _save_all(rank, world, root, meshes)
    dist.barrier()
    if rank == 0:
        mark_stage(root, world, "saved")
    other = 3 if world == 4 else 4
    wait_for_stage(root, other, "saved")
    if rank == 0 and world == 4:
        problems += _check_cut(root)
    problems += _load_all(rank, world, root, meshes)
    if world == 3:
        config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = 16 << 20, 1 << 20
        problems += _load_amplification(rank, world, root, meshes)
    return problems


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    root = str(tmp_path_factory.mktemp("column_blocks_worlds"))
    return run_worlds_at_once(worlds, (4, 3), root, timeout_s=240)


@pytest.mark.parametrize("world", [4, 3])
def test_column_blocks_across_worlds_of_4_and_3(outcome: dict[int, Any], world: int) -> None:
    result = outcome[world]
    if isinstance(result, BaseException):
        raise result
    problems = [p for rank_problems in result for p in rank_problems]
    lines = [f"{n} [world {w}, rank {r}]: {m}" for n, w, r, m in problems[:30]]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(lines)
