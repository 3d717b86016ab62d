"""Zstandard helpers shared by the zstd codecs: per-thread contexts and scratch buffers,
content-size checks, decoding straight into a buffer, level and element-size checks,
zero detection.

Compressor and decompressor contexts are cached per thread (a context is not
thread-safe, and creating one per frame costs more than compressing a small frame).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import CheckpointError
from . import zstd_cffi
from .shuffle import MAX_ELEMENTSIZE

ZSTD_MIN_LEVEL = -(1 << 17)
ZSTD_MAX_LEVEL = 22
PLANE_PARAMS = "planes"
"""Compressor kind for byte planes: at levels up to 3, the fast strategy with a small
match table (entropy coding does the work on planes; matches mostly cost time)."""

FAST_LEVEL_MAX = 3
"""Levels up to this one compress byte planes with the fast settings (``PLANE_PARAMS``)."""

LITERALS_SLACK = 8
"""Readable bytes :func:`compress_plane_into` needs after a plane (zstd reads literals
8 bytes at a time)."""


def all_zero(data: np.ndarray) -> bool:
    """Whether every byte is zero (a max over 8-byte words: ~30 GB/s in cache; the first
    bytes alone settle it for most frames that are not, without reading the rest)."""
    if data[:64].any():
        return False
    whole = len(data) // 8 * 8
    return (whole == 0 or not data[:whole].view(np.uint64).max()) and not data[whole:].any()


def check_level(owner: str, level: object) -> None:
    if isinstance(level, bool) or not isinstance(level, int):
        raise CheckpointError(f"{owner}: level must be an int, got {level!r}")
    if not ZSTD_MIN_LEVEL <= level <= ZSTD_MAX_LEVEL:
        raise CheckpointError(
            f"{owner}: level {level} is out of range [{ZSTD_MIN_LEVEL}, {ZSTD_MAX_LEVEL}]"
        )


def check_elementsize(owner: str, elementsize: object) -> None:
    e = elementsize
    if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= MAX_ELEMENTSIZE:
        raise CheckpointError(
            f"{owner}: elementsize must be an int in [1, {MAX_ELEMENTSIZE}], got {e!r}"
        )


def content_size(data: memoryview, max_nbytes: int) -> int:
    """The content size a zstd frame declares, refused above ``max_nbytes`` or unknown."""
    import zstandard

    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd frame does not decode: {e}") from e
    if size < 0 or size > max_nbytes:
        raise ValueError(f"zstd frame declares {size} bytes, at most {max_nbytes} allowed")
    return int(size)


def decompress_into(data: memoryview, out: np.ndarray) -> np.ndarray:
    """Decode one zstd frame that must declare and hold exactly ``len(out)`` bytes.

    Straight into ``out``: ``decompress()`` returned a fresh bytes object per frame,
    whose allocation and page faults cost as much as the decoding itself.
    """
    import zstandard

    size = content_size(data, len(out))
    if size != len(out):
        raise ValueError(f"zstd frame declares {size} bytes, expected {len(out)}")
    view = out.data.cast("B")
    done = 0
    try:
        with decompressor().stream_reader(data) as reader:
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


def compressor(kind: str, level: int) -> Any:
    import zstandard

    cache = _local.__dict__.setdefault("compressors", {})
    ctx = cache.get((kind, level))
    if ctx is None:
        if kind == PLANE_PARAMS and level <= FAST_LEVEL_MAX:
            # target_length 0: a negative level's acceleration would also turn off the
            # Huffman coding of literals, which is all that compresses a byte plane.
            params = zstandard.ZstdCompressionParameters.from_level(
                level, strategy=zstandard.STRATEGY_FAST, hash_log=zstd_cffi.FAST_PLANE_HASH_LOG,
                min_match=zstd_cffi.FAST_PLANE_MIN_MATCH, target_length=0, write_content_size=1,
            )
            ctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            ctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cache[(kind, level)] = ctx
    return ctx


def decompressor() -> Any:
    import zstandard

    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


_SCRATCH_MAX_NBYTES = 16 << 20


def scratch(nbytes: int) -> np.ndarray:
    """This thread's buffer for shuffled bytes (fresh memory page-faults on every frame);
    frames above 16 MiB (a raised RESHARD_FRAME_RAW_NBYTES) get a buffer of their own."""
    if nbytes > _SCRATCH_MAX_NBYTES:
        return np.empty(nbytes, dtype=np.uint8)
    buf = getattr(_local, "shuffled", None)
    if buf is None or len(buf) < nbytes:
        buf = _local.shuffled = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes]


def compress_plane_into(buf: np.ndarray, n: int, out: np.ndarray, level: int) -> int:
    """Compress the byte plane ``buf[:n]`` into ``out`` as one zstd frame that declares its
    content size; its size, or 0 when it does not fit in ``out`` or does not compress (a
    plane of a few bytes may get 0 even where a frame would fit; the plane is then best
    stored raw). ``buf`` holds ``LITERALS_SLACK`` more readable bytes after the plane.

    At fast levels a plane is entropy coded only, without searching for matches, unless
    a probe of its first ``zstd_cffi.PROBE_NBYTES`` finds repeats: on float sign/exponent planes
    the match search cost a third of the compression time and found nothing (the output
    was even 0.3% larger), while runs and periodic data (sorted ids, a step function)
    compress hundreds of times better with matches. Levels above ``FAST_LEVEL_MAX`` use
    zstd's own settings for the level.
    """
    if len(buf) < n + LITERALS_SLACK:
        raise ValueError(f"plane buffer of {len(buf)} bytes holds no {LITERALS_SLACK} bytes "
                         f"after a {n}-byte plane")
    ctx = zstd_cffi.plane_contexts()
    if ctx is None:  # zstandard without its cffi binding: the C backend's compressor
        stored = compressor(PLANE_PARAMS, level).compress(buf[:n])
        if len(stored) > len(out):
            return 0
        out[:len(stored)] = np.frombuffer(stored, dtype=np.uint8)
        return len(stored)
    return ctx.compress_into(buf, n, out, fast=level <= FAST_LEVEL_MAX, level=level)
