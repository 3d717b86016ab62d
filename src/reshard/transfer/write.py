"""Encode shards frame by frame and append them to one rank's data file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..adapters.tensors import tensor_bytes
from ..codecs import Codec, crc32c
from ..core.pickling import slots_reduce
from ..format.manifest import Frame
from ..storage.base import Store

ENCODE_BATCH_FRAMES = 16


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
    """
    written: list[WrittenChunk] = []
    writer = store.open_writer(name)
    identity = codec.name == "identity"
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            offset = 0
            for item_index, box_index, tensor in shards:
                raw = tensor_bytes(tensor)
                spans = [(s, min(s + frame_raw_nbytes, len(raw)))
                         for s in range(0, len(raw), frame_raw_nbytes)]
                if identity:
                    crcs = list(pool.map(lambda sp: crc32c(raw[sp[0]:sp[1]]), spans))
                    writer.write(raw)
                    frames = tuple(Frame(nbytes=b - a, crc32c=c) for (a, b), c in zip(spans, crcs))
                else:
                    frames = _write_encoded(writer, raw, spans, codec, pool)
                nbytes = sum(f.nbytes for f in frames)
                written.append(WrittenChunk(
                    item_index=item_index, box_index=box_index, offset=offset, nbytes=nbytes,
                    raw_nbytes=len(raw), frame_raw_nbytes=frame_raw_nbytes, frames=frames,
                ))
                offset += nbytes
    except BaseException:
        abort = getattr(writer, "abort", None)
        if abort is not None:
            abort()
        raise
    writer.close()
    return written


def _encode(codec: Codec, data: memoryview) -> tuple[bytes | memoryview, int]:
    out = codec.encode(data)
    if not isinstance(out, (bytes, bytearray, memoryview)):
        raise TypeError(f"codec {codec.name!r}: encode() returned {type(out).__name__}, not bytes")
    return out, crc32c(out)


def _write_encoded(
    writer: object, raw: memoryview, spans: list[tuple[int, int]], codec: Codec,
    pool: ThreadPoolExecutor,
) -> tuple[Frame, ...]:
    frames: list[Frame] = []
    for i in range(0, len(spans), ENCODE_BATCH_FRAMES):
        batch = spans[i:i + ENCODE_BATCH_FRAMES]
        for data, crc in pool.map(lambda sp: _encode(codec, raw[sp[0]:sp[1]]), batch):
            writer.write(data)  # type: ignore[attr-defined]
            frames.append(Frame(nbytes=len(memoryview(data).cast("B")), crc32c=crc))
    return tuple(frames)
