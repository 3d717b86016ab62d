"""Column checksums: where a chunk's tiles lie, for readers that take some of its columns.

A reader that shards dim 1 (tensor parallelism loading what FSDP saved row-wise) needs a
part of every row of a chunk. Frames are runs of whole rows, so checking them meant
reading every byte of the chunk. A chunk may also carry checksums over **tiles**: dim 1
is cut where ``torch.chunk`` would cut the tensor's full width into ``parts`` (the
columns a ``Shard(1)`` over ``parts`` ranks holds), dim 0 into runs of ``rows`` rows
from the chunk's first row, and each tile (a run of rows x one column segment x every
later dim) is checksummed over its own C-order bytes. docs/FORMAT.md defines it; this
module holds the arithmetic, with no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TILE_NBYTES = 256 * 1024
"""About the bytes of one tile: small enough that a reader checks a tile it just copied
while it is still in the core's cache, large enough to keep a few per MiB."""


def cuts(width: int, parts: int) -> list[int]:
    """The column indices where ``torch.chunk`` cuts ``width`` columns into ``parts``
    (chunks of ``ceil(width / parts)``; fewer chunks when they run out)."""
    return list(_cuts_inside(0, width, width, parts))


def segments(col_lo: int, col_size: int, width: int, parts: int) -> list[tuple[int, int]]:
    """The column segments of a box's columns ``[col_lo, col_lo + col_size)``, as
    ``(lo, hi)`` relative to ``col_lo``: that range cut at ``cuts(width, parts)``."""
    inner = [c - col_lo for c in _cuts_inside(col_lo, col_size, width, parts)]
    bounds = [0, *inner, col_size]
    return list(zip(bounds[:-1], bounds[1:]))


def segment_count(col_lo: int, col_size: int, width: int, parts: int) -> int:
    """``len(segments(...))``, in constant time (a manifest parser checks it per chunk)."""
    return len(_cuts_inside(col_lo, col_size, width, parts)) + 1


def _cuts_inside(col_lo: int, col_size: int, width: int, parts: int) -> range:
    """The cuts strictly inside ``[col_lo, col_lo + col_size)``, as a range: walking
    every cut of the width cost each chunk up to 65,535 steps (5 ms), so that a
    manifest of many chunks claiming many parts took minutes to parse."""
    if width <= 0 or parts <= 1:
        return range(0)
    step = -(-width // parts)
    return range((col_lo // step + 1) * step, min(col_lo + col_size, width), step)


def checked_segments(
    shape: Sequence[int], offsets: Sequence[int], sizes: Sequence[int], nbytes: int, parts: int,
    min_nbytes: int,
) -> list[tuple[int, int]] | None:
    """The column segments of a box of ``nbytes`` when a writer gives it column
    checksums: two or more dims, over ``min_nbytes``, columns crossing a cut of the
    tensor's width in ``parts``; else None."""
    if parts < 2 or len(shape) < 2 or nbytes <= min_nbytes:
        return None
    segs = segments(offsets[1], sizes[1], shape[1], parts)
    return segs if len(segs) > 1 else None


def tile_rows(segment_row_nbytes: int) -> int:
    """The rows of a run that makes tiles of about ``TILE_NBYTES`` when the widest
    segment holds ``segment_row_nbytes`` bytes per row."""
    return max(1, TILE_NBYTES // max(1, segment_row_nbytes))


def run_count(n_rows: int, rows: int) -> int:
    return -(-n_rows // rows)


@dataclass(frozen=True, slots=True)
class TileRead:
    """Row runs ``[run_lo, run_hi)`` of a chunk and the segments ``[seg_lo, seg_hi)``
    a reader takes from each: tile ``run * n_segments + seg`` for each pair."""

    run_lo: int
    run_hi: int
    seg_lo: int
    seg_hi: int


def plan_tile_reads(
    n_rows: int, rows: int, segs: Sequence[tuple[int, int]], need_rows: tuple[int, int],
    need_cols: tuple[int, int], *, max_rows: int,
) -> list[TileRead] | None:
    """The tiles that cover rows ``need_rows`` x columns ``need_cols`` (relative to the
    chunk, ``(lo, hi)``), grouped in reads of at most ``max_rows`` rows (whole runs, at
    least one); None when those tiles span every column, so that whole frames read no
    more."""
    first = next(i for i, (_, hi) in enumerate(segs) if hi > need_cols[0])
    last = next(i for i, (_, hi) in enumerate(segs) if hi >= need_cols[1])
    if first == 0 and last == len(segs) - 1:
        return None
    run_lo, run_hi = need_rows[0] // rows, -(-need_rows[1] // rows)
    per = max(1, max_rows // rows)
    out = []
    for lo in range(run_lo, run_hi, per):
        out.append(TileRead(lo, min(lo + per, run_hi, run_count(n_rows, rows)), first, last + 1))
    return out
