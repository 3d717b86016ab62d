"""Box math: every tensor is a global array tiled by boxes.

A box is ``(offsets, sizes)`` in global index space. Pure Python: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from .pickling import slots_reduce

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, slots=True)
class Box:
    """A hyper-rectangle of a global array: ``offsets`` plus ``sizes``, one int per dim."""

    __reduce__ = slots_reduce

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.sizes)

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    @property
    def is_empty(self) -> bool:
        return any(s == 0 for s in self.sizes)

    @property
    def ends(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offsets, self.sizes))

    def relative_to(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer`` (which must contain it)."""
        return Box(tuple(a - b for a, b in zip(self.offsets, outer.offsets)), self.sizes)

    def shifted(self, by: Sequence[int]) -> Box:
        return Box(tuple(a + b for a, b in zip(self.offsets, by)), self.sizes)

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))


def full_box(shape: Sequence[int]) -> Box:
    return Box((0,) * len(shape), tuple(shape))


def intersect(a: Box, b: Box) -> Box | None:
    """The common part of two boxes, or None when they share no element."""
    offsets = []
    sizes = []
    for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes):
        lo = ao if ao > bo else bo
        hi = min(ao + as_, bo + bs)
        if hi <= lo:
            return None
        offsets.append(lo)
        sizes.append(hi - lo)
    return Box(tuple(offsets), tuple(sizes))


def contains(outer: Box, inner: Box) -> bool:
    return all(
        oo <= io and io + isz <= oo + osz
        for oo, osz, io, isz in zip(outer.offsets, outer.sizes, inner.offsets, inner.sizes)
    )


