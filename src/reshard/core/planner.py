"""Save plans (dedup, tiling check, writer choice) and read plans (intersections to
byte ranges). Pure: plans are lists of small records; nothing here does I/O."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from operator import attrgetter, itemgetter, mul
from typing import Union

import numpy as np

from ..errors import LayoutMismatchError
from ..format.chunk_table import touching
from ..format.dtypes import ITEMSIZE
from ..format.manifest import Chunk, Key, dotted
from ..format.values import JsonValue
from .layout import Box, element_span, intersect, is_grid, split_for_span, tiling_problem
from .nogc import without_gc
from .pickling import slots_reduce
from .records import fast_constructor

MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorDesc:
    """What one rank holds of a tensor: its global description and its local boxes."""

    __reduce__ = slots_reduce

    key: Key
    dtype: str
    shape: tuple[int, ...]
    container: str
    boxes: tuple[Box, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueDesc:
    __reduce__ = slots_reduce

    key: Key
    value: dict[str, JsonValue]


Desc = Union[TensorDesc, ValueDesc]


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteTask:
    """Rank-local instruction: write box ``box_index`` of local item ``item_index``."""

    __reduce__ = slots_reduce

    item_index: int
    box_index: int


Holder = tuple[int, int, int]
"""``(rank, item_index, box_index)`` of a rank that holds a box."""


@dataclass(slots=True, kw_only=True)
class PlannedEntry:
    """One key as merged so far: its description and every box a rank holds of it.

    Boxes are only appended here, in rank order, as the ranks' descriptions are read:
    deduplication, the tiling check and sizes come after, per entry, from these lists
    (``_jobs``). A dict of the distinct boxes per tensor, updated as ranks are read,
    spreads a million lookups over tables larger than the CPU's cache and ran 5-6x
    slower per box at 2,048 ranks than at 512.
    """

    key: Key
    desc: Desc
    ranks: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    box_indices: list[int] = field(default_factory=list)
    """Box ``i`` is box ``box_indices[i]`` of item ``items[i]`` of rank ``ranks[i]``
    (the Box objects are looked up again only to describe a problem)."""
    numbers: array[int] = field(default_factory=lambda: array("q"))
    """Every box's offsets then sizes, copied as the ranks are read (see _add_boxes)."""
    odd_dims: bool = False
    """Some box has not as many offsets and sizes as the tensor has dims."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SavePlan:
    """The coordinator's decisions: the entries in manifest order, and per rank what to write."""

    entries: tuple[Desc, ...]
    tasks: tuple[tuple[WriteTask, ...], ...]


@dataclass(slots=True)
class _Jobs:
    """Every distinct non-empty box to write, in entry order then first-held order."""

    nbytes: list[int] = field(default_factory=list)
    rank: list[int] = field(default_factory=list)
    """The one rank holding the box, or -1 when several do (see ``holders``)."""
    item: list[int] = field(default_factory=list)
    box_index: list[int] = field(default_factory=list)
    holders: dict[int, list[Holder]] = field(default_factory=dict)


_write_task = fast_constructor(WriteTask)


