"""Rank functions for tests/dist/test_protocol_hostile_worlds.py (spawned: importable).

Tensor subclasses speaking DCP's checkpointable protocol as users write them, odd but
legal (chunks out of order, zero-size chunks, replicated whole chunks, ranks holding
several boxes or none, non-contiguous shard views) and hostile (overlaps, gaps, shards
of another shape or dtype, ``__get_tensor_shard__`` raising or returning views that
cannot hold the values), and DTensors over LocalShardsWrapper with 2-D blocks on 2-D
meshes. Every scenario of a world runs in one spawn; each returns per-rank outcome
strings that the test compares across ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import reshard
from tests.helpers.outcomes import error_text

SHAPE = (6, 8)


def full(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(math.prod(SHAPE), dtype=dtype).reshape(SHAPE)


Piece = tuple[tuple[int, ...], torch.Tensor]  # (global offsets, the tensor holding that box)


class BoxTensor(torch.Tensor):
    """A wrapper subclass of the global shape holding ``pieces``, in the order given.

    ``sizes`` overrides the chunk sizes it reports (a lying chunk list); ``shard``
    overrides ``__get_tensor_shard__`` (given the piece index and the MetadataIndex)."""

    _pieces: list[Piece]
    _sizes: list[tuple[int, ...]] | None
    _shard: Callable[[int, Any], Any] | None

    @staticmethod
    def __new__(cls, pieces: list[Piece], *, shape: tuple[int, ...] = SHAPE,
                dtype: torch.dtype = torch.float32, sizes: list[tuple[int, ...]] | None = None,
                shard: Callable[[int, Any], Any] | None = None) -> BoxTensor:
        r = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype)
        r._pieces, r._sizes, r._shard = pieces, sizes, shard
        return r

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError(f"BoxTensor does not support {func}")

    def __repr__(self) -> str:  # type: ignore[override]
        return f"BoxTensor(at {[o for o, _ in self._pieces]})"

    def _chunks(self) -> list[Any]:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

        sizes = self._sizes or [tuple(t.shape) for _, t in self._pieces]
        return [ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s))
                for (o, _), s in zip(self._pieces, sizes)]

    def __create_write_items__(self, fqn: str, obj: Any) -> list[Any]:
        from torch.distributed.checkpoint.metadata import MetadataIndex, TensorProperties
        from torch.distributed.checkpoint.planner import (
            TensorWriteData,
            WriteItem,
            WriteItemType,
        )

        return [WriteItem(index=MetadataIndex(fqn, c.offsets, i), type=WriteItemType.SHARD,
                          tensor_data=TensorWriteData(
                              chunk=c, properties=TensorProperties(dtype=self.dtype),
                              size=self.shape))
                for i, c in enumerate(self._chunks())]

    def __create_chunk_list__(self) -> list[Any]:
        return self._chunks()

    def __get_tensor_shard__(self, index: Any) -> Any:
        i = index.index
        if i is None or i >= len(self._pieces) or tuple(self._pieces[i][0]) != tuple(index.offset):
            i = next(k for k, (o, _) in enumerate(self._pieces) if tuple(o) == tuple(index.offset))
        return self._shard(i, index) if self._shard is not None else self._pieces[i][1]


def piece(src: torch.Tensor, offsets: tuple[int, int], sizes: tuple[int, int]) -> Piece:
    (r, c), (n, m) = offsets, sizes
    return offsets, src[r:r + n, c:c + m].clone()


def _rows(rank: int, world: int, n: int = SHAPE[0]) -> tuple[int, int]:
    """This rank's (offset, count) of ``n`` rows cut as evenly as can be."""
    base, extra = divmod(n, world)
    off = rank * base + min(rank, extra)
    return off, base + (rank < extra)


# Save scenarios: name -> this rank's leaf (every rank calls it)