def c_strides(sizes: Sequence[int]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``sizes``."""
    strides = [1] * len(sizes)
    for d in range(len(sizes) - 2, -1, -1):
        strides[d] = strides[d + 1] * sizes[d + 1]
    return tuple(strides)


def strides_overlap(sizes: Sequence[int], strides: Sequence[int], *, max_exact: int = 1 << 22) -> bool | None:
    """Whether two elements of a strided array of ``sizes`` and ``strides`` (in elements)
    share memory: False when none do, True when some do, None when it cannot tell cheaply.

    Dims nested by stride (each stride beyond the reach of the smaller ones), which every
    view that slicing, transposing or channels_last gives has, share nothing; other
    layouts (only ``as_strided`` makes them) are checked element by element up to
    ``max_exact`` elements.
    """
    if not math.prod(sizes):
        return False
    dims = sorted((abs(st), n) for st, n in zip(strides, sizes) if n > 1)
    reach = 0
    for st, n in dims:
        if st <= reach:
            break
        reach += st * (n - 1)
    else:
        return False
    if any(st == 0 for st, _ in dims):
        return True
    count = math.prod(n for _, n in dims)
    if count > max_exact:
        return None
    import numpy as np

    offsets = element_offsets([n for _, n in dims], [st for st, _ in dims])
    return bool(len(np.unique(offsets)) < count)


def views_overlap(
    gap: int, sizes_a: Sequence[int], sizes_b: Sequence[int], strides: Sequence[int],
    *, max_exact: int = 1 << 22,
) -> bool | None:
    """Whether two strided views with the same ``strides`` (in elements), the second
    starting ``gap`` elements after the first, share an element: None when it cannot
    tell cheaply.

    Slices of one buffer (the columns of a fused weight cut into views) have strides
    that nest: each is a multiple of the next smaller one, whose dim extents fit inside
    it. Every address then has one coordinate per dim, and the views share memory
    exactly when their boxes in those coordinates intersect. Other layouts are compared
    element by element up to ``max_exact`` elements.
    """
    if not math.prod(sizes_a) or not math.prod(sizes_b):
        return False
    if gap < 0:
        return views_overlap(-gap, sizes_b, sizes_a, strides, max_exact=max_exact)
    dims = sorted(((st, a, b) for st, a, b in zip(strides, sizes_a, sizes_b) if max(a, b) > 1),
                  reverse=True)
    if not dims:
        return gap == 0
    rest, starts = gap, []
    for st, _, _ in dims:
        start, rest = divmod(rest, st) if st > 0 else (0, rest)
        starts.append(start)
    nested = rest == 0 and all(st > 0 for st, _, _ in dims)
    for (outer, _, _), (inner, a, b), start in zip(dims, dims[1:], starts[1:]):
        nested = nested and outer % inner == 0 and max(a, start + b) <= outer // inner
    if nested:
        return all(start < a for start, (_, a, _) in zip(starts, dims))
    if math.prod(sizes_a) + math.prod(sizes_b) > max_exact:
        return None
    import numpy as np

    return bool(np.intersect1d(element_offsets(sizes_a, strides),
                               element_offsets(sizes_b, strides, gap)).size)


def element_offsets(sizes: Sequence[int], strides: Sequence[int], start: int = 0) -> np.ndarray[Any, Any]:
    """The offset of each element of a strided array (``start`` plus the sum of index
    times stride over the dims), in C order, as a numpy int64 array."""
    import numpy as np

    out = np.full(1, start, dtype=np.int64)
    for st, n in zip(strides, sizes):
        out = (out[:, None] + np.arange(n, dtype=np.int64) * st).ravel()
    return out


def element_span(outer_sizes: Sequence[int], inner: Box) -> tuple[int, int]:
    """``[start, stop)`` element positions that ``inner`` (in outer-local coordinates)
    touches in the C-order layout of an array of ``outer_sizes``."""
    strides = c_strides(outer_sizes)
    start = sum(o * s for o, s in zip(inner.offsets, strides))
    last = start + sum((n - 1) * s for n, s in zip(inner.sizes, strides))
    return start, last + 1


def split_for_span(outer_sizes: Sequence[int], inner: Box, max_elements: int) -> list[Box]:
    """Split ``inner`` into pieces whose C-order span in ``outer`` is at most
    ``max_elements`` (a piece of one element per row is the floor)."""
    lo, hi = element_span(outer_sizes, inner)
    if hi - lo <= max_elements or inner.numel == 0:
        return [inner]
    strides = c_strides(outer_sizes)
    for d, n in enumerate(inner.sizes):  # noqa: B007 - d is used after the break
        if n > 1:
            break
    else:
        return [inner]
    tail = Box(inner.offsets[d + 1 :], inner.sizes[d + 1 :])
    tail_span = element_span(outer_sizes[d + 1 :], tail)
    tail_len = tail_span[1] - tail_span[0]
    rows = max(1, (max_elements - tail_len) // strides[d] + 1) if max_elements >= tail_len else 1
    pieces: list[Box] = []
    for start in range(0, n, rows):
        take = min(rows, n - start)
        offsets = inner.offsets[:d] + (inner.offsets[d] + start,) + inner.offsets[d + 1 :]
        sizes = inner.sizes[:d] + (take,) + inner.sizes[d + 1 :]
        piece = Box(offsets, sizes)
        if take == 1 and tail_len > max_elements:
            pieces.extend(split_for_span(outer_sizes, piece, max_elements))
        else:
            pieces.append(piece)
    return pieces


def column_tiles(box: Box, itemsize: int, blocks: int, tile_nbytes: int) -> list[Box]:
    """``box`` cut for readers that shard dim 1: into ``blocks`` parts along dim 1
    (``torch.chunk`` sizes, at most one per index) and, within each, along dim 0 into
    runs of about ``tile_nbytes``. ``[box]`` when there is nothing to cut: under two
    dims, empty, ``blocks`` of 1, or one part of at most ``tile_nbytes`` (or of one row).

    Tiles are whole rows of their block, so a reader whose own box spans a block's
    columns reads each tile as one contiguous run.
    """
    if box.ndim < 2 or box.is_empty or blocks <= 1:
        return [box]
    n1 = box.sizes[1]
    width = -(-n1 // min(blocks, n1))
    col_cuts = [(c, min(width, n1 - c)) for c in range(0, n1, width)]
    n0 = box.sizes[0]
    # Row runs sized by the widest part and shared by all, so the tiles form a grid
    # (readers find the chunks a box touches by bisection only on grid tilings).
    rows = max(1, tile_nbytes // max(1, width * math.prod(box.sizes[2:]) * itemsize))
    if len(col_cuts) == 1 and rows >= n0:
        return [box]
    # As few runs as ``rows`` allows, of even lengths (they differ by one row at most):
    # cutting ``rows`` at a time could leave a last tile of a single row.
    count = -(-n0 // rows)
    base, longer = divmod(n0, count)
    row_cuts = []
    r = 0
    for i in range(count):
        n = base + (i < longer)
        row_cuts.append((r, n))
        r += n
    return [Box((box.offsets[0] + r, box.offsets[1] + c) + box.offsets[2:], (n, w) + box.sizes[2:])
            for c, w in col_cuts for r, n in row_cuts]


def shard_box(
    shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[tuple[str, int]],
    coordinate: Sequence[int],
) -> Box:
    """The box a mesh coordinate holds, with ``torch.chunk`` semantics.

    ``placements`` has one entry per mesh dim: ``("shard", tensor_dim)`` or
    ``("replicate", -1)``. Shards on the same tensor dim nest in mesh-dim order,
    as DTensor does. Ranks past the end of an uneven split hold empty boxes.
    """
    sizes = list(shape)
    offsets = [0] * len(shape)
    for mesh_dim, (kind, dim) in enumerate(placements):
        if kind == "replicate":
            continue
        if kind != "shard":
            raise ValueError(f"unknown placement kind {kind!r}")
        n = mesh_shape[mesh_dim]
        full = -(-sizes[dim] // n) if sizes[dim] else 0
        start = min(full * coordinate[mesh_dim], sizes[dim])
        stop = min(full * (coordinate[mesh_dim] + 1), sizes[dim])
        offsets[dim] += start
        sizes[dim] = stop - start
    return Box(tuple(offsets), tuple(sizes))


Run = tuple[int, int]  # (global start, length) of consecutive indices along one dim


def placed_runs(
    shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[tuple[str, int, int]],
    coordinate: Sequence[int],
) -> tuple[tuple[Run, ...], ...]:
    """The global indices a mesh coordinate holds along each dim, as runs in local order.

    ``placements`` has one entry per mesh dim: ``("shard", dim, 1)``,
    ``("strided_shard", dim, split_factor)`` or ``("replicate", -1, 1)``. Processed left
    to right as DTensor does: a shard takes its ``torch.chunk`` slice of the indices it
    is given; a strided shard first cuts them into ``split_factor`` chunks, takes its
    slice of each and joins those (FSDP2 over tensor parallelism: ``_StridedShard``). A
    dim with no index left is one empty run at the end of the dim.
    """
    runs: list[list[Run]] = [[(0, n)] if n else [] for n in shape]
    for mesh_dim, (kind, dim, split) in enumerate(placements):
        if kind == "replicate":
            continue
        if kind not in ("shard", "strided_shard") or split < 1:
            raise ValueError(f"unknown placement {(kind, dim, split)!r}")
        n, c = mesh_shape[mesh_dim], coordinate[mesh_dim]
        length = sum(k for _, k in runs[dim])
        pieces = _chunks(length, split) if kind == "strided_shard" else [(0, length)]
        picked: list[Run] = []
        for start, size in pieces:
            lo, hi = _chunks(size, n)[c]
            picked.extend(_take(runs[dim], start + lo, hi))
        runs[dim] = _merged(picked)
    return tuple(tuple(r) if r else ((n, 0),) for r, n in zip(runs, shape))


def _chunks(length: int, n: int) -> list[Run]:
    """``torch.chunk`` of ``length`` into ``n`` parts as (local start, size), empty
    parts included."""
    full = -(-length // n) if length else 0
    return [(min(full * i, length), min(full * (i + 1), length) - min(full * i, length))
            for i in range(n)]


def _take(runs: Sequence[Run], start: int, size: int) -> list[Run]:
    """Local positions ``[start, start + size)`` of ``runs`` as runs."""
    out: list[Run] = []
    pos = 0
    for g, k in runs:
        lo, hi = max(start, pos), min(start + size, pos + k)
        if lo < hi:
            out.append((g + lo - pos, hi - lo))
        pos += k
        if pos >= start + size:
            break
    return out


def _merged(runs: Sequence[Run]) -> list[Run]:
    out: list[Run] = []
    for g, k in runs:
        if out and out[-1][0] + out[-1][1] == g:
            out[-1] = (out[-1][0], out[-1][1] + k)
        else:
            out.append((g, k))
    return out


def run_boxes(runs: Sequence[Sequence[Run]]) -> list[tuple[Box, tuple[int, ...]]]:
    """The boxes of ``placed_runs``, one per combination of runs, each with its offsets
    in the local tensor."""
    out: list[tuple[Box, tuple[int, ...]]] = [(Box((), ()), ())]
    for dim_runs in runs:
        local = [sum(k for _, k in dim_runs[:i]) for i in range(len(dim_runs))]
        out = [(Box(b.offsets + (g,), b.sizes + (k,)), lo + (p,))
               for b, lo in out for (g, k), p in zip(dim_runs, local)]
    return out


def tiling_problem(shape: Sequence[int], boxes: Iterable[Box]) -> str | None:
    """Why the distinct non-empty ``boxes`` do not tile ``shape`` exactly, or None."""
    distinct = {b for b in boxes if 0 not in b.sizes}
    if is_grid_tiling(shape, [b.offsets for b in distinct], [b.sizes for b in distinct]):
        return None
    ndim = len(shape)
    for b in distinct:
        if b.ndim != ndim:
            return f"box {_fmt(b)} has {b.ndim} dims, the tensor has {ndim}"
        if any(o < 0 for o in b.offsets) or any(e > s for e, s in zip(b.ends, shape)):
            return f"box {_fmt(b)} lies outside shape {list(shape)}"
    overlap = _find_overlap(sorted(distinct, key=lambda b: (b.offsets, b.sizes)), 0)
    if overlap is not None:
        return f"boxes {_fmt(overlap[0])} and {_fmt(overlap[1])} overlap"
    covered = sum(b.numel for b in distinct)
    total = math.prod(shape)
    if covered != total:
        return f"boxes cover {covered} of {total} elements (holes)"
    return None


def is_grid_tiling(
    shape: Sequence[int], offsets: Sequence[Sequence[int]], sizes: Sequence[Sequence[int]]
) -> bool:
    """True when the boxes ``(offsets[i], sizes[i])``, which the caller has made distinct,
    are exactly the cells of a grid over ``shape`` (what any mesh/placement sharding
    produces); False means "not shown", not "not a tiling".

    Per dim, the distinct intervals must partition ``[0, shape[d])``; each box is then
    one grid cell, distinct boxes are distinct cells, and as many boxes as cells means
    every cell is covered exactly once. O(boxes x ndim), against the general check's sort
    and overlap search; the per-box work runs in C (map, zip, set) because manifests of
    large worlds hold millions of boxes.
    """
    ndim = len(shape)
    if not offsets or len(offsets) != len(sizes):
        return False
    if set(map(len, offsets)) != {ndim} or set(map(len, sizes)) != {ndim}:
        return False
    intervals = []
    for d in range(ndim):
        at = itemgetter(d)
        intervals.append(set(zip(map(at, offsets), map(at, sizes))))
    return is_grid(shape, intervals, len(offsets))


def is_grid(shape: Sequence[int], intervals: Sequence[set[tuple[int, int]]], n_boxes: int) -> bool:
    """Whether ``n_boxes`` distinct boxes, whose ``(offset, size)`` on dim ``d`` are
    ``intervals[d]``, are the cells of a grid over ``shape`` (see is_grid_tiling)."""
    if not n_boxes or 0 in shape or len(intervals) != len(shape):
        return False
    cells = 1
    for extent, found in zip(shape, intervals):
        pos = 0
        for o, n in sorted(found):
            if o != pos or n <= 0:
                return False
            pos = o + n
        if pos != extent:
            return False
        cells *= len(found)
    return cells == n_boxes


def _find_overlap(boxes: list[Box], dim: int) -> tuple[Box, Box] | None:
    """An overlapping pair among ``boxes`` (already distinct), or None.

    Groups boxes by their interval on ``dim``; groups that share one exact interval
    recurse on the next dim, so mesh-shaped layouts cost O(n log n).
    """
    if len(boxes) < 2:
        return None
    if dim == boxes[0].ndim:
        return boxes[0], boxes[1]
    boxes = sorted(boxes, key=lambda b: b.offsets[dim])
    cluster: list[Box] = [boxes[0]]
    cluster_end = boxes[0].ends[dim]
    for b in boxes[1:]:
        if b.offsets[dim] < cluster_end:
            cluster.append(b)
            cluster_end = max(cluster_end, b.ends[dim])
            continue
        found = _cluster_overlap(cluster, dim)
        if found:
            return found
        cluster, cluster_end = [b], b.ends[dim]
    return _cluster_overlap(cluster, dim)


def _cluster_overlap(cluster: list[Box], dim: int) -> tuple[Box, Box] | None:
    if len(cluster) < 2:
        return None
    first = (cluster[0].offsets[dim], cluster[0].sizes[dim])
    if all((b.offsets[dim], b.sizes[dim]) == first for b in cluster):
        return _find_overlap(cluster, dim + 1)
    # Sweep along ``dim`` (the cluster is sorted by offset there): a box can only overlap
    # boxes whose interval on ``dim`` is still open, not every earlier box. Staggered
    # layouts (bricks offset per column) would otherwise cost all pairs.
    active: list[Box] = []
    for b in cluster:
        start = b.offsets[dim]
        active = [a for a in active if a.offsets[dim] + a.sizes[dim] > start]
        for a in active:
            if intersect(a, b) is not None:
                return a, b
        active.append(b)
    return None


def _fmt(b: Box) -> str:
    return f"(offsets={list(b.offsets)}, sizes={list(b.sizes)})"
