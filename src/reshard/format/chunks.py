"""Validating all chunks of a tensor entry at once, as columns.

A manifest of 2,048 ranks x 500 tensors holds 845k chunks. Checking them one by one
with the per-field helpers of manifest.py (each building a JSON path, each a Python call)
cost ~20 us per chunk. Here every check runs over a whole entry's column of values with
C-level builtins (map, zip, set, min, max, list comparison), ~1 us per chunk.

This is only a fast path: ``checked_columns`` returns None as soon as anything is not
plainly valid, and the caller then runs the per-chunk checks, which find the fault and
name its JSON path. It must never accept what those checks refuse; it may refuse what
they accept (a tiling that is not a grid, mixed identity and other codecs), which only
costs time. tests/unit/test_manifest.py compares the two on mutated entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from operator import add, itemgetter, mul, sub
from typing import Any, Literal

from ..core.layout import is_grid
from ..errors import CorruptCheckpointError
from .column_crcs import FIELD as COLUMN_CRCS_FIELD
from .column_crcs import ColumnCrcs, parse_column_crcs
from .limits import MAX_DIM_SIZE, MAX_FILE_OFFSET, MAX_FRAME_RAW_NBYTES, MAX_INT

_FIELDS = itemgetter(
    "offsets", "sizes", "file", "offset", "nbytes", "raw_nbytes", "codec", "frame_raw_nbytes", "frames"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Columns:
    """The checked chunks of one entry, field by field (index ``i`` is chunk ``i``)."""

    offsets: list[tuple[int, ...]]
    sizes: list[tuple[int, ...]]
    file: tuple[int, ...]
    offset: tuple[int, ...]
    nbytes: tuple[int, ...]
    raw_nbytes: tuple[int, ...]
    codec: tuple[int, ...]
    frame_raw_nbytes: tuple[int, ...]
    frame_nbytes: list[int]
    """Every chunk's frames, one after the other; ``frame_bounds`` cuts them per chunk."""
    frame_crc32c: list[int]
    frame_bounds: list[int] | None
    """Chunk ``i`` has frames ``[bounds[i], bounds[i + 1])``; None when each has one."""
    grid_starts: list[list[int]]
    """Per dim, the sorted start offsets of the grid's cells."""
    by_offsets: dict[tuple[int, ...], int]
    """Each chunk's index by its box's offsets (one cell of the grid each)."""
    column_crcs: dict[int, ColumnCrcs] | None = None
    """The chunks that carry column checksums, by index (format.column_crcs)."""


