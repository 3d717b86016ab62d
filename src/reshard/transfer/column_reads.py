"""Reads that take some of a chunk's columns, checked against its column checksums.

A destination that holds part of dim 1 (a ``Shard(1)`` of a checkpoint saved by rows)
needs a part of every row. Checking whole frames read every byte of the chunk; with
column checksums (core.column_checks) a reader copies only its tiles out of the mapped
file and checks each tile where it landed, while it is still in cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .. import config
from ..adapters.tensors import flat_view, torch_dtype
from ..codecs import crc32c
from ..core.column_checks import TileRead, checked_segments, plan_tile_reads, run_count, segments, tile_rows
from ..core.layout import Box, intersect
from ..errors import CorruptCheckpointError
from ..format.chunk_table import touching
from ..format.column_crcs import ColumnCrcs
from ..format.manifest import Chunk
from ..storage.base import Store, can_map, let_go, view_of
from .read import Target, _bytes_array, _scratch
from .write import tile_crcs

READ_NBYTES = 8 << 20
"""About the rows of a chunk one job maps at a time."""


@dataclass(slots=True)
class TileJob:
    """Read the tiles ``read`` of ``chunk`` into ``target``, where they meet ``need``."""

    target: Target
    chunk: Chunk
    read: TileRead
    segments: list[tuple[int, int]]
    need: Box

    @property
    def nbytes(self) -> int:
        """The bytes of the tiles read (what the job costs, and what it counts as read)."""
        box = self.chunk.box
        col_nbytes = self.chunk.raw_nbytes // (box.sizes[0] * box.sizes[1])
        rows = self.chunk.column_crcs.rows  # type: ignore[union-attr]
        lo, hi = self.read.run_lo * rows, min(self.read.run_hi * rows, box.sizes[0])
        cols = self.segments[self.read.seg_hi - 1][1] - self.segments[self.read.seg_lo][0]
        return (hi - lo) * cols * col_nbytes


def plan_column_reads(
    store: Store, target: Target, slot: int, skip: set[tuple[int, int]]
) -> tuple[list[TileJob], set[int]]:
    """The tile reads of ``target`` from chunks whose column checksums let it read less
    than whole frames, and the indices of those chunks (the frame path skips them)."""
    jobs: list[TileJob] = []
    handled: set[int] = set()
    entry = target.entry
    if len(entry.shape) < 2 or not can_map(store):
        return jobs, handled
    chunks = entry.chunks
    for ci in touching(chunks, target.box):
        chunk = chunks[ci]
        crcs = chunk.column_crcs
        if crcs is None or chunk.codec.name != "identity" or (skip and (slot, ci) in skip):
            continue
        need = intersect(chunk.box, target.box)
        if need is None:
            continue
        box = chunk.box
        segs = segments(box.offsets[1], box.sizes[1], entry.shape[1], crcs.parts)
        row_nbytes = chunk.raw_nbytes // box.sizes[0]
        rows_lo = need.offsets[0] - box.offsets[0]
        cols_lo = need.offsets[1] - box.offsets[1]
        reads = plan_tile_reads(
            box.sizes[0], crcs.rows, segs, (rows_lo, rows_lo + need.sizes[0]),
            (cols_lo, cols_lo + need.sizes[1]), max_rows=max(1, READ_NBYTES // row_nbytes),
        )
        if reads is None:
            continue
        handled.add(ci)
        jobs.extend(TileJob(target, chunk, r, segs, need) for r in reads)
    return jobs, handled


def run_tile_job(store: Store, job: TileJob) -> None:
    """Copy the job's tiles into its target and check each one's CRC-32C."""
    chunk = job.chunk
    crcs = chunk.column_crcs
    assert crcs is not None
    box = chunk.box
    n_rows, rows = box.sizes[0], crcs.rows
    row_nbytes = chunk.raw_nbytes // n_rows
    col_nbytes = row_nbytes // box.sizes[1]
    first, last = job.read.run_lo * rows, min(job.read.run_hi * rows, n_rows)
    lo, nbytes = chunk.offset + first * row_nbytes, (last - first) * row_nbytes
    view = view_of(store, chunk.file, lo, nbytes, counted=job.nbytes)
    if view is None:  # the store stopped mapping (it never does): a bug, not bad bytes
        raise CorruptCheckpointError(f"chunk at offsets {list(box.offsets)} in {chunk.file}: "
                                     "internal error, no mapping for a column read")
    try:
        table = np.frombuffer(view, dtype=np.uint8).reshape(last - first, row_nbytes)
        _copy_tiles(job, table, first, col_nbytes)
        del table
    finally:
        let_go(store, chunk.file, lo, nbytes)


def _copy_tiles(job: TileJob, table: np.ndarray, first: int, col_nbytes: int) -> None:
    chunk, target = job.chunk, job.target
    crcs = chunk.column_crcs
    assert crcs is not None
    box, rows, n_segs = chunk.box, crcs.rows, len(job.segments)
    dest = target.staging if target.staging is not None else target.tensor
    src_dtype = torch_dtype(target.entry.dtype)
    need, tbox = job.need, target.box
    # The needed rows and columns relative to the chunk.
    n0 = need.offsets[0] - box.offsets[0]
    n1 = n0 + need.sizes[0]
    m0 = need.offsets[1] - box.offsets[1]
    m1 = m0 + need.sizes[1]
    # Where the destination's later dims are the chunk's, a tile's part is a run of rows
    # and columns of the destination seen as a matrix: placed by slicing, as bytes (the
    # same dtype) or as elements (converted by torch).
    as_matrix = need.sizes[2:] == box.sizes[2:] and tbox.sizes[2:] == box.sizes[2:]
    same_dtype = dest.dtype == src_dtype
    dest_row = tbox.sizes[1] * col_nbytes
    dest_rows = (_bytes_array(flat_view(dest)).reshape(tbox.sizes[0], dest_row)
                 if as_matrix and same_dtype else None)
    dest_elems = dest.view(tbox.sizes[0], -1) if as_matrix and not same_dtype else None
    inner = col_nbytes // target.entry.itemsize  # elements per column
    row_shift, col_shift = box.offsets[0] - tbox.offsets[0], box.offsets[1] - tbox.offsets[1]

    def place(staged: np.ndarray, p0: int, p1: int, q0: int, q1: int) -> None:
        """Put what the destination takes of the chunk's rows ``[p0, p1)`` x columns
        ``[q0, q1)``, staged (checked or not yet), into it."""
        r0, r1 = max(p0, n0), min(p1, n1)
        k0, k1 = max(q0, m0), min(q1, m1)
        if r0 >= r1 or k0 >= k1:
            return
        if dest_rows is not None:
            np.copyto(dest_rows[r0 + row_shift:r1 + row_shift,
                                (k0 + col_shift) * col_nbytes:(k1 + col_shift) * col_nbytes],
                      staged[r0 - p0:r1 - p0, (k0 - q0) * col_nbytes:(k1 - q0) * col_nbytes])
            return
        values = torch.from_numpy(staged.reshape(-1)).view(src_dtype)
        if dest_elems is not None:
            matrix = values.view(p1 - p0, (q1 - q0) * inner)
            dest_elems[r0 + row_shift:r1 + row_shift,
                       (k0 + col_shift) * inner:(k1 + col_shift) * inner].copy_(
                matrix[r0 - p0:r1 - p0, (k0 - q0) * inner:(k1 - q0) * inner])
            return
        piece = Box((box.offsets[0] + p0, box.offsets[1] + q0, *box.offsets[2:]),
                    (p1 - p0, q1 - q0, *box.sizes[2:]))
        part = intersect(piece, need)
        if part is not None:
            dest[part.relative_to(tbox).slices()].copy_(
                values.view(piece.sizes)[part.relative_to(piece).slices()])

    for run in range(job.read.run_lo, job.read.run_hi):
        a0, a1 = run * rows, min((run + 1) * rows, box.sizes[0])
        block = table[a0 - first:a1 - first]
        for s in range(job.read.seg_lo, job.read.seg_hi):
            c0, c1 = job.segments[s]
            expected = crcs.crc32c[run * n_segs + s]
            if dest_rows is not None and n0 <= a0 and a1 <= n1 and m0 <= c0 and c1 <= m1:
                out = dest_rows[a0 + row_shift:a1 + row_shift,
                                (c0 + col_shift) * col_nbytes:(c1 + col_shift) * col_nbytes]
                if out.flags.c_contiguous:
                    # Copy it in place and check it there, while it is in cache.
                    np.copyto(out, block[:, c0 * col_nbytes:c1 * col_nbytes])
                    _check(chunk, run, s, a0, a1, c0, c1, out, expected)
                    continue
            # Narrower than the destination's rows, only partly needed, or converted:
            # checked through this thread's buffer.
            _stage_tile(chunk, table, first, col_nbytes, run, s, a0, a1, c0, c1, expected, place)


STAGE_NBYTES = 4 << 20
"""The most bytes of a tile staged at once where it cannot be copied into place."""


def _stage_tile(chunk: Chunk, table: np.ndarray, first: int, col_nbytes: int, run: int, s: int,
                a0: int, a1: int, c0: int, c1: int, expected: int,
                place: Callable[[np.ndarray, int, int, int, int], None]) -> None:
    """Copy tile ``(run, s)`` (the chunk's rows ``[a0, a1)`` x columns ``[c0, c1)``)
    into this thread's scratch buffer in pieces of at most ``STAGE_NBYTES`` (whole rows
    of the segment, or columns of one row), ``place`` each, and check the tile's CRC-32C
    carried across the pieces.

    A tile has no bound of its own (one row of a very wide tensor; a manifest may name
    runs of any length): staged whole, it cost memory the frame path never takes."""
    crc = 0
    for r0, r1, k0, k1 in _pieces(a0, a1, c0, c1, col_nbytes, STAGE_NBYTES):
        src = table[r0 - first:r1 - first, k0 * col_nbytes:k1 * col_nbytes]
        staged = _scratch(1, src.size).reshape(src.shape)
        np.copyto(staged, src)
        crc = crc32c(staged.data, crc)
        place(staged, r0, r1, k0, k1)
    if crc != expected:
        raise _tile_error(chunk, run, s, a0, a1, c0, c1)


def _pieces(a0: int, a1: int, c0: int, c1: int, col_nbytes: int, limit: int
            ) -> Iterator[tuple[int, int, int, int]]:
    """Rows ``[a0, a1)`` x columns ``[c0, c1)`` in C order, as pieces ``(r0, r1, k0, k1)``
    of at most ``limit`` bytes: runs of whole rows, or runs of columns of one row (at
    least one column)."""
    seg_nbytes = (c1 - c0) * col_nbytes
    if (a1 - a0) * seg_nbytes <= limit:
        yield a0, a1, c0, c1
    elif seg_nbytes <= limit:
        step = limit // seg_nbytes
        for r in range(a0, a1, step):
            yield r, min(r + step, a1), c0, c1
    else:
        step = max(1, limit // col_nbytes)
        for r in range(a0, a1):
            for k in range(c0, c1, step):
                yield r, r + 1, k, min(k + step, c1)


def stored_tile_crcs(
    store: Store, chunk: Chunk, segs: list[tuple[int, int]], rows: int, *, batch_nbytes: int
) -> Iterator[tuple[int, list[int]]]:
    """The CRC-32C of the tiles of ``chunk`` (stored raw) for ``segs`` and ``rows``, as
    ``(first run, checksums of the next runs, run by run)``, reading about
    ``batch_nbytes`` at a time.

    A run of rows can be far larger than a batch (many parts make narrow tiles of many
    rows; one row may be wider than a batch; a manifest names any ``rows``): such a run
    is read a batch at a time and each tile's checksum carried on across the reads
    (CRC-32C of a concatenation continues from the CRC of its first part), so that
    verify and convert never hold more than about a batch."""
    box = chunk.box
    n_rows = box.sizes[0]
    row_nbytes = chunk.raw_nbytes // n_rows
    col_nbytes = row_nbytes // box.sizes[1]
    seg_bytes = [(lo * col_nbytes, hi * col_nbytes) for lo, hi in segs]
    runs = run_count(n_rows, rows)
    batch_rows = max(1, batch_nbytes // max(1, row_nbytes))
    if rows <= batch_rows and row_nbytes <= batch_nbytes:
        per = batch_rows // rows
        for lo in range(0, runs, per):
            hi = min(lo + per, runs)
            first, last = lo * rows, min(hi * rows, n_rows)
            buf = np.empty((last - first, row_nbytes), dtype=np.uint8)
            store.read_into(chunk.file, chunk.offset + first * row_nbytes, buf.reshape(-1).data)
            yield lo, tile_crcs(buf, rows, seg_bytes, 0, hi - lo)
        return
    for run in range(runs):
        running = [0] * len(seg_bytes)
        for row_lo in range(run * rows, min((run + 1) * rows, n_rows), batch_rows):
            row_hi = min(row_lo + batch_rows, (run + 1) * rows, n_rows)
            base = chunk.offset + row_lo * row_nbytes
            if row_hi - row_lo > 1 or row_nbytes <= batch_nbytes:
                buf = np.empty((row_hi - row_lo, row_nbytes), dtype=np.uint8)
                store.read_into(chunk.file, base, buf.reshape(-1).data)
                for i, (a, b) in enumerate(seg_bytes):
                    running[i] = crc32c(np.ascontiguousarray(buf[:, a:b]).data, running[i])
                continue
            # One row wider than a batch: each segment is contiguous; read it in pieces.
            for i, (a, b) in enumerate(seg_bytes):
                for p in range(a, b, batch_nbytes):
                    piece = np.empty(min(batch_nbytes, b - p), dtype=np.uint8)
                    store.read_into(chunk.file, base + p, piece.data)
                    running[i] = crc32c(piece.data, running[i])
        yield run, running


def column_crcs_of(store: Store, chunk: Chunk, shape: tuple[int, ...], parts: int) -> ColumnCrcs | None:
    """The column checksums a save would give ``chunk`` of a tensor of ``shape``, from its
    stored bytes (reshard convert writes chunks frame by frame, then adds them); None when
    a save would give it none."""
    if chunk.codec.name != "identity":
        return None
    box = chunk.box
    segs = checked_segments(shape, box.offsets, box.sizes, chunk.raw_nbytes, parts,
                            config.COLUMN_CHECKSUM_MIN_NBYTES)
    if segs is None:
        return None
    col_nbytes = chunk.raw_nbytes // (box.sizes[0] * box.sizes[1])
    rows = tile_rows(max(hi - lo for lo, hi in segs) * col_nbytes)
    crcs: list[int] = []
    for _, part in stored_tile_crcs(store, chunk, segs, rows, batch_nbytes=READ_NBYTES):
        crcs += part
    return ColumnCrcs(parts=parts, rows=rows, crc32c=tuple(crcs))


def _check(chunk: Chunk, run: int, seg: int, a0: int, a1: int, c0: int, c1: int,
           data: np.ndarray, expected: int) -> None:
    if crc32c(data.data) != expected:
        raise _tile_error(chunk, run, seg, a0, a1, c0, c1)


def tile_name(chunk: Chunk, a0: int, a1: int, c0: int, c1: int) -> str:
    """How errors name the tile of the chunk's rows ``[a0, a1)`` x columns ``[c0, c1)``
    (in the tensor's indices)."""
    r, c = chunk.box.offsets[0], chunk.box.offsets[1]
    return f"the column tile of rows {r + a0}..{r + a1} and columns {c + c0}..{c + c1}"


def _tile_error(chunk: Chunk, run: int, seg: int, a0: int, a1: int, c0: int, c1: int
                ) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: "
        f"{tile_name(chunk, a0, a1, c0, c1)} (run {run}, segment {seg}) fails its CRC-32C check"
    )
