"""``planes-zstd``: each byte plane of a frame stored raw, as one zstd frame, or as a fill.

The layout is in docs/FORMAT.md ("Byte planes"). Why: on float data only the planes that
hold the sign and exponent compress; the mantissa planes are near-random, and passing them
through zstd (as ``shuffle-zstd`` does) costs encoder time for nothing. A 256-element
sample of each frame decides, per plane, whether zstd is tried at all, so saves spend
their CPU on the planes that pay. Frames of zeros (optimizer state at init) cost only the
zero check, and raw planes decode as a copy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from ..format.manifest import CodecSpec
from .shuffle import plane, unshuffle_planes
from .zstd_frames import (
    FAST_LEVEL_MAX,
    LITERALS_SLACK,
    all_zero,
    check_elementsize,
    check_level,
    compress_plane_into,
    decompress_into,
    scratch,
)

PLANES_ZSTD = "planes-zstd"

RAW, ZSTD, FILL = 0, 1, 2
"""Plane modes of the frame header (docs/FORMAT.md)."""

SAMPLE_ELEMENTS = 256
"""Elements sampled (evenly spaced) per frame to judge each plane."""


@dataclass(frozen=True, slots=True)
class PlanesZstdCodec:
    """One chunk's frames in the ``planes-zstd`` layout (docs/FORMAT.md). Built by
    ``ZstdCodec(...).for_itemsize(n)`` on save and from the manifest on load.

    Per frame and plane: a plane constant over the frame is stored as its byte value; a
    plane whose sample looks compressible (collision entropy under 7 bits per byte) is
    compressed with zstd and kept if that saves at least 1/16 of it; any other plane is
    stored raw. At levels up to 3 zstd runs with the fast strategy and a small match table
    (entropy coding does the work on byte planes); from level 4 every plane that is not
    constant is tried with zstd's own parameters for the level.
    """

    level: int = 3
    elementsize: int = 4
    name: str = PLANES_ZSTD

    def __post_init__(self) -> None:
        check_level("PlanesZstdCodec", self.level)
        check_elementsize("PlanesZstdCodec", self.elementsize)

    def encode(self, data: memoryview) -> memoryview:
        raw = np.frombuffer(data, dtype=np.uint8)
        e = self.elementsize
        if all_zero(raw):
            return memoryview(_zero_frame(e, len(raw)))
        n = len(raw) // e
        header = _header(e)
        # Every stored plane is at most n bytes: the segments go straight into ``out``
        # in plane order, each where the previous one ended.
        out = np.empty(header.size + len(raw), dtype=np.uint8)
        fields: list[int] = []
        pos = header.size
        fast = self.level <= FAST_LEVEL_MAX
        verdicts = _sample_planes(raw, e, n) if n else [RAW] * e
        for k, verdict in enumerate(verdicts):
            if not n or (verdict == RAW and fast):
                plane(raw, e, k, out[pos:pos + n])
                fields += (RAW, n)
                pos += n
                continue
            buf = scratch(n + LITERALS_SLACK)
            p = plane(raw, e, k, buf[:n])
            if verdict == FILL and _all_equal(p):
                fields += (FILL, int(p[0]))
                continue
            # Kept only if it saves at least 1/16 of the plane: it must fit in that much.
            size = compress_plane_into(buf, n, out[pos:pos + n - n // 16], self.level)
            if size:
                fields += (ZSTD, size)
            else:
                out[pos:pos + n] = p
                fields += (RAW, n)
                size = n
            pos += size
        tail = raw[n * e:]
        out[pos:pos + len(tail)] = tail
        header.pack_into(out.data, 0, len(raw), *fields)
        return out[:pos + len(tail)].data

    def decode(self, data: memoryview, max_nbytes: int = 1 << 30) -> bytes:
        """The raw bytes of one frame, refused if its header declares more than ``max_nbytes``."""
        buf = np.frombuffer(data, dtype=np.uint8)
        if len(buf) < 4:
            raise ValueError(f"{PLANES_ZSTD} frame of {len(buf)} bytes is shorter than its header")
        (size,) = struct.unpack_from("<I", buf.data, 0)
        if size > max_nbytes:
            raise ValueError(f"{PLANES_ZSTD} frame declares {size} bytes, at most {max_nbytes} allowed")
        out = np.empty(size, dtype=np.uint8)
        self.decode_into(data, out)
        return out.tobytes()

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        """Decode one frame into ``out`` (element order), which it must fill exactly."""
        buf = np.frombuffer(data, dtype=np.uint8)
        e = self.elementsize
        n = len(out) // e
        header = _header(e)
        if len(buf) < header.size:
            raise ValueError(f"{PLANES_ZSTD} frame of {len(buf)} bytes is shorter than its "
                             f"{header.size}-byte header")
        size, *fields = header.unpack_from(buf.data, 0)
        if size != len(out):
            raise ValueError(f"{PLANES_ZSTD} frame declares {size} bytes, expected {len(out)}")
        pos = header.size
        planes: list[np.ndarray | int] = []
        # zstd planes decode into this thread's scratch buffer, plane k at [k * n, (k + 1) * n).
        slots = scratch(n * e) if ZSTD in fields[0::2] else _NO_SLOTS
        for k in range(e):
            mode, arg = fields[2 * k], fields[2 * k + 1]
            planes.append(_plane_source(buf, pos, mode, arg, n, k, slots[n * k:n * (k + 1)]))
            pos += 0 if mode == FILL else arg
        if len(buf) - pos != len(out) - n * e:
            raise ValueError(f"{PLANES_ZSTD} frame holds {len(buf) - pos} bytes after its planes, "
                             f"expected {len(out) - n * e}")
        out[n * e:] = buf[pos:]
        unshuffle_planes(planes, e, out)

    def spec(self) -> CodecSpec:
        return CodecSpec(name=PLANES_ZSTD, configuration=(
            ("elementsize", self.elementsize), ("level", self.level)))


@cache
def _header(elementsize: int) -> struct.Struct:
    """Raw size (u32), then (mode u8, argument u32) per plane; little-endian, unpadded."""
    return struct.Struct("<I" + "BI" * elementsize)


@lru_cache(maxsize=64)
def _zero_frame(elementsize: int, nbytes: int) -> bytes:
    """The stored frame of ``nbytes`` zeros: every plane a fill of 0, then the zero tail
    (the same bytes for every such frame of a chunk, so built once)."""
    tail = nbytes % elementsize
    return _header(elementsize).pack(nbytes, *(FILL, 0) * elementsize) + bytes(tail)


_NO_SLOTS = np.empty(0, dtype=np.uint8)


def _plane_source(buf: np.ndarray, pos: int, mode: int, arg: int, n: int, k: int,
                  slot: np.ndarray) -> np.ndarray | int:
    """Plane ``k``'s ``n`` bytes (a view of ``buf``, or decoded into ``slot``, which is
    ``n`` bytes long whenever the frame has zstd planes) or its fill value."""
    if mode == FILL:
        if arg > 255:
            raise ValueError(f"{PLANES_ZSTD} plane {k}: fill value {arg} is not a byte")
        return arg
    if mode == RAW:
        if arg != n or pos + n > len(buf):
            raise ValueError(f"{PLANES_ZSTD} plane {k}: raw plane of {arg} bytes at {pos} in a "
                             f"{len(buf)}-byte frame, expected {n} bytes")
        return buf[pos:pos + n]
    if mode == ZSTD:
        if not 0 < arg <= len(buf) - pos:
            raise ValueError(f"{PLANES_ZSTD} plane {k}: zstd plane of {arg} bytes at {pos} does "
                             f"not fit a {len(buf)}-byte frame")
        return decompress_into(buf[pos:pos + arg].data, slot)
    raise ValueError(f"{PLANES_ZSTD} plane {k}: unknown mode {mode}")


def _sample_planes(raw: np.ndarray, elementsize: int, n: int) -> list[int]:
    """Per plane, from ``SAMPLE_ELEMENTS`` evenly spaced elements: FILL if the sample is one
    value, ZSTD if its collision entropy is under 7 bits per byte, else RAW.

    The collision count sum c(c-1) over byte values estimates m(m-1) * sum p^2 without
    bias; near-random planes (mantissa bytes) give about m(m-1)/256.
    """
    columns = raw[:n * elementsize].reshape(n, elementsize)[::max(1, n // SAMPLE_ELEMENTS)]
    m = len(columns)
    pairs = m * (m - 1)
    out = []
    for k in range(elementsize):
        counts = np.bincount(columns[:, k], minlength=256)
        collisions = int(counts @ counts) - m
        out.append(FILL if collisions == pairs else ZSTD if collisions * 128 > pairs else RAW)
    return out


def _all_equal(p: np.ndarray) -> bool:
    """Whether every byte of ``p`` (non-empty) equals its first."""
    if p[0] == 0:
        return all_zero(p)
    return not np.any(p != p[0])
