"""Zstandard frame codecs: plain ``zstd``, ``shuffle-zstd`` (byte shuffle, then zstd) and
the ``ZstdCodec`` users pick, which writes ``planes-zstd`` (codecs/planes.py) by default.

Every zstd frame stored records its content size, so it is decoded into exactly its raw
size and a frame claiming more is refused before any allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, CorruptCheckpointError
from ..format.manifest import CodecSpec
from .planes import PLANES_ZSTD, PlanesZstdCodec
from .shuffle import MAX_ELEMENTSIZE, plane_bounds, shuffle, unshuffle
from .zstd_frames import (
    PLANE_PARAMS,
    ZSTD_MAX_LEVEL,
    ZSTD_MIN_LEVEL,
    all_zero,
    check_elementsize,
    check_level,
    compressor,
    content_size,
    decompress_into,
    decompressor,
    scratch,
)

SHUFFLE_ZSTD = "shuffle-zstd"
__all__ = ["SHUFFLE_ZSTD", "ZSTD_MAX_LEVEL", "ZSTD_MIN_LEVEL", "ShuffleZstdCodec", "ZstdCodec"]


@dataclass(frozen=True, slots=True)
class ZstdCodec:
    """Zstandard compression of each frame (``zstandard`` package).

    ``level`` trades save time for size, as in the ``zstd`` tool: 1-3 are fast, 4-9 are
    slower with small gains, 10-19 are much slower, 20-22 ("ultra") need lots of memory;
    negative levels (down to -131072) are faster still and compress less. Pass
    ``save(..., codec=ZstdCodec(level=9))`` or ``codec="zstd:9"``; ``codec="zstd"`` is
    ``ZstdCodec()``.

    ``shuffle`` and ``planes`` (both on by default) pick the layout of chunks whose
    elements are wider than one byte (see docs/FORMAT.md):

    * ``planes=True``: codec ``planes-zstd``. Each frame is split into byte planes (byte
      ``k`` of every element); each plane is stored raw, as one zstd frame, or as a single
      byte when constant, judged per frame from a sample. Floats compress as well as with
      ``shuffle-zstd`` while the encoder skips the near-random mantissa planes, and zero
      frames cost almost nothing: 13-37% less encoder CPU than ``shuffle-zstd`` on the
      benchmark's float datasets (docs/PERFORMANCE.md).
    * ``planes=False``: codec ``shuffle-zstd``, the byte-shuffled frame as one zstd frame
      (what reshard wrote before ``planes-zstd``; readable by those versions).
    * ``shuffle=False``: plain ``zstd`` frames, readable by every reshard version.

    At levels up to 3 byte planes are compressed with zstd's fast strategy and a small
    match table (``hash_log`` 6, ``min_match`` 7), since entropy coding does the work on
    planes and matches mostly cost time, so levels 1-3 behave the same there; levels from
    4 use zstd's parameters for the level (and ``planes-zstd`` then tries zstd on every
    plane). One-byte elements (bool, int8, uint8, float8) are always stored as plain
    ``zstd``.

    Frames are compressed in parallel on the I/O threads (zstandard releases the GIL); each
    frame is independent, so a partial load decodes only the frames it needs. The level is
    recorded in the manifest but is not needed to decode.
    """

    level: int = 3
    shuffle: bool = True
    planes: bool = True
    name: str = "zstd"

    def __post_init__(self) -> None:
        check_level("ZstdCodec", self.level)
        for option in ("shuffle", "planes"):
            value = getattr(self, option)
            if not isinstance(value, bool):
                raise CheckpointError(f"ZstdCodec: {option} must be True or False, got {value!r}")

    def encode(self, data: memoryview) -> bytes:
        """One plain zstd frame of ``data`` (the shuffle needs an element size: see
        :meth:`for_itemsize`)."""
        return bytes(compressor("plain", self.level).compress(data))

    def decode(self, data: memoryview, max_nbytes: int = 1 << 30) -> bytes:
        """The bytes of one plain zstd frame, refused if it declares more than ``max_nbytes``."""
        import zstandard

        try:
            size = content_size(data, max_nbytes)
            return bytes(decompressor().decompress(data, max_output_size=max(1, size)))
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd frame does not decode: {e}") from e

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        """Decode one plain zstd frame into ``out``, which it must fill exactly."""
        decompress_into(data, out)

    def for_itemsize(self, itemsize: int) -> ZstdCodec | ShuffleZstdCodec | PlanesZstdCodec:
        """The codec that encodes the frames of a chunk of ``itemsize``-byte elements."""
        if not self.shuffle or itemsize <= 1:
            return ZstdCodec(level=self.level, shuffle=False)
        if self.planes:
            return PlanesZstdCodec(level=self.level, elementsize=itemsize)
        return ShuffleZstdCodec(level=self.level, elementsize=itemsize)

    def spec(self) -> CodecSpec:
        """The save-wide record (without an element size when shuffling); :func:`chunk_spec`
        turns it into each chunk's record."""
        name = (PLANES_ZSTD if self.planes else SHUFFLE_ZSTD) if self.shuffle else "zstd"
        return CodecSpec(name=name, configuration=(("level", self.level),))


