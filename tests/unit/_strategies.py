"""Hypothesis strategies for boxes, tilings and manifests (pure: no torch)."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from reshard.core.layout import Box


@st.composite
def shapes(draw: st.DrawFn, *, max_ndim: int = 3, max_dim: int = 7, min_dim: int = 0) -> tuple[int, ...]:
    ndim = draw(st.integers(1, max_ndim))
    return tuple(draw(st.integers(min_dim, max_dim)) for _ in range(ndim))


@st.composite
def boxes_in(draw: st.DrawFn, shape: tuple[int, ...], *, nonempty: bool = False) -> Box:
    offsets, sizes = [], []
    for n in shape:
        lo = draw(st.integers(0, max(0, n - (1 if nonempty else 0))))
        hi = draw(st.integers(min(n, lo + (1 if nonempty else 0)), n))
        offsets.append(lo)
        sizes.append(hi - lo)
    return Box(tuple(offsets), tuple(sizes))


@st.composite
def grid_tilings(draw: st.DrawFn, shape: tuple[int, ...]) -> list[Box]:
    """A tiling of ``shape`` by a grid of cuts (uneven, possibly one cell per dim)."""
    cuts = []
    for n in shape:
        inner = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=3))) if n > 1 else []
        cuts.append([0, *[c for c in inner if 0 < c < n], n])
    out = []
    for cell in itertools.product(*[list(zip(c[:-1], c[1:])) for c in cuts]):
        out.append(Box(tuple(a for a, _ in cell), tuple(b - a for a, b in cell)))
    return [b for b in out if not b.is_empty]


def cells(box: Box) -> set[tuple[int, ...]]:
    """Every global index in ``box``."""
    return set(itertools.product(*[range(o, o + s) for o, s in zip(box.offsets, box.sizes)]))
