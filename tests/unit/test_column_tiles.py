"""layout.column_tiles (save's column_blocks) against brute force: the tiles of a box
are disjoint, cover it exactly, cut dim 1 as torch.chunk does, cut dim 0 into even runs
of at most ``tile_nbytes`` (one row when a row is larger), and the box comes back whole
in the documented cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core.layout import Box, column_tiles

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


@st.composite
def _boxes(draw: st.DrawFn, *, min_ndim: int = 2, max_ndim: int = 4) -> Box:
    ndim = draw(st.integers(min_ndim, max_ndim))
    sizes = [draw(st.integers(1, 40)) for _ in range(min(ndim, 2))]
    sizes += [draw(st.integers(1, 4)) for _ in range(ndim - 2)]
    offsets = [draw(st.integers(0, 100)) for _ in range(ndim)]
    return Box(tuple(offsets), tuple(sizes))


def _torch_chunk_cuts(n: int, k: int) -> list[tuple[int, int]]:
    """(start, width) of torch.chunk(arange(n), k), from torch itself."""
    torch = pytest.importorskip("torch")
    return [(int(p[0]), len(p)) for p in torch.chunk(torch.arange(n), k)]


def _coverage(box: Box, tiles: list[Box]) -> np.ndarray:
    """How many tiles cover each element of ``box`` (tiles outside it fail)."""
    count = np.zeros(box.sizes, dtype=np.int64)
    for t in tiles:
        assert t.ndim == box.ndim, (t, box)
        rel = t.relative_to(box)
        assert all(o >= 0 for o in rel.offsets), (t, box)
        assert all(o + s <= n for o, s, n in zip(rel.offsets, rel.sizes, box.sizes)), (t, box)
        assert not t.is_empty, t
        count[rel.slices()] += 1
    return count


@SETTINGS
@given(box=_boxes(), itemsize=st.sampled_from([1, 2, 4, 8, 16]),
       blocks=st.integers(1, 50), tile_nbytes=st.integers(1, 4000))
def test_tiles_partition_the_box(box: Box, itemsize: int, blocks: int, tile_nbytes: int) -> None:
    tiles = column_tiles(box, itemsize, blocks, tile_nbytes)
    count = _coverage(box, tiles)
    assert (count == 1).all(), f"tiles {tiles} cover {box} {np.unique(count)} times"
    assert sum(t.numel for t in tiles) == box.numel
    # Every dim after 1 stays whole: a tile is whole rows of its block.
    for t in tiles:
        assert t.offsets[2:] == box.offsets[2:] and t.sizes[2:] == box.sizes[2:]


@SETTINGS
@given(box=_boxes(), itemsize=st.sampled_from([1, 2, 4, 8, 16]),
       blocks=st.integers(2, 50), tile_nbytes=st.integers(1, 4000))
def test_dim1_cuts_follow_torch_chunk(box: Box, itemsize: int, blocks: int, tile_nbytes: int) -> None:
    tiles = column_tiles(box, itemsize, blocks, tile_nbytes)
    if tiles == [box]:
        # Only when there is a single part and it fits one tile (or is one row).
        assert len(_torch_chunk_cuts(box.sizes[1], blocks)) == 1
        assert box.numel * itemsize <= tile_nbytes or box.sizes[0] == 1
        return
    want = _torch_chunk_cuts(box.sizes[1], blocks)
    got = sorted({(t.offsets[1] - box.offsets[1], t.sizes[1]) for t in tiles})
    assert got == want, (box, blocks)


@SETTINGS
@given(box=_boxes(), itemsize=st.sampled_from([1, 2, 4, 8, 16]),
       blocks=st.integers(1, 50), tile_nbytes=st.integers(1, 4000))
def test_rows_are_even_runs_within_the_tile_size(
    box: Box, itemsize: int, blocks: int, tile_nbytes: int
) -> None:
    tiles = column_tiles(box, itemsize, blocks, tile_nbytes)
    if blocks <= 1 or tiles == [box]:
        return
    inner = math.prod(box.sizes[2:]) * itemsize
    by_block: dict[tuple[int, int], list[Box]] = {}
    for t in tiles:
        by_block.setdefault((t.offsets[1], t.sizes[1]), []).append(t)
    widest = max(width for _, width in by_block) * inner
    per_tile = max(1, tile_nbytes // widest)
    cuts = set()
    for run in by_block.values():
        rows = [t.sizes[0] for t in run]
        assert sum(rows) == box.sizes[0]
        # About tile_nbytes each, and no more unless one row alone is larger.
        for t in run:
            assert t.numel * itemsize <= max(tile_nbytes, widest), (t, tile_nbytes)
        # As few runs as the size allows, of even lengths (the last at most a row shorter).
        assert len(run) == -(-box.sizes[0] // per_tile), (rows, per_tile)
        assert max(rows) - min(rows) <= 1, rows
        cuts.add(tuple((t.offsets[0], t.sizes[0]) for t in run))
    # Every part has the same row cuts: the tiles form a grid.
    assert len(cuts) == 1, cuts


@SETTINGS
@given(box=_boxes(min_ndim=1, max_ndim=4), itemsize=st.sampled_from([1, 2, 4, 8]),
       blocks=st.integers(1, 8), tile_nbytes=st.integers(1, 4000))
def test_box_comes_back_whole_only_in_the_documented_cases(
    box: Box, itemsize: int, blocks: int, tile_nbytes: int
) -> None:
    tiles = column_tiles(box, itemsize, blocks, tile_nbytes)
    parts = 1 if box.ndim < 2 else len(_torch_chunk_cuts(box.sizes[1], blocks))
    # A single row cannot be cut along dim 0: it stays whole even when larger than a tile.
    whole = (box.ndim < 2 or blocks <= 1
             or (parts == 1 and (box.numel * itemsize <= tile_nbytes or box.sizes[0] == 1)))
    assert (tiles == [box]) == whole, (box, blocks, tile_nbytes, tiles)


def test_documented_whole_cases() -> None:
    big = 1 << 30
    assert column_tiles(Box((3,), (1000,)), 4, 4, 16) == [Box((3,), (1000,))]  # one dim
    assert column_tiles(Box((0, 0), (0, 10)), 4, 4, 16) == [Box((0, 0), (0, 10))]  # empty
    assert column_tiles(Box((0, 0, 0), (5, 5, 0)), 4, 4, 16) == [Box((0, 0, 0), (5, 5, 0))]
    assert column_tiles(Box((0, 0), (10, 10)), 4, 1, 16) == [Box((0, 0), (10, 10))]  # blocks 1
    assert column_tiles(Box((0, 0), (10, 10)), 4, 0, 16) == [Box((0, 0), (10, 10))]
    assert column_tiles(Box((7, 0), (10, 1)), 4, 8, big) == [Box((7, 0), (10, 1))]  # one column


def test_examples() -> None:
    # 1001 columns in 3 blocks: torch.chunk widths 334, 334, 333; large tiles keep rows whole.
    tiles = column_tiles(Box((10, 0), (4, 1001)), 4, 3, 1 << 30)
    assert tiles == [Box((10, 0), (4, 334)), Box((10, 334), (4, 334)), Box((10, 668), (4, 333))]
    # 10 columns in 4 blocks: widths 3, 3, 3, 1.
    assert [t.sizes[1] for t in column_tiles(Box((0, 0), (2, 10)), 1, 4, 1 << 30)] == [3, 3, 3, 1]
    # 6 columns in 4 blocks: torch.chunk gives 3 parts of 2.
    assert [t.sizes[1] for t in column_tiles(Box((0, 0), (2, 6)), 1, 4, 1 << 30)] == [2, 2, 2]
    # More blocks than columns: one column each.
    assert [t.sizes[1] for t in column_tiles(Box((0, 0), (2, 3)), 1, 9, 1 << 30)] == [1, 1, 1]
    # 10 rows of 8 bytes per block, tiles of 24 bytes: 3 rows at most, 4 runs of 3, 3, 2, 2
    # (cutting 3 at a time left a last run of 1 row).
    tiles = column_tiles(Box((0, 0), (10, 4)), 4, 2, 24)
    assert [(t.offsets, t.sizes) for t in tiles if t.offsets[1] == 0] == [
        ((0, 0), (3, 2)), ((3, 0), (3, 2)), ((6, 0), (2, 2)), ((8, 0), (2, 2))]
    # A row larger than the tile: one row per tile.
    tiles = column_tiles(Box((0, 0), (3, 100)), 8, 2, 16)
    assert sorted(t.sizes for t in tiles) == [(1, 50)] * 6
    # One part (one column) larger than a tile is still cut along dim 0.
    tiles = column_tiles(Box((0, 0), (6, 1)), 4, 2, 8)
    assert [t.sizes for t in tiles] == [(2, 1)] * 3
