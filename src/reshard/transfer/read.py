"""Fill destination tensors from saved chunks: read only the frames each piece needs,
verify their checksums, decode, and copy straight into destination memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

import torch

from ..adapters.tensors import torch_dtype
from ..codecs import crc32c, decode_frame, get_codec
from ..core.layout import Box, c_strides, element_span
from ..core.planner import ReadPiece, plan_reads
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format.manifest import Chunk, TensorEntry, dotted
from ..storage.base import Store

_STORAGE_NP = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64, 16: np.complex128}


@dataclass(slots=True, kw_only=True)
class Target:
    """One destination: a box of a saved tensor and the tensor that receives it."""

    entry: TensorEntry
    box: Box
    tensor: torch.Tensor
    staging: torch.Tensor | None = field(default=None)

    @property
    def name(self) -> str:
        return dotted(self.entry.key)


@dataclass(slots=True)
class ReadStats:
    bytes_read: int = 0
    bytes_needed: int = 0


def fill(
    store: Store, targets: list[Target], *, threads: int, max_piece_nbytes: int
) -> ReadStats:
    """Copy the saved values of every target box into its tensor."""
    stats = ReadStats()
    jobs: list[tuple[Target, ReadPiece, list[int]]] = []
    offsets_cache: dict[int, list[int]] = {}
    sizes: dict[str, int] = {}
    for t in targets:
        if tuple(t.tensor.shape) != t.box.sizes:
            raise CheckpointError(f"key {t.name!r}: internal error, tensor and box disagree")
        if (
            t.tensor.device.type != "cpu" or not t.tensor.is_contiguous()
            or t.tensor.is_conj() or t.tensor.is_neg()  # their bytes are not their values
        ):
            t.staging = torch.empty(t.box.sizes, dtype=t.tensor.dtype)
        itemsize = t.entry.itemsize
        for piece in plan_reads(t.entry.chunks, t.box, itemsize, max_piece_nbytes=max_piece_nbytes):
            chunk = t.entry.chunks[piece.chunk_index]
            offs = offsets_cache.setdefault(id(chunk), chunk.frame_offsets())
            _check_extent(store, t, chunk, offs[piece.frame_hi], sizes)
            jobs.append((t, piece, offs))
            stats.bytes_read += offs[piece.frame_hi] - offs[piece.frame_lo]
            stats.bytes_needed += (
                piece.raw_hi - piece.raw_lo if piece.flat else piece.box.numel * itemsize
            )
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            _run(store, *job)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for f in [pool.submit(_run, store, *job) for job in jobs]:
                f.result()
    for t in targets:
        if t.staging is not None:
            t.tensor.copy_(t.staging)
            t.staging = None
    return stats


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


def _run(store: Store, target: Target, piece: ReadPiece, offs: list[int]) -> None:
    chunk = target.entry.chunks[piece.chunk_index]
    try:
        _read_piece(store, target, chunk, piece, offs)
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
        region = _flat(dest)[piece.dest_elem:piece.dest_elem + n]
        mv = _bytes_of(region)
        store.read_into(chunk.file, stored_lo, mv)
        _verify(chunk, piece.frame_lo, piece.frame_hi, mv, offs, stored_lo)
        return
    stored = np.empty(stored_hi - stored_lo, dtype=np.uint8)
    store.read_into(chunk.file, stored_lo, memoryview(stored))
    _verify(chunk, piece.frame_lo, piece.frame_hi, memoryview(stored), offs, stored_lo)
    raw = stored if chunk.codec.name == "identity" else _decode(chunk, piece, stored, offs, raw_end - raw_base)
    # A frame need not hold whole elements (frame_raw_nbytes is any positive int), so
    # cut the bytes at the piece's own element-aligned raw offsets before viewing them.
    if piece.flat:
        part = _elements(raw[piece.raw_lo - raw_base:piece.raw_hi - raw_base], itemsize)
        src = torch.from_numpy(part).view(src_dtype)
        _flat(dest)[piece.dest_elem:piece.dest_elem + len(src)].copy_(src)
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


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _bytes_of(t: torch.Tensor) -> memoryview:
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


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
    chunk: Chunk, piece: ReadPiece, stored: np.ndarray, offs: list[int], raw_len: int
) -> np.ndarray:
    codec = get_codec(chunk.codec)
    out = np.empty(raw_len, dtype=np.uint8)
    base, pos = offs[piece.frame_lo], 0
    for i in range(piece.frame_lo, piece.frame_hi):
        frame = memoryview(stored)[offs[i] - base:offs[i + 1] - base]
        expect = min(chunk.frame_raw_nbytes, chunk.raw_nbytes - i * chunk.frame_raw_nbytes)
        try:
            decoded = memoryview(decode_frame(codec, frame, expect)).cast("B")
        except Exception as e:  # noqa: BLE001 - user codecs may raise anything
            raise CorruptCheckpointError(
                f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: frame {i} does not "
                f"decode with codec {chunk.codec.name!r}: {type(e).__name__}: {e}"
            ) from e
        if len(decoded) != expect:
            raise CorruptCheckpointError(
                f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: frame {i} "
                f"decodes to {len(decoded)} bytes, expected {expect}"
            )
        out[pos:pos + expect] = np.frombuffer(decoded, dtype=np.uint8)
        pos += expect
    return out