@without_gc
def plan_save(per_rank: list[list[Desc]]) -> SavePlan:
    """Merge every rank's descriptions, check them, and pick one writer per distinct box.

    Identical boxes held by several ranks (replicas) are written once; writers are
    chosen largest box first, each by the holder with the fewest bytes so far.
    O(total boxes x log) on the coordinator.
    """
    planned: dict[str, PlannedEntry] = {}
    # Entries whose description holds data: a later description of the key that agrees
    # on dtype and shape only adds its boxes, skipping _merge's name, type and dtype
    # checks (at 2,048 ranks x 500 tensors this loop runs a million times).
    settled: dict[Key, tuple[tuple[int, ...], str, PlannedEntry, int]] = {}
    problems: list[str] = []
    # Shared index objects: fresh ints from enumerate would be one object per rank and
    # item, apart in memory, for later passes to touch.
    indices = list(range(max(map(len, per_rank), default=0)))
    # Ranks that describe the same keys as an earlier rank, each with one box of the
    # settled shape and dtype, are taken whole (_SameKeys), in runs between the others.
    same: _SameKeys | None = None
    run_ranks: list[int] = []
    run_numbers = array("q")
    for rank, descs in enumerate(per_rank):
        if same is not None:
            numbers = same.numbers(descs)
            if numbers is not None:
                run_ranks.append(rank)
                run_numbers.extend(numbers)
                for item_index in same.values:  # in rank order, as the loop: same problems
                    _merge(planned, rank, item_index, descs[item_index], problems)
                if len(run_ranks) == _RUN_RANKS:  # bounds the copy of the numbers held
                    same.add_run(run_ranks, run_numbers)
                    run_ranks, run_numbers = [], array("q")
                continue
            if run_ranks:
                same.add_run(run_ranks, run_numbers)
                run_ranks, run_numbers = [], array("q")
        for item_index, desc in zip(indices, descs):
            hit = settled.get(desc.key)
            if (hit is None or type(desc) is not TensorDesc or desc.shape != hit[0]
                    or desc.dtype != hit[1]):
                p = _merge(planned, rank, item_index, desc, problems)
                if p is not None and isinstance(p.desc, TensorDesc) and _holds_data(p.desc):
                    settled.setdefault(desc.key, (p.desc.shape, p.desc.dtype, p, len(p.desc.shape)))
                continue
            p = hit[2]
            boxes = desc.boxes
            if len(boxes) == 1:
                box = boxes[0]
                p.ranks.append(rank)
                p.items.append(item_index)
                p.box_indices.append(0)
                # Copied now, while this rank's objects are in cache (see _add_boxes).
                offsets, sizes = box.offsets, box.sizes
                p.numbers.extend(offsets)
                p.numbers.extend(sizes)
                if len(offsets) != hit[3] or len(sizes) != hit[3]:
                    p.odd_dims = True
            else:
                _add_boxes(p, rank, item_index, boxes)
        if same is None:
            same = _SameKeys.of(descs, settled)
    if same is not None and run_ranks:
        same.add_run(run_ranks, run_numbers)
    jobs = _Jobs()
    for name, p in planned.items():
        if isinstance(p.desc, TensorDesc):
            _add_jobs(name, p, jobs, problems, per_rank)
    if problems:
        raise LayoutMismatchError(_summarize(problems))
    return SavePlan(entries=tuple(p.desc for p in planned.values()),
                    tasks=_assign(jobs, len(per_rank)))


_RUN_RANKS = 256


