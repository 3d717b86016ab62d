"""Layouts for the scenario tests: how one rank holds its part of a global tensor.

A layout builds, for one rank, either the leaf a rank saves (filled from the global
tensor) or the leaf a rank loads into (filled with a sentinel), and checks a loaded
leaf element by element against the global tensor. The expected local part of a mesh
layout is computed independently of reshard and of DTensor's own shard math: nested
``torch.chunk`` of a global *index* tensor, the semantics DTensor documents.

Layouts (``world`` = number of ranks; 1 means the pytest process itself, no dist):
- ``Mesh("2x2", "S0,R")``: a DTensor on a device mesh with those placements;
  ``SS0/2`` is ``_StridedShard(0, split_factor=2)`` (FSDP2 over tensor parallelism).
- ``Full(world)``: a plain tensor holding the whole global tensor on every rank.
- ``Rows(kind, ((off, len), ...) per rank)``: explicit row ranges on tensor dim 0:
  ``proto`` a tensor subclass implementing DCP's checkpointable protocol, ``object``
  a plain object implementing it,
  ``lsw`` a DTensor over a LocalShardsWrapper, ``sharded`` a legacy ShardedTensor
  (FSDP1 sharded state dicts, TorchRec), ``from_local`` a DTensor built with
  ``DTensor.from_local(..., shape=, stride=)`` (one range per rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

SENTINEL = -3  # never a value of the arange-filled global tensors


# Global tensors


def global_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Distinct values in every element (as far as the dtype can hold them exactly)."""
    n = math.prod(shape)
    values = torch.arange(n, dtype=torch.int64) + seed
    exact = {torch.bfloat16: 256, torch.float16: 2048, torch.int8: 127, torch.uint8: 255,
             torch.bool: 2}
    if dtype in exact:
        values = values % exact[dtype]
    return values.to(dtype).reshape(shape)


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        stride[d] = stride[d + 1] * shape[d + 1]
    return tuple(stride)


# Layouts


def torch_placements(text: str) -> list[Any]:
    """DTensor placements of ``"S0,R,SS1/2"`` (``SSd/f``: ``_StridedShard(d, split_factor=f)``)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    out: list[Any] = []
    for p in text.split(","):
        if p == "R":
            out.append(Replicate())
        elif p.startswith("SS"):
            d, f = p[2:].split("/")
            out.append(_StridedShard(int(d), split_factor=int(f)))
        else:
            out.append(Shard(int(p[1:])))
    return out


@dataclass(frozen=True)
class Mesh:
    mesh: str  # "4", "2x2", "2x1x2"
    placements: str  # "S0,R"
    strided: bool = False  # the local tensor is a non-contiguous view


    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.mesh.split("x"))

    @property
    def world(self) -> int:
        return math.prod(self.mesh_shape)

    def torch_placements(self) -> list[Any]:
        return torch_placements(self.placements)

    def __str__(self) -> str:
        return f"mesh{self.mesh}[{self.placements}]" + ("strided" if self.strided else "")


@dataclass(frozen=True)
class Full:
    world: int

    def __str__(self) -> str:
        return f"full@{self.world}"


@dataclass(frozen=True)
class Rows:
    kind: str  # "proto" | "object" | "lsw" | "sharded" | "from_local"
    rows: tuple[tuple[tuple[int, int], ...], ...]  # per rank: (offset, length) on dim 0

    @property
    def world(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        return f"{self.kind}{[list(r) for r in self.rows]}"


Layout = Mesh | Full | Rows


def rows(kind: str, *per_rank: list[tuple[int, int]]) -> Rows:
    return Rows(kind, tuple(tuple(r) for r in per_rank))


def chunk_rows(kind: str, counts: tuple[int, ...]) -> Rows:
    """One contiguous range per rank with the given row counts."""
    out, off = [], 0
    for c in counts:
        out.append([(off, c)])
        off += c
    return rows(kind, *out)


# DCP's checkpointable protocol, as a tensor subclass and as a plain object


class _RowProtocol:
    """The protocol over ``_pieces``: ``(row_offset, tensor)`` row ranges of a global
    tensor of ``_global_shape`` and ``_global_dtype``; empty pieces are allowed."""

    _pieces: list[tuple[int, torch.Tensor]]
    _global_shape: tuple[int, ...]
    _global_dtype: torch.dtype

    def _chunks(self) -> list[Any]:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

        rest = self._global_shape[1:]
        return [ChunkStorageMetadata(offsets=torch.Size((off,) + (0,) * len(rest)),
                                     sizes=torch.Size(t.shape)) for off, t in self._pieces]

    def __create_write_items__(self, fqn: str, obj: Any) -> list[Any]:
        from torch.distributed.checkpoint.metadata import MetadataIndex, TensorProperties
        from torch.distributed.checkpoint.planner import (
            TensorWriteData,
            WriteItem,
            WriteItemType,
        )

        return [
            WriteItem(
                index=MetadataIndex(fqn, chunk.offsets, i), type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=chunk, properties=TensorProperties(dtype=self._global_dtype),
                    size=torch.Size(self._global_shape)),
            )
            for i, chunk in enumerate(self._chunks())
        ]

    def __create_chunk_list__(self) -> list[Any]:
        return self._chunks()

    def __get_tensor_shard__(self, index: Any) -> torch.Tensor:
        if index.index is not None and index.index < len(self._pieces):
            off, t = self._pieces[index.index]
            if off == index.offset[0]:
                return t
        for off, t in self._pieces:
            if off == index.offset[0] and t.numel():
                return t
        raise ValueError(f"no shard at {index.offset} for {index.fqn}")


class RowShardTensor(_RowProtocol, torch.Tensor):
    """A wrapper tensor subclass of the global shape; a rank may hold no piece at all."""

    @staticmethod
    def __new__(cls, shape: tuple[int, ...], dtype: torch.dtype,
                pieces: list[tuple[int, torch.Tensor]]) -> RowShardTensor:
        r = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype)
        r._pieces, r._global_shape, r._global_dtype = pieces, tuple(shape), dtype
        return r

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError(f"RowShardTensor does not support {func}")

    def __repr__(self) -> str:  # type: ignore[override]
        return f"RowShardTensor({list(self.shape)}, pieces at {[o for o, _ in self._pieces]})"


class RowShardObject(_RowProtocol):
    """A plain object (no tensor) speaking only the protocol; every rank describes at
    least one piece, possibly an empty one, since write items are all it has."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype,
                 pieces: list[tuple[int, torch.Tensor]]) -> None:
        self._pieces, self._global_shape, self._global_dtype = pieces, tuple(shape), dtype


