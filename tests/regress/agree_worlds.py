"""Rank functions for tests/regress/test_agreement.py (spawned: must be importable).

Loads that fail on one rank only must raise the same error on every rank, never hang.
Each scenario returns per-rank strings; the test compares them across ranks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import reshard
from reshard.manifest_io import load_manifest
from reshard.storage import open_store
from tests.helpers.files import xor_byte
from tests.helpers.outcomes import error_text


def whole_chunk_corrupt_with_exchange(rank: int, world: int, root: str) -> dict[str, str]:
    """Bug: a load's whole small chunks were read before the cooperative reads, outside
    their agreement: a bad CRC in a chunk only rank 2 loads made rank 2 leave while the
    other ranks waited in the exchange's all_to_all, and the load hung."""
    os.environ.update({"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1",
                       "RESHARD_FRAME_RAW_NBYTES": "64"})
    mesh = init_device_mesh("cpu", (world,))
    path = os.path.join(root, "whole")
    w = torch.arange(64 * 40, dtype=torch.float32).reshape(64, 40)
    v = torch.arange(40, dtype=torch.float32)
    reshard.save({"w": distribute_tensor(w, mesh, [Shard(0)]),
                  "v": distribute_tensor(v, mesh, [Shard(0)])}, path)
    dist.barrier()
    out = {}

    def load() -> None:
        # w: a column cut, shared through the exchange; v: each rank's own whole chunk.
        sd = {"w": distribute_tensor(torch.zeros(64, 40), mesh, [Shard(1)]),
              "v": distribute_tensor(torch.zeros(40), mesh, [Shard(0)])}
        reshard.load(sd, path)
        assert torch.equal(sd["w"].to_local(), distribute_tensor(w, mesh, [Shard(1)]).to_local())

    out["clean"] = error_text(load)
    if rank == 0:
        store = open_store(path, None)
        entry = next(e for e in load_manifest(store).entries if e.key == ("v",))
        store.close()
        chunk = next(c for c in entry.chunks if c.box.offsets == (20,))
        xor_byte(os.path.join(path, chunk.file), chunk.offset + 1, 0x40)
    dist.barrier()
    out["corrupt"] = error_text(load)
    for k in list(os.environ):
        if k.startswith("RESHARD_"):
            del os.environ[k]
    return out


def _agreed(fn: Any) -> list[str]:
    """This rank's outcome of ``fn``, then every rank's (all_gather)."""
    mine = error_text(fn)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


def one_rank_fails_to_start(rank: int, world: int, root: str) -> dict[str, list[str]]:
    """Bug: a rank whose store could not be opened (bad storage_options, an empty path, a
    bad RESHARD_* value read before the first agreement) raised alone while the others
    waited in the first collective (load: the manifest broadcast; save: the gather of
    descriptions; a load's cooperative reads: the exchange), until the process-group
    timeout."""
    mesh = init_device_mesh("cpu", (world,))
    path = os.path.join(root, "start")
    w = torch.arange(48 * 30, dtype=torch.float32).reshape(48, 30)
    reshard.save({"w": distribute_tensor(w, mesh, [Shard(0)]), "step": 5}, path)
    out: dict[str, list[str]] = {}

    def dest() -> dict[str, Any]:
        return {"w": distribute_tensor(torch.zeros(48, 30), mesh, [Shard(1)]), "step": 0}

    out["load_storage_options"] = _agreed(lambda: reshard.load(
        dest(), path, storage_options={"anon": True} if rank == 1 else None))
    os.environ.update({"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1"})
    if rank == 2:
        os.environ["RESHARD_IO_THREADS"] = "zero"
    out["load_bad_threads_exchange"] = _agreed(lambda: reshard.load(dest(), path))
    os.environ.pop("RESHARD_IO_THREADS", None)
    if rank == 0:
        os.environ["RESHARD_MAP_READS"] = "maybe"
    out["load_bad_map_reads"] = _agreed(lambda: reshard.load(dest(), path))
    for k in ("RESHARD_MAP_READS", "RESHARD_EXCHANGE_READS", "RESHARD_EXCHANGE_MIN_NBYTES"):
        os.environ.pop(k, None)
    out["save_empty_path"] = _agreed(lambda: reshard.save(
        {"w": distribute_tensor(w + 1, mesh, [Shard(0)]), "step": 6}, "" if rank == 2 else path))
    out["async_save_empty_path"] = _agreed(lambda: reshard.async_save(
        {"w": distribute_tensor(w + 2, mesh, [Shard(0)]), "step": 7},
        "" if rank == 1 else path).result())
    # Nothing was committed: the first checkpoint loads whole.
    sd = dest()
    out["after"] = _agreed(lambda: reshard.load(sd, path))
    assert sd["step"] == 5 and torch.equal(sd["w"].full_tensor(), w)
    return out


