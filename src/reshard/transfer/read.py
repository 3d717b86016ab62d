"""Fill destination tensors from saved chunks: read only the frames each piece needs,
verify their checksums, decode, and copy straight into destination memory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..adapters.tensors import flat_view, torch_dtype
from ..codecs import crc32c, decode_frame_into, get_codec
from ..core.exchange_plan import EMPTY_PLAN
from ..core.layout import Box, c_strides, element_span
from ..core.planner import ReadPiece, plan_reads
from ..dist.collective import Collective
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format.chunk_table import codec_names
from ..format.manifest import Chunk, TensorEntry, dotted
from ..storage.base import Store, let_go, view_of
from .coalesce import group_reads, run_group

if TYPE_CHECKING:
    from .exchange import Gathered

_STORAGE_NP = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64, 16: np.complex128}


@dataclass(slots=True, kw_only=True)
class Target:
    """One destination: a box of a saved tensor and the tensor that receives it."""

    entry: TensorEntry
    box: Box
    tensor: torch.Tensor
    staging: torch.Tensor | None = field(default=None)
    memory: torch.Tensor | None = field(default=None)
    """Where ``tensor`` is a copy written back into the caller's memory after the fill
    (a numpy array with negative strides), a view of that memory's elements (dims
    flipped, same addresses): load checks it for memory shared with other keys."""

    @property
    def name(self) -> str:
        return dotted(self.entry.key)


@dataclass(slots=True)
class ReadStats:
    bytes_read: int = 0
    bytes_needed: int = 0


def fill(
    store: Store, targets: list[Target], *, threads: int, max_piece_nbytes: int,
    coll: Collective | None = None, gathered: Gathered | None = None,
    before: Callable[[], None] | None = None,
) -> ReadStats:
    """Copy the saved values of every target box into its tensor.

    With ``coll`` and the needs every rank gathered (``exchange.local_needs``), frames
    that several ranks need are read by one of them and shared (transfer/exchange.py);
    then this call is collective and every rank raises the same error on failure.
    ``before`` is more of this rank's own reads (load's whole small chunks), run first:
    inside the exchange's agreement, so that its failure on one rank cannot leave that
    rank outside the swaps the others wait in.
    """
    stats = ReadStats()
    sizes: dict[str, int] = {}
    xplan = exchange.plan(gathered) if coll is not None and coll.world_size > 1 else EMPTY_PLAN

    def own() -> None:
        if before is not None:
            before()
        _fill_own(store, targets, stats, threads=threads, max_piece_nbytes=max_piece_nbytes,
                  sizes=sizes, skip=skip)

    skip: set[tuple[int, int]] = set()
    if not xplan.rounds:
        own()
    else:
        assert coll is not None
        skip = xplan.handled(coll.rank)
        exchange.run(store, targets, xplan, coll, threads=threads, sizes=sizes, prior=own)
    for t in targets:
        if t.staging is not None:
            t.tensor.copy_(t.staging)
            t.staging = None
    return stats


def _fill_own(
    store: Store, targets: list[Target], stats: ReadStats, *, threads: int,
    max_piece_nbytes: int, sizes: dict[str, int], skip: set[tuple[int, int]],
) -> None:
    """Read this rank's pieces, but for the (target, chunk) pairs in ``skip``."""
    jobs: list[tuple[Target, ReadPiece, list[int]]] = []
    offsets_cache: dict[int, list[int]] = {}
    tile_jobs: list[column_reads.TileJob] = []
    for slot, t in enumerate(targets):
        if tuple(t.tensor.shape) != t.box.sizes:
            raise CheckpointError(f"key {t.name!r}: internal error, tensor and box disagree")
        if (
            t.tensor.device.type != "cpu" or not t.tensor.is_contiguous()
            or t.tensor.is_conj() or t.tensor.is_neg()  # their bytes are not their values
        ):
            t.staging = torch.empty(t.box.sizes, dtype=t.tensor.dtype)
        itemsize = t.entry.itemsize
        direct = codec_names(t.entry.chunks) <= {"identity"}
        staged = min(max_piece_nbytes, STAGED_PIECE_NBYTES if direct else ENCODED_PIECE_NBYTES)
        by_tiles: set[int] = set()
        if direct:
            tiles, by_tiles = column_reads.plan_column_reads(store, t, slot, skip)
            for job in tiles:
                _check_extent(store, t, job.chunk, job.chunk.offset + job.chunk.nbytes, sizes)
                stats.bytes_read += job.nbytes
            # One need per chunk, however many jobs read it.
            stats.bytes_needed += sum({id(j.chunk): j.need.numel for j in tiles}.values()) * itemsize
            tile_jobs += tiles
        for piece in plan_reads(
            t.entry.chunks, t.box, itemsize,
            max_piece_nbytes=max_piece_nbytes if direct else staged, max_strided_nbytes=staged,
        ):
            if (skip and (slot, piece.chunk_index) in skip) or piece.chunk_index in by_tiles:
                continue
            chunk = t.entry.chunks[piece.chunk_index]
            offs = offsets_cache.setdefault(id(chunk), chunk.frame_offsets())
            _check_extent(store, t, chunk, offs[piece.frame_hi], sizes)
            jobs.append((t, piece, offs))
            stats.bytes_read += offs[piece.frame_hi] - offs[piece.frame_lo]
            stats.bytes_needed += (
                piece.raw_hi - piece.raw_lo if piece.flat else piece.box.numel * itemsize
            )
    groups = group_reads(store, jobs, max_group_nbytes=max_piece_nbytes)
    batches = _batches(groups, stats.bytes_read, threads)
    tasks: list[Callable[[], None]] = [partial(_run_batch, store, batch) for batch in batches]
    tasks += [partial(_run_tiles, store, job) for job in tile_jobs]
    if threads <= 1 or len(tasks) <= 1:
        try:
            for task in tasks:
                task()
        finally:
            _drop_scratch()  # pool threads drop theirs when they exit
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for f in [pool.submit(task) for task in tasks]:
                f.result()