# Building leaves


class Meshes:
    """Device meshes created once per shape, in the same order on every rank."""

    def __init__(self) -> None:
        self._meshes: dict[tuple[int, ...], Any] = {}

    def get(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._meshes:
            from torch.distributed.device_mesh import init_device_mesh

            names = tuple(f"d{i}" for i in range(len(shape)))
            self._meshes[shape] = init_device_mesh("cpu", shape, mesh_dim_names=names)
        return self._meshes[shape]


def mesh_local_index(shape: tuple[int, ...], layout: Mesh, coord: list[int]) -> torch.Tensor:
    """Flat global indices of this coordinate's shard: nested torch.chunk, mesh-dim order.
    A strided shard ``SSd/f`` cuts dim d into f chunks, takes its chunk of each and
    joins them (right-to-left sharding, as ``_StridedShard`` documents)."""
    idx = torch.arange(math.prod(shape)).reshape(shape)
    for mesh_dim, p in enumerate(layout.placements.split(",")):
        if p == "R":
            continue
        n, c = layout.mesh_shape[mesh_dim], coord[mesh_dim]
        if p.startswith("SS"):
            d, f = (int(x) for x in p[2:].split("/"))
            idx = torch.cat([_chunk(part, n, d, c) for part in _chunks(idx, f, d)], dim=d)
        else:
            idx = _chunk(idx, n, int(p[1:]), c)
    return idx


def _chunks(t: torch.Tensor, n: int, d: int) -> list[torch.Tensor]:
    """``torch.chunk`` padded with empty parts to ``n``."""
    parts = list(torch.chunk(t, n, dim=d)) if t.shape[d] else []
    return parts + [t.narrow(d, 0, 0)] * (n - len(parts))


def _chunk(t: torch.Tensor, n: int, d: int, c: int) -> torch.Tensor:
    return _chunks(t, n, d)[c]


def _pieces(layout: Rows, rank: int, source: torch.Tensor | None,
            shape: tuple[int, ...], dtype: torch.dtype) -> list[tuple[int, torch.Tensor]]:
    out = []
    for off, n in layout.rows[rank]:
        if source is not None:
            t = source[off:off + n].clone()
        else:
            t = torch.full((n,) + tuple(shape[1:]), SENTINEL, dtype=dtype)
        out.append((off, t))
    return out


def build(layout: Layout, shape: tuple[int, ...], dtype: torch.dtype, rank: int, meshes: Meshes | None,
          source: torch.Tensor | None) -> Any:
    """This rank's leaf: filled from ``source`` (the global tensor) or with SENTINEL."""
    if isinstance(layout, Full):
        return source.clone() if source is not None else torch.full(shape, SENTINEL, dtype=dtype)
    from torch.distributed.tensor import DTensor

    if isinstance(layout, Mesh):
        assert meshes is not None
        mesh = meshes.get(layout.mesh_shape)
        idx = mesh_local_index(shape, layout, mesh.get_coordinate())
        local = (source.reshape(-1)[idx] if source is not None
                 else torch.full(idx.shape, SENTINEL, dtype=dtype))
        if layout.strided:  # every other element of a larger buffer: stride 2 on the last dim
            local = torch.zeros((*local.shape, 2), dtype=dtype)[..., 0].copy_(local)
        return DTensor.from_local(local, mesh, layout.torch_placements(), run_check=False,
                                  shape=torch.Size(shape), stride=contiguous_stride(shape))
    return rows_leaf(layout, shape, dtype, _pieces(layout, rank, source, shape, dtype), meshes)


def rows_leaf(layout: Rows, shape: tuple[int, ...], dtype: torch.dtype,
              pieces: list[tuple[int, torch.Tensor]], meshes: Meshes | None) -> Any:
    """The leaf of a row layout that holds ``pieces`` (dim-0 offset, tensor) on this rank."""
    if layout.kind == "proto":
        return RowShardTensor(shape, dtype, pieces)
    if layout.kind == "object":
        return RowShardObject(shape, dtype, pieces)
    if layout.kind == "sharded":
        return _sharded_tensor(shape, pieces)
    from torch.distributed.tensor import DTensor, Shard

    stride = contiguous_stride(shape)
    assert meshes is not None
    mesh = meshes.get((layout.world,))
    if layout.kind == "from_local":
        (off, local), = pieces
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                                  shape=torch.Size(shape), stride=stride)
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    offsets = [(off,) + (0,) * (len(shape) - 1) for off, _ in pieces]
    lsw = LocalShardsWrapper([t for _, t in pieces], offsets)
    return DTensor.from_local(lsw, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape),
                              stride=stride)


