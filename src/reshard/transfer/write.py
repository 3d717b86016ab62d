"""Encode shards frame by frame and append them to one rank's data file."""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..adapters.tensors import storable, tensor_bytes
from ..codecs import Codec, bind_codec, crc32c
from ..core.column_checks import tile_rows
from ..core.pickling import slots_reduce
from ..storage.base import Store, new_file
from . import device_copy


# Records the coordinator reads once per chunk and frame: named tuples, built at C speed
# (a frozen dataclass costs a setattr call per field).
class WrittenFrame(NamedTuple):
    nbytes: int
    crc32c: int


class WrittenChunk(NamedTuple):
    """Where one written box landed in the rank's data file."""

    item_index: int
    box_index: int
    offset: int
    nbytes: int
    raw_nbytes: int
    frame_raw_nbytes: int
    frames: tuple[WrittenFrame, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenFile:
    """Where every written box landed in one rank's data file, column by column.

    Sent to the coordinator: a few tuples of ints pickle at C speed, where one object per
    chunk and per frame cost tens of microseconds each to pickle and rebuild. Chunk ``i``
    is box ``box_index[i]`` of local item ``item_index[i]``, stored at ``offset[i]`` with
    ``nbytes[i]`` bytes (``raw_nbytes[i]`` raw); its frames are the next
    ``frame_count[i]`` entries of ``frame_nbytes`` / ``frame_crc32c``.
    """

    __reduce__ = slots_reduce

    name: str
    frame_raw_nbytes: int
    item_index: tuple[int, ...] = ()
    box_index: tuple[int, ...] = ()
    offset: tuple[int, ...] = ()
    nbytes: tuple[int, ...] = ()
    raw_nbytes: tuple[int, ...] = ()
    frame_count: tuple[int, ...] = ()
    frame_nbytes: tuple[int, ...] = ()
    frame_crc32c: tuple[int, ...] = ()
    column_crcs: tuple[tuple[int, int, int, tuple[int, ...]], ...] = ()
    """``(chunk, parts, rows, crc32c)`` of the chunks that carry column checksums."""

    def chunks(self) -> Iterator[WrittenChunk]:
        """The chunks, one record each, in file order."""
        frames = list(map(WrittenFrame, self.frame_nbytes, self.frame_crc32c))
        first = 0
        for i, count in enumerate(self.frame_count):
            yield WrittenChunk(self.item_index[i], self.box_index[i], self.offset[i],
                               self.nbytes[i], self.raw_nbytes[i], self.frame_raw_nbytes,
                               tuple(frames[first:first + count]))
            first += count

    @property
    def end(self) -> int:
        """Bytes of the file the chunks occupy."""
        return self.offset[-1] + self.nbytes[-1] if self.offset else 0

    def __len__(self) -> int:
        return len(self.item_index)


@dataclass(slots=True)
class WrittenColumns:
    """Builds a ``WrittenFile``: chunks added in file order, each placed at ``end``."""

    item_index: list[int] = field(default_factory=list)
    box_index: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    raw_nbytes: list[int] = field(default_factory=list)
    frame_count: list[int] = field(default_factory=list)
    frame_nbytes: list[int] = field(default_factory=list)
    frame_crc32c: list[int] = field(default_factory=list)
    column_crcs: list[tuple[int, int, int, tuple[int, ...]]] = field(default_factory=list)
    end: int = 0

    def add(self, item_index: int, box_index: int, raw_nbytes: int,
            frames: list[tuple[int, int]]) -> None:
        nbytes = 0
        for n, crc in frames:
            self.frame_nbytes.append(n)
            self.frame_crc32c.append(crc)
            nbytes += n
        self.item_index.append(item_index)
        self.box_index.append(box_index)
        self.offset.append(self.end)
        self.nbytes.append(nbytes)
        self.raw_nbytes.append(raw_nbytes)
        self.frame_count.append(len(frames))
        self.end += nbytes

    def done(self, name: str, frame_raw_nbytes: int) -> WrittenFile:
        return WrittenFile(
            name=name, frame_raw_nbytes=frame_raw_nbytes,
            item_index=tuple(self.item_index), box_index=tuple(self.box_index),
            offset=tuple(self.offset), nbytes=tuple(self.nbytes),
            raw_nbytes=tuple(self.raw_nbytes), frame_count=tuple(self.frame_count),
            frame_nbytes=tuple(self.frame_nbytes), frame_crc32c=tuple(self.frame_crc32c),
            column_crcs=tuple(self.column_crcs),
        )


SMALL_CHUNK_NBYTES = 1 << 20  # encoded and checksummed inline, no thread hand-off
COALESCE_NBYTES = 8 << 20  # small chunks are gathered into writes of about this size


def write_data_file(
    store: Store,
    name: str,
    shards: list[tuple[int, int, torch.Tensor]],
    codec: Codec,
    *,
    frame_raw_nbytes: int,
    threads: int,
    column_cuts: Mapping[tuple[int, int], ColumnCut] | None = None,
) -> WrittenFile:
    """Write each ``(item_index, box_index, tensor)`` to ``name``; durable on return.

    ``column_cuts`` gives the column segments of the boxes that get column checksums
    (core.column_checks); they are taken for those stored raw.

    A failure removes the partial file, so nothing half-written is left referenced.
    Small chunks are handled inline and coalesced into large writes (per-item thread
    hand-offs and syscalls dominated many-small-tensor saves); large chunks checksum or
    encode on the pool while the writer thread writes, so the CPU work overlaps the I/O.
    """
    cols = WrittenColumns()
    with new_file(store, name) as writer, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        small = _SmallChunks(writer, cols, codec, frame_raw_nbytes)
        for item_index, box_index, tensor, raw in _host_bytes(shards, pool, small.takes):
            if raw is None:
                small.add(item_index, box_index, tensor)
                continue
            small.flush()
            # The manifest records codecs.chunk_spec(spec, itemsize) for this chunk.
            chunk_codec = bind_codec(codec, tensor.element_size())
            if raw is _STREAMED:
                # Pieces are whole frames, so each frame lies inside one piece.
                piece = max(1, device_copy.PIECE_NBYTES // frame_raw_nbytes) * frame_raw_nbytes
                parts: Iterable[memoryview] = device_copy.pieces(tensor, piece)
            else:
                parts = (raw,)
            cut = column_cuts.get((item_index, box_index)) if column_cuts else None
            expected = tensor.numel() * tensor.element_size()
            tiles = None
            if (cut is not None and chunk_codec.name == "identity"
                    and expected == math.prod(cut.sizes) * tensor.element_size()
                    and (raw is _STREAMED or len(raw) == expected)):
                tiles = _TileChecks(pool, cut, expected)
            frames: list[tuple[int, int]] = []
            nbytes = 0
            for part in parts:
                if tiles is not None:
                    tiles.feed(part)
                frames += _write_large(writer, part, _spans(len(part), frame_raw_nbytes),
                                       chunk_codec, pool, threads)
                nbytes += len(part)
                if tiles is not None:
                    tiles.settle()  # a streamed piece's buffer is reused for the next one
            if tiles is not None:
                cols.column_crcs.append((len(cols.item_index), tiles.parts, tiles.rows, tiles.finish()))
            cols.add(item_index, box_index, nbytes, frames)
        small.flush()
    return cols.done(name, frame_raw_nbytes)


@dataclass(frozen=True, slots=True)
class ColumnCut:
    """The column segments ``(lo, hi)`` of a box of ``sizes``, relative to it, for
    ``parts``."""

    parts: int
    sizes: tuple[int, ...]
    segments: tuple[tuple[int, int], ...]


TILE_TASK_NBYTES = 8 << 20  # the rows one pool task checksums


class _TileChecks:
    """The column checksums of one chunk, from its C-order bytes fed in order in pieces
    of any size (a CUDA tensor's arrive piece by piece): whole runs of rows are
    checksummed on the pool, a run cut by a piece's end waits in a buffer for the rest."""

    def __init__(self, pool: ThreadPoolExecutor, cut: ColumnCut, nbytes: int) -> None:
        self._pool = pool
        self.parts = cut.parts
        self._row = nbytes // cut.sizes[0]
        col = self._row // cut.sizes[1]  # one column: every later dim
        self._segs = [(lo * col, hi * col) for lo, hi in cut.segments]
        self.rows = tile_rows(max(hi - lo for lo, hi in self._segs))
        self._run = self.rows * self._row
        self._carry = bytearray()
        self._futures: list[Future[list[int]]] = []
        self._crcs: list[int] = []

    def feed(self, data: memoryview) -> None:
        """Start the checksums of the runs ``data`` completes; ``data`` must stay valid
        until ``settle``."""
        if self._carry:
            take = min(self._run - len(self._carry), len(data))
            self._carry += data[:take]
            data = data[take:]
            if len(self._carry) < self._run:
                return
            self._submit(memoryview(bytes(self._carry)))
            self._carry = bytearray()
        whole = len(data) // self._run * self._run
        if whole:
            self._submit(data[:whole])
        self._carry += data[whole:]

    def _submit(self, runs_bytes: memoryview) -> None:
        table = np.frombuffer(runs_bytes, dtype=np.uint8).reshape(-1, self._row)
        runs = len(table) // self.rows
        per = max(1, TILE_TASK_NBYTES // self._run)
        self._futures += [self._pool.submit(tile_crcs, table, self.rows, self._segs, lo,
                                            min(lo + per, runs)) for lo in range(0, runs, per)]

    def settle(self) -> None:
        """Wait for the checksums started so far."""
        for f in self._futures:
            self._crcs += f.result()
        self._futures = []

    def finish(self) -> tuple[int, ...]:
        """Every checksum, run by run (the last run may be shorter)."""
        self.settle()
        if self._carry:
            table = np.frombuffer(bytes(self._carry), dtype=np.uint8).reshape(-1, self._row)
            self._crcs += tile_crcs(table, self.rows, self._segs, 0, 1)
        return tuple(self._crcs)


_tile_local = threading.local()


def tile_crcs(table: np.ndarray, rows: int, seg_bytes: list[tuple[int, int]],
               run_lo: int, run_hi: int) -> list[int]:
    """CRC-32C of the tiles of runs ``[run_lo, run_hi)`` of ``table`` (rows of bytes):
    each copied into a reused buffer of this thread first, since a tile is strided."""
    out = []
    for run in range(run_lo, run_hi):
        block = table[run * rows:(run + 1) * rows]
        for a, b in seg_bytes:
            if len(block) == 1:
                out.append(crc32c(block[0, a:b].data))
                continue
            n = len(block) * (b - a)
            buf = getattr(_tile_local, "buf", None)
            if buf is None or buf.size < n:
                buf = _tile_local.buf = np.empty(n, dtype=np.uint8)
            tile = buf[:n].reshape(len(block), b - a)
            np.copyto(tile, block[:, a:b])
            out.append(crc32c(tile.data))
    return out


def _spans(n: int, frame_raw_nbytes: int) -> list[tuple[int, int]]:
    return [(s, min(s + frame_raw_nbytes, n)) for s in range(0, n, frame_raw_nbytes)]


# Tensor subclasses may redefine torch.cat; they take the one-tensor-at-a-time path.
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class _SmallChunks:
    """Small chunks, gathered and written about ``COALESCE_NBYTES`` at a time.

    Consecutive small tensors of one dtype and device are copied into one buffer by a
    single ``torch.cat`` (which also resolves conjugate/negative views and strides):
    per-tensor byte views cost more than the copy. Every frame is checksummed (and, for codecs other
    than identity, encoded) from that buffer, in file order.
    """

    def __init__(self, writer: object, cols: WrittenColumns, codec: Codec, frame_raw_nbytes: int) -> None:
        self._write = writer.write  # type: ignore[attr-defined]
        self._cols = cols
        self._codec = codec
        self._frame = frame_raw_nbytes
        self._batch: list[tuple[int, int, torch.Tensor]] = []
        self._kind: object = None
        self._nbytes = 0

    @staticmethod
    def takes(tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is small and plain enough to join a batch."""
        return tensor.nbytes <= SMALL_CHUNK_NBYTES and type(tensor) in _PLAIN

    def add(self, item_index: int, box_index: int, tensor: torch.Tensor) -> None:
        """Batch ``tensor``, one that ``takes`` accepted."""
        nbytes = tensor.nbytes
        # One batch per dtype and device: a batch on an accelerator is copied to host once.
        kind = tensor.dtype if tensor.is_cpu else (tensor.dtype, tensor.device)
        if kind != self._kind or self._nbytes + nbytes > COALESCE_NBYTES:
            self.flush()
            self._kind = kind
        self._batch.append((item_index, box_index, tensor))
        self._nbytes += nbytes

    def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._nbytes = self._batch, [], 0
        flat = torch.cat([t.reshape(-1) if t.dim() != 1 else t for _, _, t in batch])
        raw = tensor_bytes(flat)
        # One dtype per batch: the codec is bound to its element size, as for large chunks.
        codec = bind_codec(self._codec, flat.element_size())
        identity = codec.name == "identity"
        out = raw if identity else bytearray()
        start = 0
        add = self._cols.add
        for item_index, box_index, tensor in batch:
            stop = start + tensor.nbytes
            frames = []
            for a in range(start, stop, self._frame):
                data = raw[a:min(a + self._frame, stop)]
                if identity:
                    frames.append((len(data), crc32c(data)))
                    continue
                stored, crc = encode_frame(codec, data)
                view = memoryview(stored).cast("B")
                out += view  # type: ignore[operator]
                frames.append((len(view), crc))
            add(item_index, box_index, stop - start, frames)
            start = stop
        self._write(out)


_STREAMED = memoryview(b"")  # marker, compared by identity


def _host_bytes(
    shards: list[tuple[int, int, torch.Tensor]], pool: ThreadPoolExecutor,
    batched: Callable[[torch.Tensor], bool], ahead: int = 1,
) -> Iterator[tuple[int, int, torch.Tensor, memoryview | None]]:
    """Each shard with its bytes, in order (None for those ``batched`` takes: they are
    copied together; ``_STREAMED`` for CUDA tensors, see device_copy); another device's
    tensor is copied to host one shard ahead on the pool, so the device-to-host copies
    overlap the writes (they release the GIL); so is a host tensor whose bytes need a copy
    (a view such as a tile of save's column_blocks)."""
    window: deque[tuple[int, int, torch.Tensor, Future[memoryview] | memoryview | None]] = deque()
    ring = _CopyRing(ahead + 2)
    for item_index, box_index, tensor in shards:
        if batched(tensor):
            raw: Future[memoryview] | memoryview | None = None
        elif tensor.device.type == "cpu" and _is_plain_contiguous(tensor):
            raw = tensor_bytes(tensor)
        elif tensor.device.type == "cpu" and ring.takes(tensor):
            raw = pool.submit(ring.copy, tensor, ring.slot())
        elif device_copy.streamable(tensor):
            raw = _STREAMED  # fetched piece by piece while it is written
        else:
            raw = pool.submit(tensor_bytes, tensor)
        if not window and not isinstance(raw, Future):
            yield item_index, box_index, tensor, raw
            continue
        window.append((item_index, box_index, tensor, raw))
        while len(window) > ahead:
            yield _resolved(*window.popleft())
    while window:
        yield _resolved(*window.popleft())


def _is_plain_contiguous(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg()


class _CopyRing:
    """Reused host buffers for the C-order bytes of strided views up to ``MAX_NBYTES``
    (the tiles of save's column_blocks). A fresh buffer per tile page-faulted every byte
    and left freed tiles in the allocator's arenas, one set per pool thread.

    Slots are handed out in turn by the writer's thread; with ``slots`` = the shards in
    flight + 1, a buffer is reused only after the writer has moved on from the shard it
    held (writers copy or write out what they are given before they return).
    """

    MAX_NBYTES = 32 << 20

    def __init__(self, slots: int) -> None:
        self._bufs: list[torch.Tensor | None] = [None] * slots
        self._next = 0

    def takes(self, tensor: torch.Tensor) -> bool:
        return tensor.numel() * tensor.element_size() <= self.MAX_NBYTES

    def slot(self) -> int:
        i, self._next = self._next, (self._next + 1) % len(self._bufs)
        return i

    def copy(self, tensor: torch.Tensor, i: int) -> memoryview:
        n = tensor.numel() * tensor.element_size()
        buf = self._bufs[i]
        if buf is None or buf.numel() < n:
            buf = self._bufs[i] = torch.empty(max(n, 1), dtype=torch.uint8)
        src = storable(tensor)
        out = buf[:n]
        if n:
            out.view(src.dtype).view(src.shape).copy_(src)
        return out.numpy().data.cast("B")


def _resolved(
    item_index: int, box_index: int, tensor: torch.Tensor,
    raw: Future[memoryview] | memoryview | None,
) -> tuple[int, int, torch.Tensor, memoryview | None]:
    return item_index, box_index, tensor, raw.result() if isinstance(raw, Future) else raw


def encode_frame(codec: Codec, data: memoryview) -> tuple[bytes | memoryview, int]:
    """One frame's stored bytes and their CRC-32C; a codec returning non-bytes is refused."""
    out = codec.encode(data)
    if not isinstance(out, (bytes, bytearray, memoryview)):
        raise TypeError(f"codec {codec.name!r}: encode() returned {type(out).__name__}, not bytes")
    return out, crc32c(out)


def _write_large(
    writer: object, raw: memoryview, spans: list[tuple[int, int]], codec: Codec,
    pool: ThreadPoolExecutor, threads: int,
) -> list[tuple[int, int]]:
    write = writer.write  # type: ignore[attr-defined]
    if codec.name == "identity":
        # The checksums run on the pool (crc32c releases the GIL) while this thread writes.
        crcs = [pool.submit(crc32c, raw[a:b]) for a, b in spans]
        write(raw)
        return [(b - a, f.result()) for (a, b), f in zip(spans, crcs)]
    # Encoded frames are written in order as they finish; a bounded window of frames in
    # flight keeps memory at a few frames per thread.
    window = max(2, 4 * threads)
    futures: deque[Future[tuple[bytes | memoryview, int]]] = deque()
    frames: list[tuple[int, int]] = []
    it = iter(spans)
    for a, b in itertools.islice(it, window):
        futures.append(pool.submit(encode_frame, codec, raw[a:b]))
    while futures:
        data, crc = futures.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            futures.append(pool.submit(encode_frame, codec, raw[nxt[0]:nxt[1]]))
        write(data)
        frames.append((len(memoryview(data).cast("B")), crc))
    return frames