class _SameKeys:
    """The keys of one rank's descriptions, its tensors all settled, for taking later
    ranks whole.

    At 2,048 ranks x 500 tensors plan_save's loop ran a million times, a few
    microseconds each. Usually every rank describes the same keys in the same order,
    each tensor with one box: ``numbers`` checks that for a rank's whole list with C-level
    passes (map, list comparison) and copies its boxes' numbers, and ``add_run`` appends
    a run of such ranks to every entry, as the loop would have one rank at a time.
    Plain values (``values``) still go through ``_merge`` one by one, as in the loop.
    """

    __slots__ = ("keys", "types", "tensors", "values", "shapes", "dtypes", "ndims", "entries",
                 "spans")

    def __init__(self, descs: list[Desc], keys: list[Key],
                 settled: dict[Key, tuple[tuple[int, ...], str, PlannedEntry, int]]) -> None:
        self.keys = keys
        self.types = list(map(type, descs))
        self.tensors = [i for i, t in enumerate(self.types) if t is TensorDesc]
        """The positions of the tensors (``item_index``), in order."""
        self.values = [i for i, t in enumerate(self.types) if t is not TensorDesc]
        hits = [settled[keys[i]] for i in self.tensors]
        self.shapes = [h[0] for h in hits]
        self.dtypes = [h[1] for h in hits]
        self.ndims = [h[3] for h in hits]
        self.entries = [h[2] for h in hits]
        ends = list(accumulate(2 * n for n in self.ndims))
        self.spans = list(zip([0, *ends[:-1]], ends))
        """Where tensor ``k``'s offsets and sizes lie in a rank's ``numbers``."""

    @staticmethod
    def of(descs: list[Desc], settled: dict[Key, tuple[tuple[int, ...], str, PlannedEntry, int]],
           ) -> _SameKeys | None:
        keys = list(map(_KEY, descs))
        # A key twice in one rank, or a tensor not settled, is left to the loop.
        if len(set(keys)) != len(keys):
            return None
        tensor_keys = [k for k, d in zip(keys, descs) if type(d) is TensorDesc]
        if not tensor_keys or not all(map(settled.__contains__, tensor_keys)):
            return None
        return _SameKeys(descs, keys, settled)

    def numbers(self, descs: list[Desc]) -> array[int] | None:
        """Every tensor's offsets then sizes, in order, when ``descs`` holds the same
        keys in the same order, the tensors of the same shapes and dtypes, one box each
        with as many dims as the tensor; else None."""
        if (len(descs) != len(self.keys) or list(map(type, descs)) != self.types
                or list(map(_KEY, descs)) != self.keys):
            return None
        tensors = list(map(descs.__getitem__, self.tensors)) if self.values else descs
        if list(map(_SHAPE, tensors)) != self.shapes or list(map(_DTYPE, tensors)) != self.dtypes:
            return None
        box_lists = list(map(_BOXES, tensors))
        if set(map(len, box_lists)) != {1}:
            return None
        boxes = list(map(_FIRST, box_lists))
        offsets, sizes = list(map(_OFFSETS, boxes)), list(map(_SIZES, boxes))
        if list(map(len, offsets)) != self.ndims or list(map(len, sizes)) != self.ndims:
            return None
        try:
            return array("q", chain.from_iterable(chain.from_iterable(zip(offsets, sizes))))
        except (TypeError, OverflowError):
            return None  # the loop raises what it raises for such numbers

    def add_run(self, ranks: list[int], numbers: array[int]) -> None:
        """Append the boxes of ``ranks`` (their ``numbers`` one after the other)."""
        # One row per rank; each entry's columns of the rows, row after row, are what
        # the loop would have appended.
        rows = np.frombuffer(numbers, dtype=np.int64).reshape(len(ranks), self.spans[-1][1])
        zeros = [0] * len(ranks)
        for item_index, p, (lo, hi) in zip(self.tensors, self.entries, self.spans):
            p.ranks.extend(ranks)
            p.items.extend(repeat(item_index, len(ranks)))
            p.box_indices.extend(zeros)
            p.numbers.frombytes(rows[:, lo:hi].tobytes())


_KEY = attrgetter("key")
_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")
_BOXES = attrgetter("boxes")
_OFFSETS = attrgetter("offsets")
_SIZES = attrgetter("sizes")
_FIRST = itemgetter(0)


def _add_boxes(p: PlannedEntry, rank: int, item_index: int, boxes: tuple[Box, ...]) -> None:
    """Append ``boxes`` and copy their numbers into ``p.numbers``.

    The numbers are copied here, rank by rank, because the boxes of one rank lie
    together in memory and those of one tensor across ranks do not: reading them later
    tensor by tensor (three passes over the Box objects) cost ~2 us per box at 2,048
    ranks, most of plan_save.
    """
    ndim = len(p.desc.shape) if isinstance(p.desc, TensorDesc) else -1
    for box_index, box in enumerate(boxes):
        p.ranks.append(rank)
        p.items.append(item_index)
        p.box_indices.append(box_index)
        p.numbers.extend(box.offsets)
        p.numbers.extend(box.sizes)
        if len(box.offsets) != ndim or len(box.sizes) != ndim:
            p.odd_dims = True


