"""Box math against brute force: every claim checked element by element."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core.layout import (
    Box,
    c_strides,
    contains,
    element_span,
    full_box,
    intersect,
    placed_runs,
    run_boxes,
    shard_box,
    split_for_span,
    tiling_problem,
)

from ._strategies import boxes_in, cells, grid_tilings, shapes

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


def _flat(sizes: tuple[int, ...], local: tuple[int, ...]) -> int:
    return sum(i * s for i, s in zip(local, c_strides(sizes)))


@SETTINGS
@given(data=st.data())
def test_intersect_is_the_common_cells(data: st.DataObject) -> None:
    shape = data.draw(shapes())
    a, b = data.draw(boxes_in(shape)), data.draw(boxes_in(shape))
    got = intersect(a, b)
    common = cells(a) & cells(b)
    assert (got is None) == (not common)
    if got is not None:
        assert cells(got) == common
        assert contains(a, got) and contains(b, got)
        assert intersect(b, a) == got


@SETTINGS
@given(data=st.data())
def test_element_span_bounds_the_box(data: st.DataObject) -> None:
    outer = data.draw(shapes(min_dim=1))
    inner = data.draw(boxes_in(outer, nonempty=True))
    lo, hi = element_span(outer, inner)
    flat = [_flat(outer, c) for c in cells(inner)]
    assert (lo, hi) == (min(flat), max(flat) + 1)


@SETTINGS
@given(data=st.data(), max_elements=st.integers(1, 40))
def test_split_for_span_partitions_within_the_limit(data: st.DataObject, max_elements: int) -> None:
    outer = data.draw(shapes(max_dim=6, min_dim=1))
    inner = data.draw(boxes_in(outer, nonempty=True))
    pieces = split_for_span(outer, inner, max_elements)
    seen: set[tuple[int, ...]] = set()
    for p in pieces:
        c = cells(p)
        assert c and not (c & seen), "pieces overlap or are empty"
        seen |= c
        lo, hi = element_span(outer, p)
        assert hi - lo <= max_elements or p.numel == 1
    assert seen == cells(inner)


@SETTINGS
@given(data=st.data())
def test_tiling_problem_matches_brute_force(data: st.DataObject) -> None:
    shape = data.draw(shapes(max_dim=5))
    if data.draw(st.booleans()):
        boxes = data.draw(grid_tilings(shape))
        if boxes and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(boxes) - 1))
            boxes[i] = data.draw(boxes_in(shape))  # break it (or not)
    else:
        boxes = data.draw(st.lists(boxes_in(shape), max_size=5))
    counts: dict[tuple[int, ...], int] = {}
    for b in {b for b in boxes if not b.is_empty}:
        for c in cells(b):
            counts[c] = counts.get(c, 0) + 1
    everything = cells(full_box(shape))
    tiles = set(counts) == everything and all(v == 1 for v in counts.values())
    assert (tiling_problem(shape, boxes) is None) == tiles


def test_tiling_problem_names_the_fault() -> None:
    assert "overlap" in tiling_problem((4,), [Box((0,), (3,)), Box((2,), (2,))])  # type: ignore[operator]
    assert "holes" in tiling_problem((4,), [Box((0,), (1,)), Box((2,), (2,))])  # type: ignore[operator]
    assert "outside" in tiling_problem((4,), [Box((0,), (5,))])  # type: ignore[operator]
    assert "dims" in tiling_problem((4, 1), [Box((0,), (4,))])  # type: ignore[operator]
    assert tiling_problem((0, 3), []) is None and tiling_problem((), [Box((), ())]) is None


def _chunk_semantics(n: int, parts: int, k: int) -> tuple[int, int]:
    """(offset, size) of piece ``k`` of a dim of size ``n`` split like torch.chunk, where ranks
    past the last chunk hold nothing (as DTensor pads them)."""
    import torch

    pieces = torch.chunk(torch.arange(n), parts) if n else ()
    if k < len(pieces) and len(pieces[k]):
        return int(pieces[k][0]), len(pieces[k])
    return -1, 0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data())
def test_shard_box_follows_torch_chunk(data: st.DataObject) -> None:
    pytest.importorskip("torch")
    shape = data.draw(shapes(max_ndim=3, max_dim=9))
    mesh = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    placements = [data.draw(st.sampled_from([("replicate", -1)] + [("shard", d) for d in range(len(shape))]))
                  for _ in mesh]
    coord = tuple(data.draw(st.integers(0, m - 1)) for m in mesh)
    box = shard_box(shape, mesh, placements, coord)
    # Apply torch.chunk mesh dim by mesh dim, as DTensor nests shards on the same tensor dim.
    offsets, sizes = [0] * len(shape), list(shape)
    for (kind, d), m, c in zip(placements, mesh, coord):
        if kind == "shard":
            off, size = _chunk_semantics(sizes[d], m, c)
            offsets[d], sizes[d] = (offsets[d] + off if size else offsets[d]), size
    assert box.sizes == tuple(sizes)
    if not box.is_empty:
        assert box.offsets == tuple(offsets)


def _index_lists(shape: tuple[int, ...], mesh: tuple[int, ...],
                 placements: list[tuple[str, int, int]], coord: tuple[int, ...]) -> list[list[int]]:
    """Global indices per dim by plain list slicing: a shard takes its ``torch.chunk``
    part; a strided shard takes its part of each of ``split`` chunks, joined."""
    def part(xs: list[int], n: int, c: int) -> list[int]:
        full = -(-len(xs) // n)
        return xs[full * c:full * (c + 1)]

    idx = [list(range(n)) for n in shape]
    for (kind, d, split), n, c in zip(placements, mesh, coord):
        if kind == "shard":
            idx[d] = part(idx[d], n, c)
        elif kind == "strided_shard":
            full = -(-len(idx[d]) // split)
            idx[d] = [i for j in range(split) for i in part(idx[d][full * j:full * (j + 1)], n, c)]
    return idx


@SETTINGS
@given(data=st.data())
def test_placed_runs_are_the_indices_a_coordinate_holds(data: st.DataObject) -> None:
    shape = data.draw(shapes(max_ndim=3, max_dim=13))
    mesh = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    per_dim = [("shard", 1)] + [("strided_shard", f) for f in (1, 2, 3, 5)]
    kinds = [("replicate", -1, 1)] + [(k, d, f) for d in range(len(shape)) for k, f in per_dim]
    placements = [data.draw(st.sampled_from(kinds)) for _ in mesh]
    coords = list(itertools.product(*[range(m) for m in mesh]))
    held = []
    for coord in coords:
        runs = placed_runs(shape, mesh, placements, coord)
        want = _index_lists(shape, mesh, placements, coord)
        assert [[g + i for g, k in r for i in range(k)] for r in runs] == want
        # runs are maximal and the boxes sit where the local tensor holds them
        for r in runs:
            assert all(a[0] + a[1] != b[0] for a, b in zip(r, r[1:]))
        for box, at in run_boxes(runs):
            for d in range(len(shape)):
                assert want[d][at[d]:at[d] + box.sizes[d]] == list(
                    range(box.offsets[d], box.offsets[d] + box.sizes[d]))
        held += [b for b, _ in run_boxes(runs)]
    assert tiling_problem(shape, held) is None  # replicas repeat boxes, never overlap them


def test_placed_runs_examples() -> None:
    # FSDP2 over TP: [_StridedShard(0, 2), Shard(0)] of 8 rows on (dp=2, tp=2).
    fsdp_tp = [("strided_shard", 0, 2), ("shard", 0, 1)]
    assert [placed_runs((8,), (2, 2), fsdp_tp, c) for c in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [
        (((0, 2),),), (((4, 2),),), (((2, 2),),), (((6, 2),),)]
    # [Shard(0), _StridedShard(0, 2)]: rows 0 and 2 on (0, 0), two boxes.
    runs = placed_runs((8, 3), (2, 2), [("shard", 0, 1), ("strided_shard", 0, 2)], (0, 0))
    assert runs == (((0, 1), (2, 1)), ((0, 3),))
    assert run_boxes(runs) == [(Box((0, 0), (1, 3)), (0, 0)), (Box((2, 0), (1, 3)), (1, 0))]
    # nothing left on a dim: one empty run at its end
    assert placed_runs((1, 2), (4,), [("shard", 0, 1)], (3,)) == (((1, 0),), ((0, 2),))
    with pytest.raises(ValueError, match="unknown placement"):
        placed_runs((4,), (2,), [("partial", 0, 1)], (0,))


def test_shard_box_examples() -> None:
    # 14 rows over 4 ranks: 4, 4, 4, 2. 1 row over 4: only rank 0 holds it.
    assert [shard_box((14,), (4,), [("shard", 0)], (r,)).sizes for r in range(4)] == [(4,), (4,), (4,), (2,)]
    assert [shard_box((1,), (4,), [("shard", 0)], (r,)).sizes for r in range(4)] == [(1,), (0,), (0,), (0,)]
    # (2, 2) mesh, [Shard(0), Shard(0)] of 8 rows: rank (1, 0) holds rows 4-5.
    assert shard_box((8, 3), (2, 2), [("shard", 0), ("shard", 0)], (1, 0)) == Box((4, 0), (2, 3))
    # every coordinate of a mesh together tiles the tensor
    for shape, mesh, pl in [((7, 5), (2, 3), [("shard", 0), ("shard", 1)]),
                            ((5,), (2, 2), [("shard", 0), ("shard", 0)]),
                            ((3, 4), (2, 2), [("replicate", -1), ("shard", 1)])]:
        boxes = [shard_box(shape, mesh, pl, c) for c in itertools.product(*[range(m) for m in mesh])]
        assert tiling_problem(shape, boxes) is None


def test_tiling_check_of_a_staggered_layout_is_fast() -> None:
    """Bricks offset by one row in every other column (5025 boxes) tile the tensor; checking
    that took 30 s when overlapping-interval clusters were compared pair by pair."""
    import time

    boxes = []
    for c in range(50):
        o = 0
        if c % 2:
            boxes.append(Box((0, c), (1, 1)))
            o = 1
        while o < 200:
            boxes.append(Box((o, c), (min(2, 200 - o), 1)))
            o += 2
    start = time.perf_counter()
    assert tiling_problem((200, 50), boxes) is None
    boxes.append(Box((4, 7), (2, 1)))  # one brick overlapping two others
    assert "overlap" in (tiling_problem((200, 50), boxes) or "")
    assert time.perf_counter() - start < 15
