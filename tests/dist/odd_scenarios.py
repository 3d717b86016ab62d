"""Odd layouts for test_odd_resharding.py: world sizes 1, 2, 3 and 4 in both directions,
meshes with size-1 dims, two mesh dims sharding one tensor dim, empty and 0-d tensors,
0-sized dims, thin and wide tensors, every supported dtype, views as destinations,
several codecs and frame sizes that do not hold whole elements.

A scenario is one key: a shape, a dtype, a save layout (its world saves it) and a load
layout (its world loads it), and the codec configuration of the checkpoint holding it.
Values are a byte pattern distinct per element (for element sizes of 2 bytes and more)
and are compared bit for bit, so NaN patterns and float8 compare exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .layouts import Full, Layout, Mesh, Rows, rows

# Layouts beyond layouts.py


@dataclass(frozen=True)
class View:
    """A plain tensor holding the whole global tensor that is a view: ``t`` reversed dims
    of a contiguous buffer, ``slice`` an interior box of a larger buffer, ``step`` every
    other row of one."""

    world: int
    how: str

    def __str__(self) -> str:
        return f"view{self.how}@{self.world}"


@dataclass(frozen=True)
class MeshView:
    """A DTensor whose local tensor is such a view (``t`` or ``slice``)."""

    mesh: str
    placements: str
    how: str

    @property
    def base(self) -> Mesh:
        return Mesh(self.mesh, self.placements)

    @property
    def world(self) -> int:
        return self.base.world

    def __str__(self) -> str:
        return f"{self.base}view{self.how}"


AnyLayout = Layout | View | MeshView


def _fits(layout: AnyLayout, shape: tuple[int, ...]) -> bool:
    if isinstance(layout, (Mesh, MeshView)):
        return all(p == "R" or int(p[1:]) < len(shape) for p in layout.placements.split(","))
    if isinstance(layout, View):
        return len(shape) >= (1 if layout.how == "step" else 0)
    if isinstance(layout, Rows):
        return max((o + n for r in layout.rows for o, n in r), default=0) == shape[0]
    return True


# Values


DTYPES = [torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.float16, torch.bool,
          torch.int8, torch.int16, torch.int32, torch.float64, torch.complex64, torch.complex128,
          torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def pattern(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Every element's bytes distinct (as far as its width allows), never SENTINEL's."""
    n = math.prod(shape)
    v = torch.arange(n, dtype=torch.int64) * 3 + seed + 1
    if dtype == torch.bool:
        return (v % 3 == 0).reshape(shape)
    size = dtype.itemsize
    if size == 16:  # two int64 words per element
        words = torch.stack([v, -v - 7], dim=-1).reshape(-1)
        return words.view(dtype).reshape(shape)
    ints = v.to(_INT[size]) if size < 8 else v
    return ints.view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers (exact comparison, NaN payloads included)."""
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.dtype.is_complex:
        t = torch.view_as_real(t)
    return t.view(_INT[t.dtype.itemsize])


def sentinel(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Bytes 0xA7 (False for bool): what a destination holds before the load."""
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=torch.bool)
    n = math.prod(shape) * dtype.itemsize
    return torch.full((n,), 0xA7, dtype=torch.uint8).view(dtype).reshape(shape)


# Scenarios


@dataclass(frozen=True)
class Codec:
    tag: str
    codec: Any  # what reshard.save gets
    frame: int  # RESHARD_FRAME_RAW_NBYTES of the save


CODECS = [
    Codec("id7", None, 7), Codec("id1000", None, 1000), Codec("id4097", None, 4097),
    Codec("planes7", "zstd", 7), Codec("planes4097", "zstd", 4097),
    Codec("shuffle1000", "shuffle", 1000), Codec("zstd7", "plainzstd", 7),
    Codec("rot1000", "test-rot", 1000), Codec("id16", None, 16),
]


def codec_arg(c: Codec) -> Any:
    import reshard

    if c.codec == "shuffle":
        return reshard.ZstdCodec(planes=False)
    if c.codec == "plainzstd":
        return reshard.ZstdCodec(shuffle=False)
    return c.codec


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    save: AnyLayout
    load: AnyLayout
    codec: Codec


SHAPES: dict[str, tuple[int, ...]] = {
    "1": (1,), "2": (2,), "5": (5,), "0": (0,), "0d": (), "7x0": (7, 0), "0x3": (0, 3),
    "9x1": (9, 1), "1x9": (1, 9), "5x3x2": (5, 3, 2), "3x2x7": (3, 2, 7), "2x5": (2, 5),
    "13x6": (13, 6), "6x1x4": (6, 1, 4), "40x33": (40, 33),
}