def load_mismatches(rank: int, world: int, root: str) -> dict[str, list[str]]:
    """Loads into state dicts that disagree with the checkpoint, on some ranks or all:
    every rank raises the same error naming the key (and both shapes), or loads what it
    can (strict=False). Saved on a (1, world) mesh, loaded on (world,)."""
    mesh2 = init_device_mesh("cpu", (1, world))
    mesh = init_device_mesh("cpu", (world,))
    path = os.path.join(root, "mismatch")
    w = torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5)
    b = torch.arange(4, dtype=torch.int64)
    reshard.save({"w": distribute_tensor(w, mesh2, [Shard(1), Shard(0)]), "b": b, "step": 3,
                  "only_saved": torch.ones(2)}, path)
    from torch.distributed.tensor import DTensor

    out: dict[str, list[str]] = {}

    def sd(**over: Any) -> dict[str, Any]:
        base = {"w": distribute_tensor(torch.zeros(7, 5), mesh, [Shard(0)]),
                "b": torch.zeros(4, dtype=torch.int64), "step": 0}
        base.update(over)
        return base

    out["dtensor_shape_all"] = _agreed(lambda: reshard.load(
        sd(w=distribute_tensor(torch.zeros(7, 6), mesh, [Shard(1)])), path))
    out["plain_shape_rank1"] = _agreed(lambda: reshard.load(
        sd(b=torch.zeros(5 if rank == 1 else 4, dtype=torch.int64)), path))
    out["ndim_all"] = _agreed(lambda: reshard.load(sd(w=torch.zeros(35)), path))
    out["missing_rank2"] = _agreed(lambda: reshard.load(
        sd(**({"not_saved": torch.zeros(3)} if rank == 2 else {})), path))
    out["tensor_for_value"] = _agreed(lambda: reshard.load(sd(step=torch.zeros(1)), path))
    # A local shard that is not what the placements give, on rank 0 only (world of 3:
    # torch.chunk gives 3, 3, 1 rows).
    local = torch.zeros({0: 4, 1: 3, 2: 1}[rank], 5)
    bad = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size((7, 5)),
                             stride=(5, 1))
    out["local_shape_rank0"] = _agreed(lambda: reshard.load(sd(w=bad), path))

    # strict=False: the missing key is left alone, the others load (resharded, converted).
    lenient = sd(not_saved=torch.full((3,), 9.0), w=distribute_tensor(
        torch.zeros(7, 5, dtype=torch.int64), mesh, [Shard(1)]))

    def check_lenient() -> None:
        reshard.load(lenient, path, strict=False)
        assert torch.equal(lenient["not_saved"], torch.full((3,), 9.0))
        assert torch.equal(lenient["w"].full_tensor(), w.to(torch.int64))
        assert torch.equal(lenient["b"], b) and lenient["step"] == 3

    out["lenient"] = _agreed(check_lenient)
    return out


def world_of_3(rank: int, world: int, root: str) -> dict[str, list[str]]:
    return {**one_rank_fails_to_start(rank, world, root), **load_mismatches(rank, world, root)}