@dataclass(frozen=True, slots=True)
class ShuffleZstdCodec:
    """One chunk's frames: bytes shuffled by ``elementsize`` (docs/FORMAT.md), then one
    zstd frame. Built by ``ZstdCodec(planes=False).for_itemsize(n)`` on save and from the
    manifest on load."""

    level: int = 3
    elementsize: int = 4
    name: str = SHUFFLE_ZSTD

    def __post_init__(self) -> None:
        check_level("ShuffleZstdCodec", self.level)
        check_elementsize("ShuffleZstdCodec", self.elementsize)

    def encode(self, data: memoryview) -> bytes:
        import zstandard

        raw = np.frombuffer(data, dtype=np.uint8)
        if all_zero(raw):  # shuffled zeros are the same zeros: skip the shuffle
            return bytes(compressor(PLANE_PARAMS, self.level).compress(raw))
        planes = shuffle(raw, self.elementsize, scratch(len(raw)))
        # One zstd block (or more) per plane: a block mixing a random mantissa plane with
        # an exponent plane is Huffman-coded as a whole, and compresses worse and slower.
        obj = compressor(PLANE_PARAMS, self.level).compressobj(size=len(raw))
        parts: list[bytes] = []
        for a, b in plane_bounds(len(raw), self.elementsize):
            if a == b:
                continue
            if parts:  # end the previous plane's block; the last one ends with the frame
                parts.append(obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            parts.append(obj.compress(planes[a:b]))
        parts.append(obj.flush())
        return b"".join(parts)

    def decode(self, data: memoryview, max_nbytes: int = 1 << 30) -> bytes:
        size = content_size(data, max_nbytes)
        out = np.empty(size, dtype=np.uint8)
        self.decode_into(data, out)
        return out.tobytes()

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        """Decode one frame into ``out`` (element order), which it must fill exactly."""
        shuffled = decompress_into(data, scratch(len(out)))
        # Zero frames (optimizer state at init, padding) compress ~1000x and are common;
        # their check runs only on frames that compressed more than 16x.
        if len(data) * 16 <= len(out) and all_zero(shuffled):
            out[:] = 0
            return
        unshuffle(shuffled, self.elementsize, out)

    def spec(self) -> CodecSpec:
        return CodecSpec(name=SHUFFLE_ZSTD, configuration=(
            ("elementsize", self.elementsize), ("level", self.level)))


_SHUFFLED = (SHUFFLE_ZSTD, PLANES_ZSTD)


def chunk_spec(spec: CodecSpec, itemsize: int) -> CodecSpec:
    """The manifest record of a chunk of ``itemsize``-byte elements saved with the
    save-wide ``spec``; matches ``for_itemsize(itemsize).spec()`` of the codec."""
    if spec.name not in _SHUFFLED or "elementsize" in dict(spec.configuration):
        return spec
    level = dict(spec.configuration).get("level")
    if isinstance(level, bool) or not isinstance(level, int):
        raise CheckpointError(f"codec {spec.name!r}: configuration.level must be an int, got {level!r}")
    return ZstdCodec(level=level, planes=spec.name == PLANES_ZSTD).for_itemsize(itemsize).spec()


def codec_from_spec(spec: CodecSpec) -> ZstdCodec | ShuffleZstdCodec | PlanesZstdCodec:
    """The decoder of a ``zstd``, ``shuffle-zstd`` or ``planes-zstd`` manifest record."""
    config = dict(spec.configuration)
    if spec.name == "zstd":
        return ZstdCodec(shuffle=False)  # the level is not needed to decode
    size = config.get("elementsize")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_ELEMENTSIZE:
        raise CorruptCheckpointError(
            f"codec {spec.name!r}: configuration.elementsize must be an int in "
            f"[1, {MAX_ELEMENTSIZE}], got {size!r}"
        )
    if spec.name == PLANES_ZSTD:
        return PlanesZstdCodec(elementsize=size)
    return ShuffleZstdCodec(elementsize=size)
