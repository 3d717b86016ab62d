"""Zstandard frame codecs: plain ``zstd`` and ``shuffle-zstd`` (byte shuffle, then zstd).

Every stored frame is one Zstandard frame that records its content size, so a frame is
decoded into exactly its raw size and a frame claiming more is refused before any
allocation. Compressor and decompressor contexts are cached per thread (a context is
not thread-safe, and creating one per frame costs more than compressing a small frame).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, CorruptCheckpointError
from ..format.manifest import CodecSpec
from .shuffle import MAX_ELEMENTSIZE, plane_bounds, shuffle, unshuffle

ZSTD_MIN_LEVEL = -(1 << 17)
ZSTD_MAX_LEVEL = 22
SHUFFLE_ZSTD = "shuffle-zstd"


@dataclass(frozen=True, slots=True)
class ZstdCodec:
    """Zstandard compression of each frame (``zstandard`` package).

    ``level`` trades save time for size, as in the ``zstd`` tool: 1-3 are fast, 4-9 are
    slower with small gains, 10-19 are much slower, 20-22 ("ultra") need lots of memory;
    negative levels (down to -131072) are faster still and compress less. Pass
    ``save(..., codec=ZstdCodec(level=9))`` or ``codec="zstd:9"``; ``codec="zstd"`` is
    ``ZstdCodec()``.

    ``shuffle`` (default on): chunks of elements wider than one byte are byte-shuffled
    before compression (codec ``shuffle-zstd`` in the manifest, see docs/FORMAT.md).
    Float checkpoints then compress smaller and 2-4x faster than with plain zstd: the
    sign/exponent bytes are compressed on their own and the near-random mantissa bytes
    are stored as raw zstd blocks. At levels up to 3 the shuffled planes are compressed
    with zstd's fast strategy and a small match table (``hash_log`` 6, ``min_match`` 7),
    since entropy coding does the work on byte planes and matches mostly cost time, so
    levels 1-3 behave the same there; levels from 4 use zstd's parameters for the level.
    One-byte elements (bool, int8, uint8, float8) are stored as plain ``zstd``.
    ``shuffle=False`` stores plain ``zstd`` frames, readable by every reshard version.

    Frames are compressed in parallel on the I/O threads (zstandard releases the GIL); each
    is an independent zstd frame, so a partial load decodes only the frames it needs. The
    level is recorded in the manifest but is not needed to decode.
    """

    level: int = 3
    shuffle: bool = True
    name: str = "zstd"

    def __post_init__(self) -> None:
        _check_level("ZstdCodec", self.level)
        if not isinstance(self.shuffle, bool):
            raise CheckpointError(f"ZstdCodec: shuffle must be True or False, got {self.shuffle!r}")

    def encode(self, data: memoryview) -> bytes:
        """One plain zstd frame of ``data`` (the shuffle needs an element size: see
        :meth:`for_itemsize`)."""
        return bytes(_compressor("plain", self.level).compress(data))

    def decode(self, data: memoryview, max_nbytes: int = 1 << 30) -> bytes:
        """The bytes of one plain zstd frame, refused if it declares more than ``max_nbytes``."""
        import zstandard

        try:
            size = _content_size(data, max_nbytes)
            return bytes(_decompressor().decompress(data, max_output_size=max(1, size)))
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd frame does not decode: {e}") from e

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        """Decode one plain zstd frame into ``out``, which it must fill exactly."""
        _decompress_into(data, out)

    def for_itemsize(self, itemsize: int) -> ZstdCodec | ShuffleZstdCodec:
        """The codec that encodes the frames of a chunk of ``itemsize``-byte elements."""
        if self.shuffle and itemsize > 1:
            return ShuffleZstdCodec(level=self.level, elementsize=itemsize)
        return ZstdCodec(level=self.level, shuffle=False)

    def spec(self) -> CodecSpec:
        """The save-wide record (``shuffle-zstd`` without an element size when shuffling);
        :func:`chunk_spec` turns it into each chunk's record."""
        name = SHUFFLE_ZSTD if self.shuffle else "zstd"
        return CodecSpec(name=name, configuration=(("level", self.level),))


@dataclass(frozen=True, slots=True)
class ShuffleZstdCodec:
    """One chunk's frames: bytes shuffled by ``elementsize`` (docs/FORMAT.md), then one
    zstd frame. Built by ``ZstdCodec(...).for_itemsize(n)`` on save and from the
    manifest on load; users pick it through ``ZstdCodec(shuffle=True)``."""

    level: int = 3
    elementsize: int = 4
    name: str = SHUFFLE_ZSTD

    def __post_init__(self) -> None:
        _check_level("ShuffleZstdCodec", self.level)
        e = self.elementsize
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= MAX_ELEMENTSIZE:
            raise CheckpointError(
                f"ShuffleZstdCodec: elementsize must be an int in [1, {MAX_ELEMENTSIZE}], got {e!r}"
            )

    def encode(self, data: memoryview) -> bytes:
        import zstandard

        raw = np.frombuffer(data, dtype=np.uint8)
        if _all_zero(raw):  # shuffled zeros are the same zeros: skip the shuffle
            return bytes(_compressor(SHUFFLE_ZSTD, self.level).compress(raw))
        planes = shuffle(raw, self.elementsize, _scratch(len(raw)))
        # One zstd block (or more) per plane: a block mixing a random mantissa plane with
        # an exponent plane is Huffman-coded as a whole, and compresses worse and slower.
        obj = _compressor(SHUFFLE_ZSTD, self.level).compressobj(size=len(raw))
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
        size = _content_size(data, max_nbytes)
        out = np.empty(size, dtype=np.uint8)
        self.decode_into(data, out)
        return out.tobytes()

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        """Decode one frame into ``out`` (element order), which it must fill exactly."""
        shuffled = _decompress_into(data, _scratch(len(out)))
        # Zero frames (optimizer state at init, padding) compress ~1000x and are common;
        # their check runs only on frames that compressed more than 16x.
        if len(data) * 16 <= len(out) and _all_zero(shuffled):
            out[:] = 0
            return
        unshuffle(shuffled, self.elementsize, out)

    def spec(self) -> CodecSpec:
        return CodecSpec(name=SHUFFLE_ZSTD, configuration=(
            ("elementsize", self.elementsize), ("level", self.level)))


