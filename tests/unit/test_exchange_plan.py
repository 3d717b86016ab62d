"""Cooperative read plans: every needed element delivered exactly once, each frame read
by at most one rank, that rank one that needs the chunk, and the same plan everywhere."""

from __future__ import annotations

import math
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core.exchange_plan import (
    EMPTY_PLAN,
    Need,
    count_before,
    flat_range_boxes,
    plan_exchange,
    wasted_nbytes,
)
from reshard.core.layout import Box, c_strides, element_span

from ._strategies import boxes_in, shapes

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


def _cells(sizes: tuple[int, ...], box: Box) -> list[int]:
    """C-order positions (in an array of ``sizes``) of the elements of ``box``, in order."""
    strides = c_strides(sizes)
    out = []
    for flat in range(math.prod(box.sizes)):
        pos, rest = 0, flat
        for s, o, bs in zip(strides, box.offsets, c_strides(box.sizes)):
            i, rest = divmod(rest, bs)
            pos += (o + i) * s
        out.append(pos)
    return out


@SETTINGS
@given(data=st.data())
def test_count_before_counts_the_box_cells_below(data: st.DataObject) -> None:
    sizes = data.draw(shapes(min_dim=1))
    box = data.draw(boxes_in(sizes))
    cells = _cells(sizes, box)
    for flat in range(-1, math.prod(sizes) + 2):
        assert count_before(sizes, box, flat) == sum(1 for c in cells if c < flat)


@SETTINGS
@given(data=st.data())
def test_flat_range_boxes_cover_the_range_in_order(data: st.DataObject) -> None:
    sizes = data.draw(shapes(min_dim=1))
    n = math.prod(sizes)
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    got: list[int] = []
    boxes = flat_range_boxes(sizes, lo, hi)
    for box, pos in boxes:
        start, _ = element_span(sizes, box)
        assert start == pos
        got += _cells(sizes, box)
    assert got == list(range(lo, hi))
    assert len(boxes) <= max(1, 2 * len(sizes) - 1)


def _needs(sizes: tuple[int, ...], itemsize: int, frame: int, boxes: list[list[Box]],
           entry: str = "w", chunk_index: int = 0) -> list[list[Need]]:
    return [[Need(entry=entry, chunk_index=chunk_index, slot=slot, box=b, chunk_sizes=sizes,
                  itemsize=itemsize, frame_raw_nbytes=frame) for slot, b in enumerate(bs)]
            for bs in boxes]


def _check(needs: list[list[Need]], plan: object) -> None:
    """Each need's elements arrive once each; frames of a chunk are read once."""
    got: dict[tuple[int, int, str, int], list[tuple[int, int]]] = {}
    frames: dict[tuple[str, int], set[int]] = {}
    for tr in plan.transfers:  # type: ignore[attr-defined]
        read = frames.setdefault(tr.chunk, set())
        span = set(range(tr.frame_lo, tr.frame_hi))
        assert not read & span, f"frames {sorted(read & span)} read twice"
        read |= span
        reader_needs = [n for n in needs[tr.reader] if n.chunk_id == tr.chunk]
        assert any(n.slot == tr.reader_slot for n in reader_needs), "reader does not need the chunk"
        first = next(n for ns in needs for n in ns if n.chunk_id == tr.chunk)
        per_frame = first.frame_raw_nbytes // first.itemsize
        for p in tr.parts:
            need = next(n for n in needs[p.rank] if n.slot == p.slot and n.chunk_id == tr.chunk)
            cells = _cells(need.chunk_sizes, need.box)[p.e0:p.e1]
            assert all(tr.frame_lo * per_frame <= c < tr.frame_hi * per_frame for c in cells)
            got.setdefault((p.rank, p.slot, *tr.chunk), []).append((p.e0, p.e1))
    handled = {k for k in got}
    for rank, ns in enumerate(needs):
        for n in ns:
            key = (rank, n.slot, *n.chunk_id)
            if n.chunk_id in plan.chunks:  # type: ignore[attr-defined]
                ranges = sorted(got.get(key, []))
                pos = 0
                for e0, e1 in ranges:
                    assert e0 == pos, f"need {key}: elements from {pos} missing or doubled"
                    pos = e1
                assert pos == n.box.numel, f"need {key}: {pos} of {n.box.numel} elements"
            else:
                assert key not in handled


@SETTINGS
@given(data=st.data(), itemsize=st.sampled_from([1, 2, 4, 8]), per_frame=st.integers(1, 9),
       ranks=st.integers(2, 5), transfer=st.integers(1, 64), rnd=st.integers(1, 200))