def _add_jobs(
    name: str, p: PlannedEntry, jobs: _Jobs, problems: list[str], per_rank: list[list[Desc]]
) -> None:
    """Deduplicate the boxes of one tensor, check they tile it, and add one job per
    distinct non-empty box (or a problem)."""
    desc = p.desc
    assert isinstance(desc, TensorDesc)
    ndim = len(desc.shape)
    # Every step reads the numbers _add_boxes copied, not the Box objects.
    if p.odd_dims:
        _add_problem(name, desc, _boxes(p, per_rank, range(len(p.ranks))), problems)  # other dims
        return
    numbers = p.numbers
    columns = [numbers[k::2 * ndim] for k in range(2 * ndim)]
    wheres = list(zip(*columns)) if ndim else [()] * len(p.ranks)
    keep: Sequence[int] = range(len(wheres))
    if any(0 in c for c in columns[ndim:]):
        keep = [i for i, w in enumerate(wheres) if 0 not in w[ndim:]]
        wheres = [wheres[i] for i in keep]
    first = list(keep)
    groups: dict[tuple[int, ...], list[int]] | None = None
    if len(set(wheres)) != len(wheres):  # replicas: group the holders of each box
        groups = {}
        for i, where in zip(keep, wheres):
            groups.setdefault(where, []).append(i)
        wheres = list(groups)
        first = [members[0] for members in groups.values()]
    found = [set(zip(map(itemgetter(d), wheres), map(itemgetter(ndim + d), wheres))) for d in range(ndim)]
    if not is_grid(desc.shape, found, len(wheres)):
        if _add_problem(name, desc, _boxes(p, per_rank, first), problems):
            return
    base = len(jobs.nbytes)
    nbytes = [ITEMSIZE[desc.dtype]] * len(wheres)
    for d in range(ndim):
        nbytes = list(map(mul, nbytes, map(itemgetter(ndim + d), wheres)))
    jobs.nbytes.extend(nbytes)
    jobs.rank.extend(map(p.ranks.__getitem__, first))
    jobs.item.extend(map(p.items.__getitem__, first))
    jobs.box_index.extend(map(p.box_indices.__getitem__, first))
    if groups is not None:
        for j, members in enumerate(groups.values()):
            if len(members) > 1:
                jobs.rank[base + j] = -1
                jobs.holders[base + j] = [(p.ranks[i], p.items[i], p.box_indices[i]) for i in members]


def _boxes(p: PlannedEntry, per_rank: list[list[Desc]], which: Sequence[int]) -> list[Box]:
    """The boxes ``which`` of ``p``, from the descriptions that hold them."""
    return [per_rank[p.ranks[i]][p.items[i]].boxes[p.box_indices[i]]  # type: ignore[union-attr]
            for i in which]


def _add_problem(name: str, desc: TensorDesc, boxes: list[Box], problems: list[str]) -> bool:
    """Add a problem when ``boxes`` do not tile the tensor; whether they do not."""
    problem = tiling_problem(desc.shape, boxes)
    if problem is not None:
        problems.append(f"key {name!r}: the shards of shape {list(desc.shape)} do not tile it: {problem}")
    return problem is not None


def _assign(jobs: _Jobs, world: int) -> tuple[tuple[WriteTask, ...], ...]:
    """Each rank's write tasks: boxes largest first (equal sizes in job order), each to
    the holder with the fewest bytes so far."""
    nbytes = jobs.nbytes
    # reverse=True keeps equal sizes in their order: the sort stays stable.
    order = sorted(range(len(nbytes)), key=nbytes.__getitem__, reverse=True)
    # Only a box several ranks hold needs the bytes assigned so far; with few of them,
    # the boxes between two are summed per rank in bulk (_assign_in_bulk).
    if 4 * len(jobs.holders) > len(order) or sum(nbytes) >= 2**62:
        return _assign_one_by_one(jobs, world, order)
    return _assign_in_bulk(jobs, world, order)


def _assign_one_by_one(jobs: _Jobs, world: int, order: list[int]) -> tuple[tuple[WriteTask, ...], ...]:
    nbytes = jobs.nbytes
    assigned_bytes = [0] * world
    tasks: list[list[WriteTask]] = [[] for _ in range(world)]
    ranks, items, box_indices = jobs.rank, jobs.item, jobs.box_index
    for i in order:
        rank = ranks[i]
        if rank >= 0:
            item_index, box_index = items[i], box_indices[i]
        else:
            rank, item_index, box_index = min(
                jobs.holders[i], key=lambda h: (assigned_bytes[h[0]], h[0]))
        assigned_bytes[rank] += nbytes[i]
        tasks[rank].append(_write_task(item_index, box_index))
    return tuple(tuple(t) for t in tasks)