def chunk_spec(spec: CodecSpec, itemsize: int) -> CodecSpec:
    """The manifest record of a chunk of ``itemsize``-byte elements saved with the
    save-wide ``spec``; matches ``for_itemsize(itemsize).spec()`` of the codec."""
    if spec.name != SHUFFLE_ZSTD or "elementsize" in dict(spec.configuration):
        return spec
    level = dict(spec.configuration).get("level")
    if isinstance(level, bool) or not isinstance(level, int):
        raise CheckpointError(f"codec {SHUFFLE_ZSTD!r}: configuration.level must be an int, got {level!r}")
    if itemsize > 1:
        return ShuffleZstdCodec(level=level, elementsize=itemsize).spec()
    return ZstdCodec(level=level, shuffle=False).spec()


def codec_from_spec(spec: CodecSpec) -> ZstdCodec | ShuffleZstdCodec:
    """The decoder of a ``zstd`` or ``shuffle-zstd`` manifest record."""
    config = dict(spec.configuration)
    if spec.name == "zstd":
        return ZstdCodec(shuffle=False)  # the level is not needed to decode
    size = config.get("elementsize")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_ELEMENTSIZE:
        raise CorruptCheckpointError(
            f"codec {SHUFFLE_ZSTD!r}: configuration.elementsize must be an int in "
            f"[1, {MAX_ELEMENTSIZE}], got {size!r}"
        )
    return ShuffleZstdCodec(elementsize=size)


def _all_zero(data: np.ndarray) -> bool:
    """Whether every byte is zero (a max over 8-byte words: ~30 GB/s in cache; the first
    bytes alone settle it for most frames that are not, without reading the rest)."""
    if data[:64].any():
        return False
    whole = len(data) // 8 * 8
    return (whole == 0 or not data[:whole].view(np.uint64).max()) and not data[whole:].any()


def _check_level(owner: str, level: object) -> None:
    if isinstance(level, bool) or not isinstance(level, int):
        raise CheckpointError(f"{owner}: level must be an int, got {level!r}")
    if not ZSTD_MIN_LEVEL <= level <= ZSTD_MAX_LEVEL:
        raise CheckpointError(
            f"{owner}: level {level} is out of range [{ZSTD_MIN_LEVEL}, {ZSTD_MAX_LEVEL}]"
        )


def _content_size(data: memoryview, max_nbytes: int) -> int:
    """The content size a zstd frame declares, refused above ``max_nbytes`` or unknown."""
    import zstandard

    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd frame does not decode: {e}") from e
    if size < 0 or size > max_nbytes:
        raise ValueError(f"zstd frame declares {size} bytes, at most {max_nbytes} allowed")
    return int(size)


def _decompress_into(data: memoryview, out: np.ndarray) -> np.ndarray:
    """Decode one zstd frame that must declare and hold exactly ``len(out)`` bytes.

    Straight into ``out``: ``decompress()`` returned a fresh bytes object per frame,
    whose allocation and page faults cost as much as the decoding itself.
    """
    import zstandard

    size = _content_size(data, len(out))
    if size != len(out):
        raise ValueError(f"zstd frame declares {size} bytes, expected {len(out)}")
    view = out.data.cast("B")
    done = 0
    try:
        with _decompressor().stream_reader(data) as reader:
            while done < size:
                n = reader.readinto(view[done:])
                if n <= 0:
                    break
                done += n
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd frame does not decode: {e}") from e
    if done != size:  # a truncated frame ends early without an error
        raise ValueError(f"zstd frame decodes to {done} bytes, expected {size}")
    return out


_local = threading.local()


def _compressor(kind: str, level: int) -> Any:
    import zstandard

    cache = _local.__dict__.setdefault("compressors", {})
    ctx = cache.get((kind, level))
    if ctx is None:
        if kind == SHUFFLE_ZSTD and level <= 3:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, strategy=zstandard.STRATEGY_FAST, hash_log=6, min_match=7,
                write_content_size=1,
            )
            ctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            ctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cache[(kind, level)] = ctx
    return ctx


def _decompressor() -> Any:
    import zstandard

    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


_SCRATCH_MAX_NBYTES = 16 << 20


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's buffer for shuffled bytes (fresh memory page-faults on every frame);
    frames above 16 MiB (a raised RESHARD_FRAME_RAW_NBYTES) get a buffer of their own."""
    if nbytes > _SCRATCH_MAX_NBYTES:
        return np.empty(nbytes, dtype=np.uint8)
    buf = getattr(_local, "shuffled", None)
    if buf is None or len(buf) < nbytes:
        buf = _local.shuffled = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes]
