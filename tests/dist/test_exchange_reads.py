"""Cooperative reads (RESHARD_EXCHANGE_READS=1): every scenario of the resharding table
loaded with shared frames read by one rank and swapped, plus column cuts of every
element size, uneven and empty shards, and a corrupted frame that must raise the same
CorruptCheckpointError, naming key and file, on every rank.

Worlds of 4, 3 and 2 ranks run at the same time (as in test_resharding): each saves its
sources with tiny frames, waits for the sources it loads, loads and checks every
element, then corrupts frames of its own checkpoint one at a time.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import pytest

from tests.helpers.files import xor_byte
from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

from .layouts import Meshes, build, check, global_tensor
from .scenarios import SCENARIOS, Scenario

pytestmark = pytest.mark.dist

Problem = tuple[str, int, int, str]  # (scenario, load world, rank, message)
FRAME = "16"  # whole elements of every dtype up to complex128; many frames per chunk


def _seed(name: str) -> int:
    return sum(map(ord, name)) % 97


def _setup(world: int) -> dict[str, int]:
    """Exchange on for every load, tiny transfers and rounds so that small tensors take
    many rounds; pool threads in the world of 3. Returns a live count of exchanges."""
    from reshard.transfer import exchange

    os.environ.update({"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1",
                       "RESHARD_EXCHANGE_ROUND_NBYTES": "96",
                       "RESHARD_IO_THREADS": "2" if world == 3 else "1"})
    exchange.TRANSFER_NBYTES = 32
    used = {"runs": 0}
    real = exchange.run

    def counted(*args: Any, **kwargs: Any) -> None:
        used["runs"] += 1
        real(*args, **kwargs)

    exchange.run = counted  # type: ignore[assignment]
    return used


# Extra column cuts: (name, shape, dtype name, save placement, load placement)
EXTRA = [
    ("x_f32_s0_to_s1", (24, 40), "float32", "S0", "S1"),
    ("x_bf16_s0_to_s1", (9, 33), "bfloat16", "S0", "S1"),
    ("x_i64_s0_to_s1", (10, 12), "int64", "S0", "S1"),
    ("x_bool_s0_to_s1", (8, 50), "bool", "S0", "S1"),
    ("x_u8_s0_to_s1", (13, 64), "uint8", "S0", "S1"),
    ("x_c128_s0_to_s1", (6, 7), "complex128", "S0", "S1"),
    ("x_3d_s0_to_s2", (5, 6, 9), "float32", "S0", "S2"),
    ("x_3d_s1_to_s2", (4, 7, 10), "float64", "S1", "S2"),
    ("x_empty_s0_to_s1", (3, 20), "float32", "S0", "S1"),  # a saving rank holds no rows
    ("x_uneven_s0_to_s1", (17, 5), "int32", "S0", "S1"),  # a loading rank holds no columns
]


def _extra_tensor(shape: tuple[int, ...], dtype_name: str, seed: int) -> Any:
    import torch

    dtype = getattr(torch, dtype_name)
    if dtype == torch.complex128:
        n = 1
        for s in shape:
            n *= s
        re = torch.arange(n, dtype=torch.float64) + seed
        return torch.complex(re, -re).reshape(shape)
    return global_tensor(shape, dtype, seed)


def _extra_dtensor(full: Any, world: int, placement: str, meshes: Meshes, fill: bool) -> Any:
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = meshes.get((world,))
    src = full if fill else torch.zeros_like(full)
    return distribute_tensor(src, mesh, [Shard(int(placement[1:]))])


def _check_extra(name: str, got: Any, full: Any, world: int, rank: int, placement: str) -> list[Problem]:
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    want = distribute_tensor(full, got.device_mesh, [Shard(int(placement[1:]))]).to_local()
    local = got.to_local()
    if local.shape != want.shape or not torch.equal(local, want):
        return [(name, world, rank, f"local {local.tolist()} != {want.tolist()}")]
    return []


def _save(rank: int, world: int, root: str, meshes: Meshes) -> None:
    import reshard

    os.environ["RESHARD_FRAME_RAW_NBYTES"] = FRAME
    mine = [s for s in SCENARIOS if s.save.world == world]
    sd = {s.name: build(s.save, s.shape, s.dtype, rank, meshes,
                        global_tensor(s.shape, s.dtype, _seed(s.name))) for s in mine}
    reshard.save(sd, os.path.join(root, f"from{world}"))
    extra = {n: _extra_dtensor(_extra_tensor(shape, dt, _seed(n)), world, sp, meshes, True)
             for n, shape, dt, sp, _ in EXTRA}
    reshard.save(extra, os.path.join(root, f"extra{world}"))
    os.environ.pop("RESHARD_FRAME_RAW_NBYTES")


def _load_scenarios(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    import reshard

    by_source: dict[int, list[Scenario]] = defaultdict(list)
    for s in SCENARIOS:
        if s.load.world == world:
            by_source[s.save.world].append(s)
    problems: list[Problem] = []
    for source, scenarios in sorted(by_source.items()):
        sd = {s.name: build(s.load, s.shape, s.dtype, rank, meshes, None) for s in scenarios}
        try:
            reshard.load(sd, os.path.join(root, f"from{source}"))
        except Exception as e:  # noqa: BLE001 - reported with the scenarios it covers
            return [(f"from{source}", world, rank, f"load raised {type(e).__name__}: {e}")]
        for s in scenarios:
            want = global_tensor(s.shape, s.dtype, _seed(s.name))
            problems += [(s.name, world, rank, m) for m in check(s.load, sd[s.name], want, meshes)]
    return problems


def _load_extra(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    import reshard

    problems: list[Problem] = []
    for source in (4, 3, 2):
        fulls = {n: _extra_tensor(shape, dt, _seed(n)) for n, shape, dt, _, _ in EXTRA}
        sd = {n: _extra_dtensor(fulls[n], world, lp, meshes, False) for n, _, _, _, lp in EXTRA}
        try:
            reshard.load(sd, os.path.join(root, f"extra{source}"))
        except Exception as e:  # noqa: BLE001
            problems.append((f"extra{source}", world, rank, f"load raised {type(e).__name__}: {e}"))
            continue
        for n, _, _, _, lp in EXTRA:
            problems += _check_extra(f"{n}@from{source}", sd[n], fulls[n], world, rank, lp)
    return problems


def _corrupt_everywhere(rank: int, world: int, root: str, meshes: Meshes) -> list[Problem]:
    """Flip one byte of a frame (first, middle, last of each data file) of a column-cut
    tensor; every rank must raise the same CorruptCheckpointError naming key and file."""
    import torch.distributed as dist

    import reshard
    from reshard.manifest_io import load_manifest
    from reshard.storage import open_store

    path = os.path.join(root, f"extra{world}")
    key = "x_f32_s0_to_s1"
    store = open_store(path, None)
    entry = next(e for e in load_manifest(store).entries if e.key == (key,))
    store.close()
    spots = []
    for chunk in entry.chunks:
        offs = chunk.frame_offsets()
        for i in sorted({0, len(chunk.frames) // 2, len(chunk.frames) - 1}):
            spots.append((chunk.file, offs[i] + 3, i))
    problems: list[Problem] = []
    full = _extra_tensor((24, 40), "float32", _seed(key))
    for file, at, frame in spots:
        name = f"corrupt {file} frame {frame}"
        target = os.path.join(path, file)
        if rank == 0:
            xor_byte(target, at, 0x40)
        dist.barrier()
        sd = {key: _extra_dtensor(full, world, "S1", meshes, False)}
        try:
            reshard.load(sd, path)
            msg = "no error"
        except reshard.CorruptCheckpointError as e:
            msg = str(e)
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}"
        msgs: list[Any] = [None] * world
        dist.all_gather_object(msgs, msg)
        if rank == 0:
            xor_byte(target, at, 0x40)
        dist.barrier()
        if len(set(msgs)) != 1:
            problems.append((name, world, rank, f"ranks raised different errors: {msgs}"))
        elif key not in msg or os.path.basename(file) not in msg or "CRC" not in msg:
            problems.append((name, world, rank, f"error lacks key, file or CRC: {msg}"))
    return problems


def exchange_world(rank: int, world: int, root: str) -> tuple[list[Problem], int]:
    meshes = Meshes()
    with failing_marks(root, world):
        _save(rank, world, root, meshes)
    if rank == 0:
        mark_stage(root, world, "saved")
    for source in (4, 3, 2):
        wait_for_stage(root, source, "saved")
    used = _setup(world)
    problems = _load_scenarios(rank, world, root, meshes)
    problems += _load_extra(rank, world, root, meshes)
    # Every world loads every world's sources: corrupt this world's files only once all
    # of them are done reading, or another world's clean load would see the flipped byte.
    import torch.distributed as dist

    dist.barrier()
    if rank == 0:
        mark_stage(root, world, "loaded")
    for source in (4, 3, 2):
        wait_for_stage(root, source, "loaded")
    problems += _corrupt_everywhere(rank, world, root, meshes)
    return problems, used["runs"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    root = str(tmp_path_factory.mktemp("exchange"))
    results = run_worlds_at_once(exchange_world, (4, 3, 2), root, timeout_s=300)
    return results


@pytest.mark.parametrize("world", [4, 3, 2])
def test_exchange_reads_load_every_element_and_agree_on_corruption(
    outcome: dict[int, Any], world: int
) -> None:
    result = outcome[world]
    if isinstance(result, BaseException):
        raise result
    problems = [p for rank_problems, _ in result for p in rank_problems]
    lines = [f"{n} [load world {w}, rank {r}]: {m}" for n, w, r, m in problems[:30]]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(lines)
    # The cooperative path really ran (loads of the table, the extras, the corruptions).
    assert all(runs >= 3 for _, runs in result), [runs for _, runs in result]