def _run_tiles(store: Store, job: column_reads.TileJob) -> None:
    with named_errors(job.target, job.chunk):
        column_reads.run_tile_job(store, job)


def _check_extent(store: Store, target: Target, chunk: Chunk, end: int, sizes: dict[str, int]) -> None:
    """Refuse, before any buffer is sized from the manifest, bytes the data file lacks.

    A missing or truncated file is reported here, naming the key and the file, and a
    hostile frame size can never drive an allocation larger than the file itself.
    """
    size = sizes.get(chunk.file)
    if size is None:
        try:
            size = sizes[chunk.file] = store.size(chunk.file)
        except CheckpointNotFoundError:
            raise CorruptCheckpointError(
                f"key {target.name!r}: data file {chunk.file} is missing from {store.location} "
                "(if a later save to this path replaced the checkpoint while it was read, "
                "read it again)"
            ) from None
        except CheckpointError as e:
            raise type(e)(f"key {target.name!r}: {e}") from None
    if end > size:
        raise CorruptCheckpointError(
            f"key {target.name!r}: data file {chunk.file} in {store.location} is truncated: the "
            f"chunk at offsets {list(chunk.box.offsets)} needs bytes up to {end}, the file has {size}"
        )


# Pieces staged in memory (strided cuts, encoded frames) are kept to 8 MiB: threads x
# 8 MiB of scratch instead of threads x 16 MiB. Smaller costs reads: a piece boundary
# inside a frame reads that frame twice (4 MiB pieces read 1.05x the needed bytes on a
# 2-D -> Shard(0) reshard, 8 MiB 1.02x). Contiguous identity pieces read straight into
# the destination and keep the larger config.max_piece_nbytes().
STAGED_PIECE_NBYTES = 8 << 20
# Encoded pieces hold two buffers (stored and decoded bytes) and their contiguous cuts
# are frame-aligned, so they are cut smaller at no extra reads.
ENCODED_PIECE_NBYTES = 4 << 20

_local = threading.local()