def save_cases(rank: int, world: int) -> dict[str, Callable[[], Any]]:
    src = full()
    off, n = _rows(rank, world)

    def out_of_order_zero() -> Any:
        # This rank's rows as two column halves, right half first, between zero-size chunks.
        return BoxTensor([((off, 0), torch.zeros(0, 8)), piece(src, (off, 4), (n, 4)),
                          ((0, 8), torch.zeros(6, 0)), piece(src, (off, 0), (n, 4))])

    def replicated() -> Any:
        return BoxTensor([piece(src, (0, 0), SHAPE)])

    def by_rank_count() -> Any:
        # Rank r holds the column strips j with j % world == r, last first: ranks hold
        # different numbers of chunks (8 on one rank alone).
        return BoxTensor([piece(src, (0, j), (6, 1)) for j in range(8) if j % world == rank][::-1])

    def none_on_rank_0() -> Any:
        if rank == 0:
            return BoxTensor([])
        o, k = _rows(rank - 1, world - 1)
        return BoxTensor([piece(src, (o, 0), (k, 8))])

    def non_contiguous_views() -> Any:
        # Views into a transposed buffer: the user's storage is column-major.
        buf = src.t().contiguous().t()
        return BoxTensor([((off, 0), buf[off:off + n, :5]), ((off, 5), buf[off:off + n, 5:])])

    return {"out_of_order_zero": out_of_order_zero, "replicated": replicated,
            "by_rank_count": by_rank_count, "none_on_rank_0": none_on_rank_0,
            "non_contiguous_views": non_contiguous_views}


def hostile_save_cases(rank: int, world: int) -> dict[str, Callable[[], Any]]:
    src = full()
    off, n = _rows(rank, world)
    last = rank == world - 1

    def overlap() -> Any:
        # The last rank's box also covers the row above it, holding other values.
        if last:
            return BoxTensor([((off - 1, 0), -src[off - 1:off + n].clone())])
        return BoxTensor([piece(src, (off, 0), (n, 8))])

    def gap() -> Any:
        return BoxTensor([piece(src, (off, 0), (n - 1 if last else n, 8))])

    def wrong_shape_on_last() -> Any:
        return BoxTensor([piece(src, (off, 0), (n, 8))],
                         sizes=[(n, 8)] if not last else [(n, 7)])

    def wrong_dtype_on_last() -> Any:
        t = src[off:off + n].clone()
        return BoxTensor([((off, 0), t.double() if last else t)])

    def raises_on_last() -> Any:
        def shard(i: int, index: Any) -> Any:
            raise RuntimeError("no such shard here")
        return BoxTensor([piece(src, (off, 0), (n, 8))], shard=shard if last else None)

    def meta_on_last() -> Any:
        t = torch.empty(n, 8, device="meta") if last else src[off:off + n].clone()
        return BoxTensor([((off, 0), t)])

    return {"overlap": overlap, "gap": gap, "wrong_shape_on_last": wrong_shape_on_last,
            "wrong_dtype_on_last": wrong_dtype_on_last, "raises_on_last": raises_on_last,
            "meta_on_last": meta_on_last}


def _lsw_on_2d_mesh(src: torch.Tensor, world: int, rank: int) -> Any:
    """A DTensor over a LocalShardsWrapper on a (world, 1) mesh (dim 1 replicated): each
    rank holds its rows as 2x3 blocks (column offsets too), with empty shards between."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("r", "c"))
    off, n = _rows(rank, world)
    tensors, offsets = [], []
    for r in range(off, off + n, 2):
        for c in (6, 3, 0):  # out of order
            k = min(2, off + n - r)
            tensors.append(src[r:r + k, c:8 if c == 6 else c + 3].clone())
            offsets.append((r, c))
        tensors.append(torch.zeros(0, 8))
        offsets.append((r, 0))
    lsw = LocalShardsWrapper(tensors, offsets)
    return DTensor.from_local(lsw, mesh, [Shard(0), Replicate()], run_check=False,
                              shape=torch.Size(src.shape), stride=src.stride())


def _lsw_replicated(src: torch.Tensor, world: int) -> Any:
    """A DTensor over a LocalShardsWrapper replicated on a (1, world) mesh: every rank
    holds the same column blocks (last first), written once."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("x", "y"))
    lsw = LocalShardsWrapper([src[:, 5:].clone(), src[:, :5].clone()], [(0, 5), (0, 0)])
    return DTensor.from_local(lsw, mesh, [Replicate(), Replicate()], run_check=False,
                              shape=torch.Size(src.shape), stride=src.stride())


