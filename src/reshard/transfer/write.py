"""Encode shards frame by frame and append them to one rank's data file."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..adapters.tensors import tensor_bytes
from ..codecs import Codec, bind_codec, crc32c
from ..core.pickling import slots_reduce
from ..format.manifest import Frame
from ..storage.base import Store, new_file


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenChunk:
    """Where one written box landed in the rank's data file (sent to the coordinator)."""

    __reduce__ = slots_reduce

    item_index: int
    box_index: int
    offset: int
    nbytes: int
    raw_nbytes: int
    frame_raw_nbytes: int
    frames: tuple[Frame, ...]


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
) -> list[WrittenChunk]:
    """Write each ``(item_index, box_index, tensor)`` to ``name``; durable on return.

    A failure removes the partial file, so nothing half-written is left referenced.
    Small chunks are handled inline and coalesced into large writes (per-item thread
    hand-offs and syscalls dominated many-small-tensor saves); large chunks checksum or
    encode on the pool while the writer thread writes, so the CPU work overlaps the I/O.
    """
    written: list[WrittenChunk] = []
    pending = bytearray()
    with new_file(store, name) as writer, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        offset = 0
        for item_index, box_index, tensor, raw in _host_bytes(shards, pool):
            # The manifest records codecs.chunk_spec(spec, itemsize) for this chunk.
            chunk_codec = bind_codec(codec, tensor.element_size())
            spans = [(s, min(s + frame_raw_nbytes, len(raw)))
                     for s in range(0, len(raw), frame_raw_nbytes)]
            if len(raw) <= SMALL_CHUNK_NBYTES:
                frames = _encode_inline(raw, spans, chunk_codec, pending)
                if len(pending) >= COALESCE_NBYTES:
                    writer.write(pending)
                    pending.clear()
            else:
                if pending:
                    writer.write(pending)
                    pending.clear()
                frames = _write_large(writer, raw, spans, chunk_codec, pool, threads)
            nbytes = sum(f.nbytes for f in frames)
            written.append(WrittenChunk(
                item_index=item_index, box_index=box_index, offset=offset, nbytes=nbytes,
                raw_nbytes=len(raw), frame_raw_nbytes=frame_raw_nbytes, frames=frames,
            ))
            offset += nbytes
        if pending:
            writer.write(pending)
    return written


def _host_bytes(
    shards: list[tuple[int, int, torch.Tensor]], pool: ThreadPoolExecutor, ahead: int = 1
) -> Iterator[tuple[int, int, torch.Tensor, memoryview]]:
    """Each shard with its bytes, in order; a device tensor is copied to host one shard
    ahead on the pool, so the device-to-host copies overlap the writes (they release the GIL)."""
    window: deque[tuple[int, int, torch.Tensor, Future[memoryview] | memoryview]] = deque()
    for item_index, box_index, tensor in shards:
        if tensor.device.type == "cpu":
            if not window:
                yield item_index, box_index, tensor, tensor_bytes(tensor)
                continue
            window.append((item_index, box_index, tensor, tensor_bytes(tensor)))
        else:
            window.append((item_index, box_index, tensor, pool.submit(tensor_bytes, tensor)))
        while len(window) > ahead:
            yield _resolved(window.popleft())
    while window:
        yield _resolved(window.popleft())


def _resolved(
    entry: tuple[int, int, torch.Tensor, Future[memoryview] | memoryview],
) -> tuple[int, int, torch.Tensor, memoryview]:
    item_index, box_index, tensor, raw = entry
    return item_index, box_index, tensor, raw.result() if isinstance(raw, Future) else raw


def encode_frame(codec: Codec, data: memoryview) -> tuple[bytes | memoryview, int]:
    """One frame's stored bytes and their CRC-32C; a codec returning non-bytes is refused."""
    out = codec.encode(data)
    if not isinstance(out, (bytes, bytearray, memoryview)):
        raise TypeError(f"codec {codec.name!r}: encode() returned {type(out).__name__}, not bytes")
    return out, crc32c(out)


def _encode_inline(
    raw: memoryview, spans: list[tuple[int, int]], codec: Codec, out: bytearray
) -> tuple[Frame, ...]:
    frames = []
    for a, b in spans:
        data, crc = encode_frame(codec, raw[a:b])
        view = memoryview(data).cast("B")
        out += view
        frames.append(Frame(nbytes=len(view), crc32c=crc))
    return tuple(frames)


def _write_large(
    writer: object, raw: memoryview, spans: list[tuple[int, int]], codec: Codec,
    pool: ThreadPoolExecutor, threads: int,
) -> tuple[Frame, ...]:
    write = writer.write  # type: ignore[attr-defined]
    if codec.name == "identity":
        # The checksums run on the pool (crc32c releases the GIL) while this thread writes.
        crcs = [pool.submit(crc32c, raw[a:b]) for a, b in spans]
        write(raw)
        return tuple(Frame(nbytes=b - a, crc32c=f.result()) for (a, b), f in zip(spans, crcs))
    # Encoded frames are written in order as they finish; a bounded window of frames in
    # flight keeps memory at a few frames per thread.
    window = max(2, 4 * threads)
    futures: deque[Future[tuple[bytes | memoryview, int]]] = deque()
    frames: list[Frame] = []
    it = iter(spans)
    for a, b in itertools.islice(it, window):
        futures.append(pool.submit(encode_frame, codec, raw[a:b]))
    while futures:
        data, crc = futures.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            futures.append(pool.submit(encode_frame, codec, raw[nxt[0]:nxt[1]]))
        write(data)
        frames.append(Frame(nbytes=len(memoryview(data).cast("B")), crc32c=crc))
    return tuple(frames)