def checked_columns(
    items: list[Any], shape: tuple[int, ...], itemsize: int, n_files: int,
    identity_codecs: Sequence[bool],
) -> Columns | None:
    """The chunks ``items`` of an entry of ``shape`` as columns, when every check of
    docs/FORMAT.md passes and their boxes are the cells of a grid over ``shape``;
    else None. ``identity_codecs[i]``: codec ``i`` stores raw bytes."""
    n = len(items)
    if not n:
        return None
    if n <= SMALL_ENTRY_CHUNKS:
        return _small_columns(items, shape, itemsize, n_files, identity_codecs)
    if set(map(type, items)) != {dict}:
        return None
    try:
        rows = list(map(_FIELDS, items))
    except KeyError:
        return None
    offs, sizes, file, offset, nbytes, raw, codec, frame_raw, frames = zip(*rows)
    scalars = file + offset + nbytes + raw + codec + frame_raw
    if set(map(type, scalars)) != {int} or min(scalars) < 0 or max(scalars) > MAX_INT:
        return None
    if (max(file) >= n_files or max(codec) >= len(identity_codecs) or min(frame_raw) < 1
            or max(frame_raw) > MAX_FRAME_RAW_NBYTES):
        return None
    boxes = _boxes(offs, sizes, shape)
    if boxes is None:
        return None
    numel = boxes[2]
    starts, by_offsets = boxes[3], boxes[4]
    if list(raw) != list(map(mul, numel, repeat(itemsize))):
        return None
    counts = list(map(len, frames)) if set(map(type, frames)) == {list} else None
    # ceil(raw / frame_raw): the frame count the format requires.
    if counts is None or counts != [-(-r // f) for r, f in zip(raw, frame_raw)]:
        return None
    flat = _frames(frames)
    if flat is None:
        return None
    frame_nbytes, frame_crc = flat
    bounds = None if max(counts) == 1 else [0, *accumulate(counts)]
    if _sums(frame_nbytes, bounds) != list(nbytes) or max(map(add, offset, nbytes)) > MAX_FILE_OFFSET:
        return None
    if not identity_ok(codec, identity_codecs, raw, nbytes, frame_raw, frame_nbytes, counts, bounds):
        return None
    extra = _column_crcs(items, shape, boxes[0], boxes[1], codec, identity_codecs)
    if extra is False:
        return None
    return Columns(
        offsets=boxes[0], sizes=boxes[1], file=file, offset=offset, nbytes=nbytes, raw_nbytes=raw,
        codec=codec, frame_raw_nbytes=frame_raw, frame_nbytes=frame_nbytes, frame_crc32c=frame_crc,
        frame_bounds=bounds, grid_starts=starts, by_offsets=by_offsets, column_crcs=extra,
    )


_PLAIN_FIELDS = 9  # the fields of a chunk without column_crcs


def _column_crcs(
    items: list[Any], shape: tuple[int, ...], offsets: list[tuple[int, ...]],
    sizes: list[tuple[int, ...]], codec: Sequence[int], identity_codecs: Sequence[bool],
) -> dict[int, ColumnCrcs] | None | Literal[False]:
    """The chunks' valid column checksums by index (None: no chunk has them), or False
    when one is not valid or a chunk holds other extra fields (the per-chunk checks then
    word it, or ignore fields a later minor version added)."""
    if set(map(len, items)) == {_PLAIN_FIELDS}:
        return None
    found: dict[int, ColumnCrcs] = {}
    for i, item in enumerate(items):
        if len(item) == _PLAIN_FIELDS:
            continue
        if len(item) != _PLAIN_FIELDS + 1 or COLUMN_CRCS_FIELD not in item:
            return False
        try:
            found[i] = parse_column_crcs(item[COLUMN_CRCS_FIELD], shape=shape, offsets=offsets[i],
                                         sizes=sizes[i], identity=identity_codecs[codec[i]], path="")
        except CorruptCheckpointError:
            return False
    return found


def _sums(values: list[int], bounds: list[int] | None) -> list[int]:
    """The sum of each chunk's frame sizes (exact: Python ints)."""
    if bounds is None:
        return values
    running = [0, *accumulate(values)]
    return list(map(sub, map(running.__getitem__, bounds[1:]), map(running.__getitem__, bounds[:-1])))


def _boxes(
    offs: tuple[Any, ...], sizes: tuple[Any, ...], shape: tuple[int, ...]
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[int], list[list[int]],
           dict[tuple[int, ...], int]] | None:
    """(offsets, sizes, element counts, per dim the grid's cell starts, chunk index by
    offsets) when every box is a list of ``len(shape)`` ints, non-empty, inside
    ``shape``, the boxes distinct and a grid over ``shape``."""
    ndim = len(shape)
    if set(map(type, offs)) != {list} or set(map(type, sizes)) != {list}:
        return None
    if set(map(len, offs)) != {ndim} or set(map(len, sizes)) != {ndim}:
        return None
    n = len(offs)
    numel = [1] * n
    intervals = []
    if ndim:
        flat_o: list[Any] = list(chain.from_iterable(offs))
        flat_s: list[Any] = list(chain.from_iterable(sizes))
        if set(map(type, flat_o)) != {int} or set(map(type, flat_s)) != {int}:
            return None
        if min(flat_o) < 0 or min(flat_s) < 1 or max(flat_s) > MAX_DIM_SIZE:
            return None
        for d, extent in enumerate(shape):
            o, s = flat_o[d::ndim], flat_s[d::ndim]
            if max(map(add, o, s)) > extent:
                return None
            numel = list(map(mul, numel, s))
            intervals.append(set(zip(o, s)))
    offsets: list[tuple[int, ...]] = list(map(tuple, offs))
    grid = _grid(shape, offsets, intervals)
    if grid is None:
        return None
    return offsets, list(map(tuple, sizes)), numel, *grid


def _grid(
    shape: tuple[int, ...], offsets: list[tuple[int, ...]], intervals: list[set[tuple[int, int]]]
) -> tuple[list[list[int]], dict[tuple[int, ...], int]] | None:
    """(per dim the grid's cell starts, box index by offsets) when the boxes, whose
    intervals on each dim are ``intervals``, are distinct cells of a grid over ``shape``."""
    # Distinct boxes whose intervals form a grid of as many cells tile the shape. Where
    # the intervals of each dim partition it (is_grid), a box's offsets name its cell:
    # boxes with distinct offsets are distinct, and boxes that differ only in sizes
    # leave two intervals starting at one offset, which is_grid refuses.
    n = len(offsets)
    by_offsets = dict(zip(offsets, range(n)))
    if len(by_offsets) != n or not is_grid(shape, intervals, n):
        return None
    return [sorted({o for o, _ in found}) for found in intervals], by_offsets


SMALL_ENTRY_CHUNKS = 8
"""Entries of at most this many chunks are checked chunk by chunk in plain loops
(``_small_columns``): the column checks cost ~33 us per entry whatever its size, which
was a third of loading 5,000 small tensors; the loops take ~10 us for two chunks."""


def _small_columns(
    items: list[Any], shape: tuple[int, ...], itemsize: int, n_files: int,
    identity_codecs: Sequence[bool],
) -> Columns | None:
    """``checked_columns`` for a few chunks: the same checks, the same result."""
    ndim = len(shape)
    n_codecs = len(identity_codecs)
    offsets: list[tuple[int, ...]] = []
    sizes: list[tuple[int, ...]] = []
    scalars: list[tuple[int, int, int, int, int, int]] = []
    frame_nbytes: list[int] = []
    frame_crc: list[int] = []
    counts: list[int] = []
    intervals: list[set[tuple[int, int]]] = [set() for _ in range(ndim)]
    for item in items:
        if type(item) is not dict:
            return None
        try:
            offs, szs, file, offset, nbytes, raw, codec, frame_raw, frames = _FIELDS(item)
        except KeyError:
            return None
        row = (file, offset, nbytes, raw, codec, frame_raw)
        for v in row:
            if type(v) is not int or v < 0 or v > MAX_INT:
                return None
        if (file >= n_files or codec >= n_codecs or frame_raw < 1
                or frame_raw > MAX_FRAME_RAW_NBYTES):
            return None
        if type(offs) is not list or type(szs) is not list or len(offs) != ndim or len(szs) != ndim:
            return None
        numel = 1
        for d in range(ndim):
            o, z = offs[d], szs[d]
            if type(o) is not int or type(z) is not int:
                return None
            if o < 0 or z < 1 or z > MAX_DIM_SIZE or o + z > shape[d]:
                return None
            intervals[d].add((o, z))
            numel *= z
        if raw != numel * itemsize:
            return None
        if type(frames) is not list or len(frames) != -(-raw // frame_raw):
            return None
        total = 0
        for pair in frames:
            if type(pair) is not list or len(pair) != 2:
                return None
            size, crc = pair
            if (type(size) is not int or type(crc) is not int or size < 0 or size > MAX_DIM_SIZE
                    or crc < 0 or crc > 0xFFFFFFFF):
                return None
            frame_nbytes.append(size)
            frame_crc.append(crc)
            total += size
        if total != nbytes or offset + nbytes > MAX_FILE_OFFSET:
            return None
        offsets.append(tuple(offs))
        sizes.append(tuple(szs))
        scalars.append(row)
        counts.append(len(frames))
    grid = _grid(shape, offsets, intervals)
    if grid is None:
        return None
    file_c, offset_c, nbytes_c, raw_c, codec_c, frame_raw_c = zip(*scalars)
    bounds = None if max(counts) == 1 else [0, *accumulate(counts)]
    if not identity_ok(codec_c, identity_codecs, raw_c, nbytes_c, frame_raw_c, frame_nbytes,
                       counts, bounds):
        return None
    extra = _column_crcs(items, shape, offsets, sizes, codec_c, identity_codecs)
    if extra is False:
        return None
    return Columns(
        offsets=offsets, sizes=sizes, file=file_c, offset=offset_c, nbytes=nbytes_c,
        raw_nbytes=raw_c, codec=codec_c, frame_raw_nbytes=frame_raw_c, frame_nbytes=frame_nbytes,
        frame_crc32c=frame_crc, frame_bounds=bounds, grid_starts=grid[0], by_offsets=grid[1],
        column_crcs=extra,
    )


def _frames(frames: tuple[Any, ...]) -> tuple[list[int], list[int]] | None:
    """Every ``[nbytes, crc32c]`` pair, flattened, when all are in-range int pairs."""
    pairs: list[Any] = list(chain.from_iterable(frames))
    if set(map(type, pairs)) != {list} or set(map(len, pairs)) != {2}:
        return None
    values: list[Any] = list(chain.from_iterable(pairs))
    if set(map(type, values)) != {int}:
        return None
    nb, crc = values[0::2], values[1::2]
    if min(nb) < 0 or max(nb) > MAX_DIM_SIZE or min(crc) < 0 or max(crc) > 0xFFFFFFFF:
        return None
    return nb, crc


def identity_ok(
    codec: tuple[int, ...], identity_codecs: Sequence[bool], raw: tuple[int, ...],
    nbytes: tuple[int, ...], frame_raw: tuple[int, ...], frame_nbytes: list[int],
    counts: list[int], bounds: list[int] | None,
) -> bool:
    """Identity frames store exactly their raw bytes: the stored total is the raw total
    and every frame but the last of its chunk holds ``frame_raw_nbytes`` (the frame sums
    and counts are already checked, so the last then holds the rest)."""
    kinds = {identity_codecs[c] for c in set(codec)}
    if kinds == {False}:
        return True
    if kinds != {True}:
        return False  # mixed codecs: the per-chunk checks decide
    if list(nbytes) != list(raw):
        return False
    if bounds is None:
        return True
    expected = list(chain.from_iterable(map(repeat, frame_raw, counts)))
    lasts = [b - 1 for b in bounds[1:]]
    for i in lasts:
        expected[i] = frame_nbytes[i]
    return expected == frame_nbytes