def test_plan_delivers_every_element_once_and_reads_each_frame_once(
    data: st.DataObject, itemsize: int, per_frame: int, ranks: int, transfer: int, rnd: int,
) -> None:
    sizes = data.draw(shapes(min_dim=1, max_dim=9))
    frame = per_frame * itemsize
    boxes = [[data.draw(boxes_in(sizes)) for _ in range(data.draw(st.integers(0, 2)))]
             for _ in range(ranks)]
    needs = _needs(sizes, itemsize, frame, boxes)
    plan = plan_exchange(needs, min_saved_nbytes=1, transfer_nbytes=transfer * itemsize,
                         round_nbytes=rnd)
    _check(needs, plan)
    # The plan is a function of the gathered needs: a rank that unpickled them agrees.
    again = plan_exchange(pickle.loads(pickle.dumps(needs)), min_saved_nbytes=1,
                          transfer_nbytes=transfer * itemsize, round_nbytes=rnd)
    assert again == plan


def test_column_cut_splits_the_frames_between_the_two_ranks() -> None:
    # Rows of 64 fp32 in frames of 2 rows: each rank needs half of every frame.
    sizes, frame = (64, 64), 512
    needs = _needs(sizes, 4, frame, [[Box((0, 0), (64, 32))], [Box((0, 32), (64, 32))]])
    plan = plan_exchange(needs, min_saved_nbytes=1, transfer_nbytes=4096, round_nbytes=1 << 20)
    _check(needs, plan)
    read = {0: 0, 1: 0}
    for tr in plan.transfers:
        read[tr.reader] += tr.frame_hi - tr.frame_lo
    assert read == {0: 16, 1: 16}  # 32 frames, each read once, split evenly
    assert plan.saved_nbytes == 32 * frame
    assert plan.rounds == 1


def test_rounds_bound_the_bytes_each_rank_reads() -> None:
    sizes, frame = (64, 64), 512
    needs = _needs(sizes, 4, frame, [[Box((0, 0), (64, 32))], [Box((0, 32), (64, 32))]])
    plan = plan_exchange(needs, min_saved_nbytes=1, transfer_nbytes=1024, round_nbytes=2048)
    _check(needs, plan)
    per_round: dict[tuple[int, int], int] = {}
    for tr in plan.transfers:
        key = (tr.reader, tr.round)
        per_round[key] = per_round.get(key, 0) + (tr.frame_hi - tr.frame_lo) * frame
    assert plan.rounds == 4
    assert all(v <= 2048 for v in per_round.values())


def test_skewed_needs_are_read_by_the_rank_needing_most() -> None:
    # Rank 0 needs 7 of every 8 columns, rank 1 the last: rank 0 reads every frame.
    sizes = (32, 64)
    needs = _needs(sizes, 4, 256, [[Box((0, 0), (32, 56))], [Box((0, 56), (32, 8))]])
    plan = plan_exchange(needs, min_saved_nbytes=1, transfer_nbytes=4096, round_nbytes=1 << 20)
    _check(needs, plan)
    assert {tr.reader for tr in plan.transfers} == {0}


def test_row_cuts_and_small_savings_keep_the_plain_path() -> None:
    sizes = (64, 64)
    rows = _needs(sizes, 4, 512, [[Box((0, 0), (32, 64))], [Box((32, 0), (32, 64))]])
    assert plan_exchange(rows, min_saved_nbytes=1, transfer_nbytes=4096, round_nbytes=1 << 20) == EMPTY_PLAN
    cols = _needs(sizes, 4, 512, [[Box((0, 0), (64, 32))], [Box((0, 32), (64, 32))]])
    assert plan_exchange(cols, min_saved_nbytes=32 * 512 + 1, transfer_nbytes=4096,
                         round_nbytes=1 << 20) == EMPTY_PLAN
    # Frames that do not hold whole elements, and empty boxes, are never planned.
    odd = _needs(sizes, 4, 510, [[Box((0, 0), (64, 32))], [Box((0, 32), (64, 32))]])
    assert plan_exchange(odd, min_saved_nbytes=1, transfer_nbytes=4096, round_nbytes=1 << 20) == EMPTY_PLAN
    empty = _needs(sizes, 4, 512, [[Box((0, 0), (64, 0))], [Box((0, 32), (64, 32))]])
    assert plan_exchange(empty, min_saved_nbytes=1, transfer_nbytes=4096, round_nbytes=1 << 20) == EMPTY_PLAN


def test_wasted_bytes_of_a_lone_reader() -> None:
    [[col]] = _needs((64, 64), 4, 512, [[Box((0, 0), (64, 32))]])
    assert wasted_nbytes(col) == 64 * 32 * 4
    [[rows]] = _needs((64, 64), 4, 512, [[Box((2, 0), (4, 64))]])
    assert wasted_nbytes(rows) == 0


def test_too_many_needs_keep_the_plain_path(monkeypatch) -> None:
    import reshard.core.exchange_plan as xp

    sizes = (64, 64)
    cols = _needs(sizes, 4, 512, [[Box((0, 0), (64, 32))], [Box((0, 32), (64, 32))]])
    monkeypatch.setattr(xp, "MAX_PLANNED_NEEDS", 1)
    assert plan_exchange(cols, min_saved_nbytes=1, transfer_nbytes=4096, round_nbytes=1 << 20) == EMPTY_PLAN
