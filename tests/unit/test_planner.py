"""Save and read plans, checked element by element and frame by frame."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core.layout import Box, c_strides, element_span, intersect
from reshard.core.planner import TensorDesc, ValueDesc, plan_reads, plan_save
from reshard.errors import LayoutMismatchError
from reshard.format.manifest import IDENTITY, Chunk, Frame

from ._strategies import boxes_in, cells, grid_tilings, shapes

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


def _chunk(box: Box, itemsize: int, frame_raw: int) -> Chunk:
    raw = box.numel * itemsize
    frames = tuple(Frame(nbytes=min(frame_raw, raw - s), crc32c=0) for s in range(0, raw, frame_raw))
    return Chunk(box=box, file="data/x.bin", offset=0, nbytes=raw, raw_nbytes=raw, codec=IDENTITY,
                 frame_raw_nbytes=frame_raw, frames=frames)


def _local_cells(chunk: Box, raw_lo: int, raw_hi: int, itemsize: int) -> list[tuple[int, ...]]:
    """Global indices of the chunk's elements in raw bytes [raw_lo, raw_hi), in C order."""
    out = []
    strides = c_strides(chunk.sizes)
    for flat in range(raw_lo // itemsize, raw_hi // itemsize):
        idx = []
        for s, o in zip(strides, chunk.offsets):
            idx.append(o + flat // s)
            flat %= s
        out.append(tuple(idx))
    return out


@SETTINGS
@given(data=st.data(), itemsize=st.sampled_from([1, 2, 4, 8]), frame_raw=st.integers(1, 40),
       max_piece=st.integers(1, 200))
def test_plan_reads_covers_every_element_once_and_reads_only_needed_frames(
    data: st.DataObject, itemsize: int, frame_raw: int, max_piece: int
) -> None:
    shape = data.draw(shapes(max_dim=6, min_dim=1))
    tiling = data.draw(grid_tilings(shape))
    chunks = tuple(_chunk(b, itemsize, frame_raw) for b in tiling)
    dest = data.draw(boxes_in(shape))
    pieces = plan_reads(chunks, dest, itemsize, max_piece_nbytes=max_piece)
    written: dict[tuple[int, ...], int] = {}
    frames_read: list[tuple[int, int]] = []
    dest_strides = c_strides(dest.sizes)
    for p in pieces:
        chunk = chunks[p.chunk_index]
        assert 0 <= p.frame_lo < p.frame_hi <= len(chunk.frames)
        if p.flat:
            assert p.raw_lo % itemsize == 0 and p.raw_hi % itemsize == 0 and p.raw_lo < p.raw_hi
            got = _local_cells(chunk.box, p.raw_lo, p.raw_hi, itemsize)
            # element i of the run lands at destination element dest_elem + i
            for i, c in enumerate(got):
                rel = tuple(a - o for a, o in zip(c, dest.offsets))
                assert sum(r * s for r, s in zip(rel, dest_strides)) == p.dest_elem + i
            span = (p.raw_lo, p.raw_hi)
        else:
            got = sorted(cells(p.box))
            assert cells(p.box) <= cells(chunk.box)
            lo, hi = element_span(chunk.box.sizes, p.box.relative_to(chunk.box))
            span = (lo * itemsize, hi * itemsize)
        for c in got:
            written[c] = written.get(c, 0) + 1
        # The frames read are exactly those the piece's byte span touches ...
        assert (p.frame_lo, p.frame_hi) == (span[0] // frame_raw, -(-span[1] // frame_raw))
        # ... and each of them holds at least one element the piece needs.
        needed_frames = set()
        for c in got:
            rel = tuple(a - o for a, o in zip(c, chunk.box.offsets))
            flat = sum(r * s for r, s in zip(rel, c_strides(chunk.box.sizes))) * itemsize
            needed_frames.update(range(flat // frame_raw, (flat + itemsize - 1) // frame_raw + 1))
        assert set(range(p.frame_lo, p.frame_hi)) == needed_frames, "a frame is read for nothing"
        frames_read.extend((p.chunk_index, f) for f in range(p.frame_lo, p.frame_hi))
    assert set(written) == cells(dest), "some wanted element is missing or extra"
    assert all(v == 1 for v in written.values()), "some element is written twice"
    # No frame is read twice, unless max_piece cuts chunks into pieces (a frame on a piece
    # boundary is read by both) or elements straddle frames.
    if frame_raw % itemsize == 0 and max_piece >= max(c.raw_nbytes for c in chunks):
        assert len(frames_read) == len(set(frames_read)), "a frame is read twice"
    # Chunks that do not meet the destination are never read.
    assert {p.chunk_index for p in pieces} == {
        i for i, c in enumerate(chunks) if intersect(c.box, dest) is not None
    }


def _desc(key: str, shape: tuple[int, ...], boxes: list[Box], dtype: str = "float32") -> TensorDesc:
    return TensorDesc(key=(key,), dtype=dtype, shape=shape, container="torch", boxes=tuple(boxes))


@SETTINGS
@given(data=st.data(), world=st.integers(1, 5))
def test_plan_save_writes_each_distinct_box_once_by_a_holder(data: st.DataObject, world: int) -> None:
    per_rank: list[list] = [[] for _ in range(world)]
    holders: dict[tuple[str, Box], set[int]] = {}
    for t in range(data.draw(st.integers(1, 3))):
        shape = data.draw(shapes(max_dim=6))
        tiling = data.draw(grid_tilings(shape))
        held: list[list[Box]] = [[] for _ in range(world)]
        for box in tiling:  # every box held by at least one rank: replicas allowed
            for r in data.draw(st.sets(st.integers(0, world - 1), min_size=1)):
                held[r].append(box)
                holders.setdefault((f"t{t}", box), set()).add(r)
        for r in range(world):
            per_rank[r].append(_desc(f"t{t}", shape, held[r]))
    per_rank[0].append(ValueDesc(key=("step",), value={"type": "int", "value": 1}))
    plan = plan_save(per_rank)
    written: dict[tuple[str, Box], int] = {}
    for rank, tasks in enumerate(plan.tasks):
        for task in tasks:
            desc = per_rank[rank][task.item_index]
            box = desc.boxes[task.box_index]
            key = (desc.key[0], box)
            assert rank in holders[key], "a rank was told to write a box it does not hold"
            written[key] = written.get(key, 0) + 1
    assert written == {k: 1 for k in holders}
    assert [e.key for e in plan.entries][-1] == ("step",)


@SETTINGS
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30), world=st.integers(2, 6))
def test_plan_save_balances_replicated_boxes(sizes: list[int], world: int) -> None:
    """When every rank holds every box, greedy largest-first keeps ranks within one box."""
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    boxes = [Box((o,), (s,)) for o, s in zip(offsets, sizes)]
    per_rank = [[_desc("t", (sum(sizes),), boxes, "int8")] for _ in range(world)]
    plan = plan_save(per_rank)
    load = [sum(boxes[t.box_index].numel for t in tasks) for tasks in plan.tasks]
    assert sum(load) == sum(sizes)
    assert max(load) - min(load) <= max(sizes)


def test_plan_save_refuses_bad_layouts() -> None:
    with pytest.raises(LayoutMismatchError, match="overlap"):
        plan_save([[_desc("t", (4,), [Box((0,), (3,))])], [_desc("t", (4,), [Box((2,), (2,))])]])
    with pytest.raises(LayoutMismatchError, match="holes"):
        plan_save([[_desc("t", (4,), [Box((0,), (1,))])], [_desc("t", (4,), [Box((2,), (2,))])]])
    with pytest.raises(LayoutMismatchError, match="dtype"):
        plan_save([[_desc("t", (4,), [Box((0,), (4,))])], [_desc("t", (4,), [Box((0,), (4,))], "int8")]])
    with pytest.raises(LayoutMismatchError, match="plain value"):
        plan_save([[_desc("t", (4,), [Box((0,), (4,))])],
                   [ValueDesc(key=("t",), value={"type": "none"})]])


def test_column_slice_reads_only_frames_holding_wanted_elements() -> None:
    chunk = _chunk(Box((0, 0), (4, 64)), 1, 16)  # rows of 64 bytes = 4 frames each
    pieces = plan_reads((chunk,), Box((0, 0), (4, 2)), 1, max_piece_nbytes=1 << 20)
    read = {f for p in pieces for f in range(p.frame_lo, p.frame_hi)}
    assert read == {0, 4, 8, 12}