def save_world(rank: int, world: int, root: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, make in save_cases(rank, world).items():
        path = os.path.join(root, f"{name}{world}")
        out[name] = error_text(lambda m=make, p=path: reshard.save({"t": m()}, p))
    out["lsw_2d"] = error_text(lambda: reshard.save(
        {"t": _lsw_on_2d_mesh(full(), world, rank)}, os.path.join(root, f"lsw_2d{world}")))
    out["lsw_replicated"] = error_text(lambda: reshard.save(
        {"t": _lsw_replicated(full(), world)}, os.path.join(root, f"lsw_replicated{world}")))
    for name, make in hostile_save_cases(rank, world).items():
        path = os.path.join(root, f"hostile_{name}{world}")
        out[f"hostile_{name}"] = error_text(lambda m=make, p=path: reshard.save({"t": m()}, p))
        dist.barrier()
        out[f"hostile_{name}_nothing_written"] = str(not os.path.exists(path)
                                                     or not os.listdir(path))
    out.update(dcp_world(rank, world, root))
    return out


# Load side: every checkpoint saved above, into destinations of this world


def _destinations(rank: int, world: int, meshes: tuple[Any, Any],
                  ) -> dict[str, tuple[Any, Callable[[], torch.Tensor]]]:
    """name -> (leaf, what its shards hold as a global tensor, NaN where they hold nothing)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    mesh, mesh2 = meshes
    out: dict[str, tuple[Any, Callable[[], torch.Tensor]]] = {}
    plain = torch.zeros(SHAPE)
    out["plain"] = (plain, lambda: plain)

    dt = distribute_tensor(torch.zeros(SHAPE), mesh, [Shard(1)])
    out["dtensor_cols"] = (dt, lambda: dt.full_tensor())
    # Uneven columns and rows on the 2-D mesh: 8 columns over the ranks, transposed local.
    dt2 = distribute_tensor(torch.zeros(SHAPE), mesh2, [Shard(0), Shard(1)])
    out["dtensor_2d"] = (dt2, lambda: dt2.full_tensor())

    # Column strips j % world == rank of a column-major buffer, as non-contiguous views,
    # listed in reverse order.
    buf = torch.full(SHAPE, float("nan")).t().contiguous().t()
    cols = [j for j in range(8) if j % world == rank][::-1]
    proto = BoxTensor([((0, j), buf[:, j:j + 1]) for j in cols])
    out["proto_strips"] = (proto, lambda: buf)

    # Row blocks of 2x4 on a (1, world) mesh: replicated on dim 0 of the mesh, each rank
    # its rows of dim 0 in LocalShardsWrapper shards, with an empty shard.
    off, n = _rows(rank, world)
    lbuf = torch.full(SHAPE, float("nan"))
    shards, offsets = [], []
    for r in range(off, off + n, 2):
        for c in (4, 0):
            k = min(2, off + n - r)
            shards.append(torch.full((k, 4), -1.0))
            offsets.append((r, c))
    shards.append(torch.zeros(0, 0))
    offsets.append((off, 0))
    lsw = LocalShardsWrapper(shards, offsets)
    ldt = DTensor.from_local(lsw, mesh2, [Replicate(), Shard(0)], run_check=False,
                             shape=torch.Size(SHAPE), stride=(8, 1))

    def lsw_held() -> torch.Tensor:
        for (r, c), t in zip(offsets, shards):
            lbuf[r:r + t.shape[0], c:c + t.shape[1]] = t
        return lbuf
    out["lsw_blocks"] = (ldt, lsw_held)
    return out


def _gone(i: int, index: Any) -> Any:
    raise KeyError(f"shard {i} is gone")


def load_world(rank: int, world: int, root: str, saved_in: int) -> dict[str, str]:
    out: dict[str, str] = {}
    want = full()
    # The DCP checkpoints of the same objects too (read by reshard directly); not the one
    # DCP itself saves broken (see the test).
    names = [*save_cases(0, saved_in), "lsw_2d", "lsw_replicated",
             *(f"dcp_{n}" for n in save_cases(0, saved_in) if n != "out_of_order_zero")]
    # Each checkpoint into each destination, then again with cooperative reads (each
    # byte read once and sent to the ranks that need it).
    from torch.distributed.device_mesh import init_device_mesh

    meshes = (init_device_mesh("cpu", (world,)),
              init_device_mesh("cpu", (1, world), mesh_dim_names=("a", "b")))
    runs = [(ck, dest, exchange) for exchange in (False, True) for ck in names
            for dest in _destinations(rank, world, meshes)]
    for ck, dest_name, exchange in runs:
        os.environ.update({"RESHARD_EXCHANGE_READS": str(int(exchange)),
                           "RESHARD_EXCHANGE_MIN_NBYTES": "1"})
        leaf, held = _destinations(rank, world, meshes)[dest_name]

        def check(leaf: Any = leaf, held: Callable[[], torch.Tensor] = held,
                  ck: str = ck) -> None:
            reshard.load({"t": leaf}, os.path.join(root, f"{ck}{saved_in}"))
            got = held()
            mask = ~torch.isnan(got)
            assert mask.any(), "this rank's destination holds nothing"
            assert torch.equal(got[mask], want[mask]), got.tolist()
        out[f"{ck}->{dest_name}{' exchange' if exchange else ''}"] = error_text(check)
    os.environ["RESHARD_EXCHANGE_READS"] = "0"
    # Hostile destinations, on one rank only: every rank must refuse by key.
    last = rank == world - 1
    path = os.path.join(root, f"replicated{saved_in}")
    src = torch.zeros(SHAPE)
    hostile: dict[str, Any] = {
        "outside": BoxTensor([((4, 0), torch.zeros(3, 8))]) if last else torch.zeros(SHAPE),
        "wrong_ndim": BoxTensor([((0,), torch.zeros(48))]) if last else torch.zeros(SHAPE),
        "meta": BoxTensor([((0, 0), torch.empty(SHAPE, device="meta"))]) if last else src,
        "overlapping_strides": BoxTensor(
            [((0, 0), torch.zeros(60).as_strided(SHAPE, (2, 1)))]) if last else src,
        "raises": BoxTensor([((0, 0), torch.zeros(SHAPE))], shard=_gone) if last else src,
    }
    for name, leaf in hostile.items():
        out[f"hostile_load_{name}"] = error_text(lambda x=leaf: reshard.load({"t": x}, path))
    # The save cases in this world too (other chunk counts per rank), read back whole.
    for name, make in save_cases(rank, world).items():
        def round_trip(make: Callable[[], Any] = make, name: str = name) -> None:
            here = os.path.join(root, f"{name}{world}")
            reshard.save({"t": make()}, here)
            sd = {"t": torch.zeros(SHAPE)}
            reshard.load(sd, here)
            assert torch.equal(sd["t"], want), sd["t"].tolist()
        out[f"{name}@{world}"] = error_text(round_trip)
    return out


def dcp_world(rank: int, world: int, root: str) -> dict[str, str]:
    """The same protocol objects through DCP itself: what it does with them, and whether
    reshard reads the DCP checkpoint back to the same values."""
    import torch.distributed.checkpoint as dcp

    out: dict[str, str] = {}
    for name, make in save_cases(rank, world).items():
        path = os.path.join(root, f"dcp_{name}{world}")
        out[f"dcp_save_{name}"] = error_text(lambda m=make, p=path: dcp.save({"t": m()},
                                                                          checkpoint_id=p))

        def back(path: str = path) -> None:
            sd = {"t": torch.zeros(SHAPE)}
            reshard.load(sd, path)
            assert torch.equal(sd["t"], full()), sd["t"].tolist()
        out[f"dcp_then_reshard_{name}"] = error_text(back)
    return out
