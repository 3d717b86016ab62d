"""Cooperative read plans: each shared frame read and verified by one rank, its pieces
exchanged. Pure: records in, records out; nothing here does I/O.

A checksummed frame must be read whole to be verified. When several ranks need parts
of the same frames (a column cut of row-major chunks), each of them reading every
frame multiplies the bytes read. Here every rank's needs are gathered, each frame of a
shared chunk gets one reader (the rank needing most of it; ties split into contiguous
blocks), and the reader sends every other rank the bytes it needs, in an order all
ranks derive from the same gathered needs.

Bytes travel in the packed C order of each need's box: a need's box of ``n`` elements
is a virtual array of ``n`` elements; a frame range contributes one contiguous range
``[e0, e1)`` of it (frames hold whole elements, see ``eligible_frame``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .layout import Box, c_strides
from .pickling import slots_reduce

ChunkId = tuple[str, int]

# Needs of all ranks together beyond which no plan is made: every rank plans every
# rank's needs, O(needs) Python each (a large world keeps the plain path).
MAX_PLANNED_NEEDS = 65536


@dataclass(frozen=True, slots=True, kw_only=True)
class Need:
    """What one rank needs of one saved identity chunk.

    ``box`` is in chunk coordinates; ``slot`` is the needing rank's own reference
    (which of its targets). The chunk's geometry travels along so that every rank can
    plan chunks it does not need itself.
    """

    __reduce__ = slots_reduce

    entry: str
    chunk_index: int
    slot: int
    box: Box
    chunk_sizes: tuple[int, ...]
    itemsize: int
    frame_raw_nbytes: int

    @property
    def chunk_id(self) -> ChunkId:
        return (self.entry, self.chunk_index)


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """Elements ``[e0, e1)`` of need ``slot`` of rank ``rank`` (packed C order of its box)."""

    rank: int
    slot: int
    box: Box
    e0: int
    e1: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """Frames ``[frame_lo, frame_hi)`` of a chunk, read and verified by ``reader`` (whose
    need ``reader_slot`` names the chunk) in ``round``; ``parts`` say which rank gets
    which elements, in send order."""

    chunk: ChunkId
    reader: int
    reader_slot: int
    round: int
    frame_lo: int
    frame_hi: int
    itemsize: int
    parts: tuple[Part, ...]

    def part_nbytes(self, part: Part) -> int:
        return (part.e1 - part.e0) * self.itemsize


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangePlan:
    """Every rank's transfers, in queue order per reader, and the number of rounds."""

    transfers: tuple[Transfer, ...]
    rounds: int
    chunks: frozenset[ChunkId]
    saved_nbytes: int

    def handled(self, rank: int) -> set[tuple[int, int]]:
        """(slot, chunk_index) pairs of ``rank`` that the exchange fills."""
        return {(p.slot, t.chunk[1]) for t in self.transfers for p in t.parts if p.rank == rank}


EMPTY_PLAN = ExchangePlan(transfers=(), rounds=0, chunks=frozenset(), saved_nbytes=0)


def eligible_frame(frame_raw_nbytes: int, itemsize: int) -> bool:
    """Frames that hold whole elements (always true for the default frame size)."""
    return frame_raw_nbytes % itemsize == 0


def wasted_nbytes(need: Need) -> int:
    """Bytes a lone reader of ``need`` reads beyond it (whole frames, gaps included)."""
    f, size = need.frame_raw_nbytes, need.itemsize
    lo, hi = _span(need.chunk_sizes, need.box)
    raw_lo, raw_hi = (lo * size) // f * f, min(-(-(hi * size) // f) * f, math.prod(need.chunk_sizes) * size)
    return raw_hi - raw_lo - need.box.numel * size


def count_before(sizes: tuple[int, ...], box: Box, flat: int) -> int:
    """Elements of ``box`` whose C-order position in an array of ``sizes`` is below ``flat``."""
    if box.is_empty or flat <= 0:
        return 0
    return _count(_dims(sizes, box), flat)


