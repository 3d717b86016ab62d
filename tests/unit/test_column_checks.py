"""The tile arithmetic of column checksums (core.column_checks), against plain lists."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reshard.core.column_checks import cuts, plan_tile_reads, run_count, segments, tile_rows


def _parts_of(width: int, parts: int) -> list[int]:
    """The part each column falls in when a list of ``width`` is cut like torch.chunk."""
    step = -(-width // parts)
    return [c // step for c in range(width)]


@given(st.integers(1, 300), st.integers(2, 40))
def test_cuts_are_where_the_part_changes(width: int, parts: int) -> None:
    owner = _parts_of(width, parts)
    assert cuts(width, parts) == [c for c in range(1, width) if owner[c] != owner[c - 1]]


@given(st.data(), st.integers(1, 300), st.integers(2, 40))
def test_segments_tile_a_box_and_each_lies_in_one_part(data: st.DataObject, width: int, parts: int) -> None:
    lo = data.draw(st.integers(0, width - 1))
    size = data.draw(st.integers(1, width - lo))
    segs = segments(lo, size, width, parts)
    owner = _parts_of(width, parts)
    assert segs[0][0] == 0 and segs[-1][1] == size
    assert all(a < b for a, b in segs) and all(segs[i][1] == segs[i + 1][0] for i in range(len(segs) - 1))
    for a, b in segs:
        assert len({owner[lo + c] for c in range(a, b)}) == 1
    # Consecutive segments are in different parts: the fewest segments that do that.
    assert len({owner[lo + a] for a, _ in segs}) == len(segs)


def test_segments_without_a_cut_inside() -> None:
    assert segments(0, 50, 100, 2) == [(0, 50)]
    assert segments(50, 50, 100, 2) == [(0, 50)]
    assert segments(40, 20, 100, 2) == [(0, 10), (10, 20)]
    assert segments(0, 10, 10, 1) == [(0, 10)]


def test_tile_rows() -> None:
    assert tile_rows(1) == 256 * 1024
    assert tile_rows(256 * 1024) == 1 and tile_rows(10**9) == 1
    assert tile_rows(1000) == 262
    assert run_count(10, 3) == 4 and run_count(9, 3) == 3


@given(st.data())
def test_plan_tile_reads_covers_the_need_with_whole_runs(data: st.DataObject) -> None:
    width = data.draw(st.integers(2, 200))
    parts = data.draw(st.integers(2, 9))
    n_rows = data.draw(st.integers(1, 120))
    rows = data.draw(st.integers(1, 40))
    segs = segments(0, width, width, parts)
    r_lo = data.draw(st.integers(0, n_rows - 1))
    r_hi = data.draw(st.integers(r_lo + 1, n_rows))
    c_lo = data.draw(st.integers(0, width - 1))
    c_hi = data.draw(st.integers(c_lo + 1, width))
    max_rows = data.draw(st.integers(1, 100))
    reads = plan_tile_reads(n_rows, rows, segs, (r_lo, r_hi), (c_lo, c_hi), max_rows=max_rows)
    touched = [i for i, (a, b) in enumerate(segs) if a < c_hi and b > c_lo]
    if touched == list(range(len(segs))):
        assert reads is None
        return
    assert reads is not None
    runs = [r for read in reads for r in range(read.run_lo, read.run_hi)]
    assert runs == list(range(r_lo // rows, (r_hi - 1) // rows + 1))  # each needed run once
    for read in reads:
        assert (read.seg_lo, read.seg_hi) == (touched[0], touched[-1] + 1)
        assert read.run_hi - read.run_lo <= max(1, max_rows // rows)
        assert read.run_hi <= run_count(n_rows, rows)