def _assign_in_bulk(jobs: _Jobs, world: int, order: list[int]) -> tuple[tuple[WriteTask, ...], ...]:
    """What _assign_one_by_one returns, with a Python step only per replicated box. The
    caller made sure every sum of bytes fits int64."""
    ranks = list(map(jobs.rank.__getitem__, order))
    items = list(map(jobs.item.__getitem__, order))
    box_indices = list(map(jobs.box_index.__getitem__, order))
    rank_col = np.array(ranks, dtype=np.int64)
    bytes_col = np.array(list(map(jobs.nbytes.__getitem__, order)), dtype=np.int64)
    assigned = np.zeros(world, dtype=np.int64)
    done = 0  # the jobs before this position are counted in ``assigned``
    for k in np.flatnonzero(rank_col < 0).tolist():
        if k > done:
            np.add.at(assigned, rank_col[done:k], bytes_col[done:k])
        rank, items[k], box_indices[k] = min(
            jobs.holders[order[k]], key=lambda h: (int(assigned[h[0]]), h[0]))
        ranks[k] = rank
        assigned[rank] += bytes_col[k]
        done = k + 1
    # Each rank's tasks in assignment order: a stable sort by rank.
    by_rank = sorted(range(len(order)), key=ranks.__getitem__)
    counts = np.bincount(np.array(ranks, dtype=np.int64), minlength=world).tolist()
    made = _TaskMemo()
    tasks = list(map(made.__getitem__, zip(map(items.__getitem__, by_rank),
                                           map(box_indices.__getitem__, by_rank))))
    ends = list(accumulate(counts))
    return tuple(tuple(tasks[e - c:e]) for c, e in zip(counts, ends))


class _TaskMemo(dict):  # type: ignore[type-arg]
    """One WriteTask per distinct ``(item_index, box_index)``: they are immutable, and
    ranks of one layout write the same few pairs (at 2,048 ranks, 845k tasks of 500)."""

    def __missing__(self, key: tuple[int, int]) -> WriteTask:
        task = self[key] = _write_task(*key)
        return task


def _merge(
    planned: dict[str, PlannedEntry], rank: int, item_index: int, desc: Desc, problems: list[str]
) -> PlannedEntry | None:
    """Merge one description; the entry it went into, or None after adding a problem."""
    name = dotted(desc.key)
    p = planned.get(name)
    if p is None:
        p = planned[name] = PlannedEntry(key=desc.key, desc=desc)
    elif p.key != desc.key:
        problems.append(
            f"keys {list(p.key)} and {list(desc.key)} both read as {name!r}; rename one"
        )
        return None
    elif type(p.desc) is not type(desc):
        problems.append(f"key {name!r}: a tensor on some ranks and a plain value on rank {rank}")
        return None
    if isinstance(desc, TensorDesc):
        first = p.desc
        assert isinstance(first, TensorDesc)
        # A rank that holds no element cannot know the dtype (an empty LocalShardsWrapper
        # reports the default dtype), so only ranks holding data decide it.
        if not _holds_data(first) and _holds_data(desc) and first.shape == desc.shape:
            p.desc = first = desc
        dtype_differs = first.dtype != desc.dtype and _holds_data(first) and _holds_data(desc)
        if first.shape != desc.shape or dtype_differs:
            problems.append(
                f"key {name!r}: rank {rank} has dtype {desc.dtype} shape {list(desc.shape)}, "
                f"another rank dtype {first.dtype} shape {list(first.shape)}"
            )
            return None
        _add_boxes(p, rank, item_index, desc.boxes)
    return p


def _holds_data(desc: TensorDesc) -> bool:
    return any(not b.is_empty for b in desc.boxes)


def _summarize(problems: list[str]) -> str:
    shown = problems[:MAX_REPORTED_PROBLEMS]
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more else "")


# Read planning


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPiece:
    """Read frames ``[frame_lo, frame_hi)`` of chunk ``chunk_index`` and place part of them.

    ``flat`` pieces are contiguous in both the chunk and the destination box: raw chunk
    bytes ``[raw_lo, raw_hi)`` go to destination elements from ``dest_elem``.
    Other pieces copy ``box`` (global coordinates) element by element.
    """

    chunk_index: int
    frame_lo: int
    frame_hi: int
    box: Box
    flat: bool
    raw_lo: int
    raw_hi: int
    dest_elem: int