Dims = tuple[tuple[int, int, int, int], ...]


def _dims(sizes: tuple[int, ...], box: Box) -> Dims:
    """Per dim: elements of ``sizes`` per index, box offset, box size, box elements per index."""
    inner = c_strides(sizes)
    tail = c_strides(box.sizes)
    return tuple(zip(inner, box.offsets, box.sizes, tail))


def _count(dims: Dims, flat: int) -> int:
    # Called per frame and need while planning: a tight loop over precomputed ints.
    total = 0
    for inner, o, n, tail in dims:
        i, flat = divmod(flat, inner)
        if i < o:
            return total
        if i >= o + n:
            return total + n * tail
        total += (i - o) * tail
    return total


def flat_range_boxes(sizes: tuple[int, ...], lo: int, hi: int) -> list[tuple[Box, int]]:
    """Elements ``[lo, hi)`` of the C order of an array of ``sizes`` as boxes (local to
    that array), each with the position of its first element; at most 2 x ndim - 1."""
    if hi <= lo:
        return []
    if not sizes:
        return [(Box((), ()), 0)]
    inner = math.prod(sizes[1:])
    i0, r0 = divmod(lo, inner)
    i1, r1 = divmod(hi, inner)
    out: list[tuple[Box, int]] = []
    if i0 == i1:
        for b, p in flat_range_boxes(sizes[1:], r0, r1):
            out.append((Box((i0,) + b.offsets, (1,) + b.sizes), i0 * inner + p))
        return out
    if r0:
        for b, p in flat_range_boxes(sizes[1:], r0, inner):
            out.append((Box((i0,) + b.offsets, (1,) + b.sizes), i0 * inner + p))
        i0 += 1
    if i1 > i0:
        out.append((Box((i0,) + (0,) * (len(sizes) - 1), (i1 - i0,) + sizes[1:]), i0 * inner))
    if r1:
        for b, p in flat_range_boxes(sizes[1:], 0, r1):
            out.append((Box((i1,) + b.offsets, (1,) + b.sizes), i1 * inner + p))
    return out


def plan_exchange(
    needs_by_rank: list[list[Need]], *, min_saved_nbytes: int, transfer_nbytes: int,
    round_nbytes: int,
) -> ExchangePlan:
    """One reader per shared frame, transfers of at most ``transfer_nbytes`` and rounds
    of about ``round_nbytes`` read per rank. The same gathered needs give the same plan
    on every rank. Empty when the frames read more than once would total less than
    ``min_saved_nbytes``: then every rank reads its own frames as before."""
    if sum(len(n) for n in needs_by_rank) > MAX_PLANNED_NEEDS:
        return EMPTY_PLAN  # planning (on every rank) would cost more than it saves
    by_chunk: dict[ChunkId, list[tuple[int, Need]]] = {}
    for rank, needs in enumerate(needs_by_rank):
        for need in needs:
            if not need.box.is_empty and eligible_frame(need.frame_raw_nbytes, need.itemsize):
                by_chunk.setdefault(need.chunk_id, []).append((rank, need))
    runs: list[tuple[ChunkId, int, int, int, int, list[tuple[int, Need]]]] = []
    saved = 0
    chunks: set[ChunkId] = set()
    rot = 0
    for cid in sorted(by_chunk):
        group = sorted(by_chunk[cid], key=lambda rn: (rn[0], rn[1].slot))
        if len({r for r, _ in group}) < 2:
            continue
        readers, redundant, rot = _assign(group, rot)
        if redundant * 8 < sum(n.box.numel * n.itemsize for _, n in group):
            continue  # little is read twice here: the plain path costs less
        saved += redundant
        chunks.add(cid)
        for reader, slot, f_lo, f_hi in readers:
            runs.append((cid, reader, slot, f_lo, f_hi, group))
    if saved < min_saved_nbytes or not runs:
        return EMPTY_PLAN
    return _rounds(runs, transfer_nbytes, round_nbytes, frozenset(chunks), saved)