def row_plan(kind: str, world: int, n: int, variant: int) -> Rows | None:
    """Row ranges of ``n`` rows over ``world`` ranks: several pieces on some ranks, none
    on one, uneven; None when ``n`` is too small to say anything new."""
    if n < 1:
        return None
    cuts = sorted({0, n} | {(n * k * (variant + 2)) // (2 * world + 1) % (n + 1)
                            for k in range(1, 2 * world)})
    pieces = list(zip(cuts[:-1], [b - a for a, b in zip(cuts[:-1], cuts[1:])]))
    per: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    empty = variant % world  # this rank holds nothing
    holders = [r for r in range(world) if r != empty] or [0]
    for i, p in enumerate(pieces):
        per[holders[(i * 7 + variant) % len(holders)]].append(p)
    if kind == "object":  # a plain object must describe the tensor: an empty piece
        per = [p or [(0, 0)] for p in per]
    return rows(kind, *per)


SOURCES: dict[int, list[AnyLayout]] = {
    4: [Mesh("4", "S0"), Mesh("1x4", "R,S0"), Mesh("4x1", "S0,S1"), Mesh("2x2", "S0,S0"),
        Mesh("2x1x2", "S2,R,S2"), Mesh("2x2", "S1,S0", strided=True), MeshView("2x2", "R,S0", "t"),
        Full(4)],
    3: [Mesh("3", "S0"), Mesh("3", "S1"), Mesh("1x3", "S0,S0"), Mesh("3x1", "S1,S0"),
        MeshView("3", "S0", "slice"), Full(3)],
    2: [Mesh("2", "S0"), Mesh("1x2", "S1,R"), Mesh("2x1", "S0,S0"), Mesh("2x1x1", "S2,S0,R"),
        View(2, "t")],
    1: [Full(1), View(1, "t"), View(1, "step")],
}
TARGETS: dict[int, list[AnyLayout]] = {
    4: [Mesh("1x4", "S0,S0"), Mesh("4x1", "S1,S1"), Mesh("2x1x2", "S0,R,S0"),
        Mesh("2x2", "S0,S0", strided=True), Mesh("4", "S2"), Mesh("1x1x4", "R,S1,S0"),
        MeshView("4", "S0", "slice"), MeshView("2x2", "S1,S0", "t"), View(4, "step"),
        Mesh("2x2", "R,R")],
    3: [Mesh("3", "S0"), Mesh("3", "S1"), Mesh("3", "R"), Mesh("1x3", "S1,S0"),
        Mesh("3x1", "S0,S0"), Mesh("3", "S2"), MeshView("3", "S0", "t"),
        MeshView("3x1", "S1,R", "slice"), View(3, "slice"), Full(3)],
    2: [Mesh("2", "S1"), Mesh("2x1", "R,S0"), Mesh("1x2", "S0,S0"), Mesh("2", "S2"),
        View(2, "step"), MeshView("2", "S0", "t"), MeshView("1x2", "R,R", "t")],
    1: [Full(1), View(1, "t"), View(1, "slice")],
}
# Row-plan kinds per world (proto needs no process group, lsw and object need one).
ROW_KINDS = {4: ("lsw", "proto", "object"), 3: ("lsw", "proto", "object"), 2: ("lsw", "proto"),
             1: ("proto",)}
TRANSITIONS = [(4, 3), (4, 2), (4, 4), (4, 1), (3, 2), (3, 4), (3, 3), (3, 1), (2, 3), (2, 4),
               (1, 3), (1, 4), (1, 2)]


def _layouts(table: dict[int, list[AnyLayout]], world: int, shape: tuple[int, ...],
             variant: int) -> list[AnyLayout]:
    out = [x for x in table[world] if _fits(x, shape)]
    if shape:
        for i, kind in enumerate(ROW_KINDS[world]):
            if kind == "lsw" and len(shape) > 2:  # torch's LocalShardsWrapper views need ndim <= 2
                continue
            plan = row_plan(kind, world, shape[0], variant + i)
            if plan is not None:
                out.append(plan)
    return out


def _build_table() -> list[Scenario]:
    out: list[Scenario] = []
    k = 0
    for sw, lw in TRANSITIONS:
        for si, (stag, shape) in enumerate(SHAPES.items()):
            srcs = _layouts(SOURCES, sw, shape, si)
            dsts = _layouts(TARGETS, lw, shape, si + 1)
            # Every source and every target at least once per shape, pairs rotating.
            n = max(len(srcs), len(dsts)) if srcs and dsts else 0
            for j in range(n):
                src, dst = srcs[j % len(srcs)], dsts[(j * 3 + si) % len(dsts)]
                dtype = DTYPES[k % len(DTYPES)]
                codec = CODECS[(k * 5 + sw) % len(CODECS)]
                name = f"{sw}to{lw}_{stag}_{k}_{src}_to_{dst}_{str(dtype)[6:]}_{codec.tag}"
                out.append(Scenario(name, shape, dtype, src, dst, codec))
                k += 1
    return out


SCENARIOS = _build_table()