def _sharded_tensor(shape: tuple[int, ...], pieces: list[tuple[int, torch.Tensor]]) -> Any:
    """A legacy ShardedTensor holding ``pieces`` (a collective: every rank calls it)."""
    import torch.distributed as dist
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard as LocalShard
    from torch.distributed._shard.sharded_tensor import init_from_local_shards

    rank = dist.get_rank()
    shards = [LocalShard(t, ShardMetadata(shard_offsets=[off] + [0] * (len(shape) - 1),
                                          shard_sizes=list(t.shape), placement=f"rank:{rank}/cpu"))
              for off, t in pieces]
    return init_from_local_shards(shards, list(shape))


# Checking loaded leaves


def _diff(name: str, got: torch.Tensor, want: torch.Tensor) -> list[str]:
    if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
        return [f"{name}: got {got.dtype} {list(got.shape)}, want {want.dtype} {list(want.shape)}"]
    if torch.equal(got, want):
        return []
    bad = (got != want).nonzero().tolist()
    return [f"{name}: {len(bad)} of {want.numel()} elements differ, first at {bad[0]}: "
            f"got {got[tuple(bad[0])].item()}, want {want[tuple(bad[0])].item()}"]


def local_parts(layout: Layout, leaf: Any, shape: tuple[int, ...],
                meshes: Meshes | None) -> list[tuple[str, torch.Tensor, Any]]:
    """(where, loaded tensor, global index selecting its expected values) per held part."""
    if isinstance(layout, Full):
        return [("full", leaf, slice(None))]
    if isinstance(layout, Mesh):
        idx = mesh_local_index(shape, layout, leaf.device_mesh.get_coordinate())
        return [(f"local{leaf.device_mesh.get_coordinate()}", leaf.to_local(), ("flat", idx))]
    if layout.kind in ("proto", "object"):
        pieces = leaf._pieces
    elif layout.kind == "sharded":
        pieces = [(int(s.metadata.shard_offsets[0]), s.tensor) for s in leaf.local_shards()]
    elif layout.kind == "from_local":
        (off, n), = layout.rows[leaf.device_mesh.get_rank()]
        pieces = [(off, leaf.to_local())]
    else:
        lsw = leaf._local_tensor
        pieces = [(int(o[0]), t) for o, t in zip(lsw.local_offsets(), lsw.local_shards())]
    return [(f"rows[{off}:{off + t.shape[0]}]", t, slice(off, off + t.shape[0])) for off, t in pieces]


def check(layout: Layout, leaf: Any, want: torch.Tensor, meshes: Meshes | None) -> list[str]:
    """Every element this rank holds equals the global tensor ``want`` there."""
    problems = []
    for where, got, sel in local_parts(layout, leaf, tuple(want.shape), meshes):
        expected = want.reshape(-1)[sel[1]] if isinstance(sel, tuple) else want[sel]
        problems += _diff(where, got, expected)
    return problems