def _scratch(slot: int, nbytes: int) -> np.ndarray:
    """A reusable byte buffer of this thread (slot 0: stored bytes, 1: decoded bytes).

    Staging a piece in fresh memory page-faulted every byte on each piece (fresh pages
    cost ~3x a copy); one buffer per thread and slot, grown as needed and bounded by the
    largest piece, is faulted once.
    """
    bufs: list[np.ndarray | None] = _local.__dict__.setdefault("scratch", [None, None])
    buf = bufs[slot]
    if buf is None or buf.size < nbytes:
        buf = bufs[slot] = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes]


@contextmanager
def stored_bytes(store: Store, file: str, lo: int, hi: int) -> Iterator[np.ndarray]:
    """Bytes ``[lo, hi)`` of ``file``, valid inside the block: a view of the mapped file
    where the store maps (its pages let go after the block), else this thread's
    scratch buffer, read into."""
    view = view_of(store, file, lo, hi - lo)
    if view is None:
        stored = _scratch(0, hi - lo)
        store.read_into(file, lo, stored.data)
        yield stored
        return
    try:
        yield np.frombuffer(view, dtype=np.uint8)
    finally:
        let_go(store, file, lo, hi - lo)


def _drop_scratch() -> None:
    _local.__dict__.pop("scratch", None)


MIN_BATCH_NBYTES = 1 << 20


Group = list[tuple[Target, ReadPiece, list[int]]]