def plan_reads(
    chunks: Sequence[Chunk], dest: Box, itemsize: int, *, max_piece_nbytes: int,
    max_strided_nbytes: int | None = None,
) -> list[ReadPiece]:
    """Pieces that fill ``dest`` from ``chunks``; each reads only the frames it needs.

    ``max_strided_nbytes`` (default ``max_piece_nbytes``) bounds the span of pieces that
    are not contiguous in both chunk and destination: those are staged in memory.
    """
    strided = max_piece_nbytes if max_strided_nbytes is None else max_strided_nbytes
    pieces: list[ReadPiece] = []
    if dest.is_empty:
        return pieces
    for ci in touching(chunks, dest):
        chunk = chunks[ci]
        inter = intersect(chunk.box, dest)
        if inter is None:
            continue
        local = inter.relative_to(chunk.box)
        lo, hi = element_span(chunk.box.sizes, local)
        in_dest = inter.relative_to(dest)
        d_lo, d_hi = element_span(dest.sizes, in_dest)
        if hi - lo == inter.numel and d_hi - d_lo == inter.numel:
            pieces.extend(_flat_pieces(ci, chunk, lo * itemsize, hi * itemsize, d_lo, itemsize,
                                       inter, max_piece_nbytes))
            continue
        # A piece reads whole frames, so cutting below a frame only re-reads (and re-decodes)
        # the same frame: a one-frame chunk (a DCP blob) would be decoded once per piece.
        max_elements = max(1, max(strided, chunk.frame_raw_nbytes) // itemsize)
        run, gap = _run_and_gap(chunk.box.sizes, local)
        if gap * itemsize >= chunk.frame_raw_nbytes:
            # A whole frame may lie between two runs of wanted elements: cut the piece at
            # every run so that frame is never read (a column slice of wide rows). Runs this
            # far apart never share a frame, so no frame is read twice.
            max_elements = min(max_elements, run)
        for sub in split_for_span(chunk.box.sizes, local, max_elements):
            s_lo, s_hi = element_span(chunk.box.sizes, sub)
            f_lo, f_hi = _frames(chunk, s_lo * itemsize, s_hi * itemsize)
            pieces.append(ReadPiece(
                chunk_index=ci, frame_lo=f_lo, frame_hi=f_hi, box=sub.shifted(chunk.box.offsets),
                flat=False, raw_lo=s_lo * itemsize, raw_hi=s_hi * itemsize, dest_elem=0,
            ))
    return pieces


def _run_and_gap(sizes: tuple[int, ...], local: Box) -> tuple[int, int]:
    """Elements in each contiguous run of ``local`` in the C layout of ``sizes``, and the
    elements skipped between consecutive runs (0 when ``local`` is one run)."""
    k = len(sizes) - 1
    while k >= 0 and local.sizes[k] == sizes[k]:
        k -= 1
    if k < 0:
        return local.numel, 0
    run = local.sizes[k] * math.prod(sizes[k + 1:])
    j = k - 1
    while j >= 0 and local.sizes[j] == 1:
        j -= 1
    if j < 0:
        return run, 0
    return run, math.prod(sizes[j + 1:]) - run


def _flat_pieces(
    ci: int, chunk: Chunk, raw_lo: int, raw_hi: int, dest_elem: int, itemsize: int, inter: Box,
    max_piece_nbytes: int,
) -> list[ReadPiece]:
    frame = chunk.frame_raw_nbytes
    step = max(frame, (max_piece_nbytes // frame) * frame)
    out = []
    start = raw_lo
    while start < raw_hi:
        stop = min(raw_hi, (start // step + 1) * step)
        # Cut on element boundaries so each piece converts dtypes on its own.
        stop = raw_hi if stop >= raw_hi else stop - (stop - raw_lo) % itemsize
        if stop <= start:
            stop = min(raw_hi, start + itemsize)
        f_lo, f_hi = _frames(chunk, start, stop)
        out.append(ReadPiece(
            chunk_index=ci, frame_lo=f_lo, frame_hi=f_hi, box=inter, flat=True,
            raw_lo=start, raw_hi=stop, dest_elem=dest_elem + (start - raw_lo) // itemsize,
        ))
        start = stop
    return out


def _frames(chunk: Chunk, raw_lo: int, raw_hi: int) -> tuple[int, int]:
    f = chunk.frame_raw_nbytes
    return raw_lo // f, -(-raw_hi // f)