def _assign(
    group: list[tuple[int, Need]], rot: int
) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """Runs ``(reader, reader's slot, frame_lo, frame_hi)`` over the frames the chunk's
    needs touch, the frame bytes that reading per rank would read more than once, and
    the next rotation.

    The frames are cut where any need's frames begin or end; between two cuts the same
    needs overlap, and the ranks needing at least half as much as the top one split
    those frames into contiguous blocks (O(needs^2) per chunk, not O(frames)).
    """
    first = group[0][1]
    sizes, size, f = first.chunk_sizes, first.itemsize, first.frame_raw_nbytes
    n_elems = math.prod(sizes)
    per_frame = f // size
    fspans = []
    for _, need in group:
        lo, hi = _span(sizes, need.box)
        fspans.append((lo // per_frame, -(-hi // per_frame)))
    dims = [_dims(sizes, n.box) for _, n in group]
    cuts = sorted({x for span in fspans for x in span})
    readers: list[tuple[int, int, int, int]] = []
    redundant = 0
    for lo_f, hi_f in zip(cuts, cuts[1:]):
        a, b = lo_f * per_frame, min(hi_f * per_frame, n_elems)
        got: dict[int, int] = {}
        slots: dict[int, int] = {}
        for (rank, need), (fl, fh), d in zip(group, fspans, dims):
            if fl < hi_f and fh > lo_f:
                k = _count(d, b) - _count(d, a)
                if k:
                    got[rank] = got.get(rank, 0) + k
                    slots.setdefault(rank, need.slot)
        if not got:
            continue
        redundant += (len(got) - 1) * (b - a) * size
        top = max(got.values())
        strong = [r for r in sorted(got) if 2 * got[r] >= top]
        k, n = len(strong), hi_f - lo_f
        for i in range(k):
            r = strong[(i + rot) % k]
            x, y = lo_f + n * i // k, lo_f + n * (i + 1) // k
            if y > x:
                readers.append((r, slots[r], x, y))
        rot += k > 1
    return readers, redundant, rot


def _rounds(
    runs: list[tuple[ChunkId, int, int, int, int, list[tuple[int, Need]]]], transfer_nbytes: int,
    round_nbytes: int, chunks: frozenset[ChunkId], saved: int,
) -> ExchangePlan:
    queued: dict[int, int] = {}
    transfers: list[Transfer] = []
    rounds = 0
    for cid, reader, slot, f_lo, f_hi, group in runs:
        first = group[0][1]
        size, f = first.itemsize, first.frame_raw_nbytes
        n_elems = math.prod(first.chunk_sizes)
        step = max(1, transfer_nbytes // f)
        dims = [_dims(first.chunk_sizes, n.box) for _, n in group]
        for lo in range(f_lo, f_hi, step):
            hi = min(lo + step, f_hi)
            a, b = lo * f // size, min(hi * f // size, n_elems)
            parts = []
            for (rank, need), d in zip(group, dims):
                e0, e1 = _count(d, a), _count(d, b)
                if e1 > e0:
                    parts.append(Part(rank=rank, slot=need.slot, box=need.box, e0=e0, e1=e1))
            if not parts:
                continue
            done = queued.get(reader, 0)
            rnd = done // round_nbytes
            queued[reader] = done + (b - a) * size
            rounds = max(rounds, rnd + 1)
            transfers.append(Transfer(chunk=cid, reader=reader, reader_slot=slot, round=rnd,
                                      frame_lo=lo, frame_hi=hi, itemsize=size, parts=tuple(parts)))
    return ExchangePlan(transfers=tuple(transfers), rounds=rounds, chunks=chunks, saved_nbytes=saved)


def _span(sizes: tuple[int, ...], box: Box) -> tuple[int, int]:
    strides = c_strides(sizes)
    start = sum(o * s for o, s in zip(box.offsets, strides))
    return start, start + sum((n - 1) * s for n, s in zip(box.sizes, strides)) + 1