def _batches(groups: list[Group], total: int, threads: int) -> list[list[Group]]:
    """Consecutive read groups gathered into pool tasks of at least ``MIN_BATCH_NBYTES``
    (and about a quarter of a thread's share): a thread hand-off per small piece cost more
    than reading it, while large pieces keep a task each so threads still balance."""
    target = max(MIN_BATCH_NBYTES, total // max(1, 4 * threads))
    batches: list[list[Group]] = []
    current: list[Group] = []
    size = 0
    for group in groups:
        current.append(group)
        size += sum(offs[piece.frame_hi] - offs[piece.frame_lo] for _, piece, offs in group)
        if size >= target:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


def _run_batch(store: Store, batch: list[Group]) -> None:
    for group in batch:
        run_group(store, group, _run)


def _run(store: Store, target: Target, piece: ReadPiece, offs: list[int]) -> None:
    chunk = target.entry.chunks[piece.chunk_index]
    with named_errors(target, chunk):
        _read_piece(store, target, chunk, piece, offs)


@contextmanager
def named_errors(target: Target, chunk: Chunk) -> Iterator[None]:
    """Any error while moving ``chunk``'s bytes into ``target`` as a CheckpointError
    naming the key (and, for errors that are not ours, the chunk and file)."""
    try:
        yield
    except CheckpointError as e:
        raise type(e)(f"key {target.name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - bad bytes must surface as a checkpoint error
        raise CorruptCheckpointError(
            f"key {target.name!r}: chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _read_piece(
    store: Store, target: Target, chunk: Chunk, piece: ReadPiece, offs: list[int]
) -> None:
    dest = target.staging if target.staging is not None else target.tensor
    itemsize = target.entry.itemsize
    src_dtype = torch_dtype(target.entry.dtype)
    raw_base = piece.frame_lo * chunk.frame_raw_nbytes
    raw_end = min(piece.frame_hi * chunk.frame_raw_nbytes, chunk.raw_nbytes)
    stored_lo, stored_hi = offs[piece.frame_lo], offs[piece.frame_hi]
    if (
        piece.flat and chunk.codec.name == "identity" and dest.dtype == src_dtype
        and piece.raw_lo == raw_base and piece.raw_hi == raw_end
    ):
        n = (piece.raw_hi - piece.raw_lo) // itemsize
        region = flat_view(dest)[piece.dest_elem:piece.dest_elem + n]
        mv = _bytes_of(region)
        store.read_into(chunk.file, stored_lo, mv)
        _verify(chunk, piece.frame_lo, piece.frame_hi, mv, offs, stored_lo)
        return
    with stored_bytes(store, chunk.file, stored_lo, stored_hi) as stored:
        _verify(chunk, piece.frame_lo, piece.frame_hi, stored.data, offs, stored_lo)
        if (
            piece.flat and chunk.codec.name != "identity" and dest.dtype == src_dtype
            and piece.raw_lo == raw_base and piece.raw_hi == raw_end
        ):
            # Whole frames of a contiguous run: decode straight into the destination.
            n = (piece.raw_hi - piece.raw_lo) // itemsize
            region = flat_view(dest)[piece.dest_elem:piece.dest_elem + n]
            _decode(chunk, piece, stored, offs, raw_end - raw_base, out=_bytes_array(region))
            return
        raw = (stored if chunk.codec.name == "identity"
               else _decode(chunk, piece, stored, offs, raw_end - raw_base))
        # A frame need not hold whole elements (frame_raw_nbytes is any positive int), so
        # cut the bytes at the piece's own element-aligned raw offsets before viewing them.
        if piece.flat:
            part = _elements(raw[piece.raw_lo - raw_base:piece.raw_hi - raw_base], itemsize)
            src = torch.from_numpy(part).view(src_dtype)
            flat_view(dest)[piece.dest_elem:piece.dest_elem + len(src)].copy_(src)
            return
        local = piece.box.relative_to(chunk.box)
        start, stop = element_span(chunk.box.sizes, local)
        lo, hi = start * itemsize - raw_base, stop * itemsize - raw_base
        if lo < 0 or hi > len(raw):
            # as_strided does no bounds check: never let a bad plan read past the buffer.
            raise CorruptCheckpointError(
                f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: internal error, "
                f"piece {piece.box} lies outside the frames read"
            )
        storage = _elements(raw[lo:hi], itemsize)
        strides = tuple(s * itemsize for s in c_strides(chunk.box.sizes))
        view = np.lib.stride_tricks.as_strided(storage, shape=piece.box.sizes, strides=strides)
        src = torch.from_numpy(view).view(src_dtype)
        dest[piece.box.relative_to(target.box).slices()].copy_(src)


def _elements(data: np.ndarray, itemsize: int) -> np.ndarray:
    """``data`` (bytes) as elements of ``itemsize``; misaligned bytes are copied first,
    since torch's vectorized copies may crash on misaligned wide elements."""
    if data.ctypes.data % itemsize:
        data = data.copy()
    return data.view(_STORAGE_NP[itemsize])


def _bytes_array(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor as a writable uint8 array (no copy)."""
    return t.view(torch.uint8).numpy()


def _bytes_of(t: torch.Tensor) -> memoryview:
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.view(torch.uint8).numpy().data.cast("B")


def _verify(
    chunk: Chunk, lo: int, hi: int, data: memoryview, offs: list[int], base: int
) -> None:
    for i in range(lo, hi):
        expected = chunk.frames[i].crc32c
        if expected is None:
            continue
        a, b = offs[i] - base, offs[i + 1] - base
        if crc32c(data[a:b]) != expected:
            raise CorruptCheckpointError(
                f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: frame {i} "
                f"(file bytes {offs[i]}..{offs[i + 1]}) fails its CRC-32C check"
            )


def _decode(
    chunk: Chunk, piece: ReadPiece, stored: np.ndarray, offs: list[int], raw_len: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode the piece's frames into ``out`` (``raw_len`` bytes; default a scratch buffer)."""
    codec = get_codec(chunk.codec)
    out = _scratch(1, raw_len) if out is None else out
    base, pos = offs[piece.frame_lo], 0
    for i in range(piece.frame_lo, piece.frame_hi):
        frame = stored.data[offs[i] - base:offs[i + 1] - base]
        expect = min(chunk.frame_raw_nbytes, chunk.raw_nbytes - i * chunk.frame_raw_nbytes)
        try:
            # Straight into the scratch buffer; a frame of any other size raises.
            decode_frame_into(codec, frame, out[pos:pos + expect])
        except Exception as e:  # noqa: BLE001 - user codecs may raise anything
            raise CorruptCheckpointError(
                f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: frame {i} does not "
                f"decode with codec {chunk.codec.name!r}: {type(e).__name__}: {e}"
            ) from e
        pos += expect
    return out


from . import column_reads, exchange  # noqa: E402 - they build on this module's helpers
