"""Byte planes compressed by libzstd through zstandard's cffi binding, straight into the
caller's buffer.

zstandard's C backend returns a fresh bytes object per frame and offers no way to entropy
code without a match search. Its cffi binding (``zstandard.backend_cffi``, in the same
wheel; it needs the ``cffi`` package) reaches libzstd's advanced API: with libzstd 1.5.7
or later, ``ZSTD_compressSequencesAndLiterals`` Huffman-codes a plane handed over as one
run of literals per block, and every call writes into a given buffer. Without the binding
or that function, :func:`plane_contexts` is None and callers use the C backend. cffi
releases the GIL during each call, as the C backend does, so frames still compress in
parallel on the I/O threads.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import numpy as np

from .. import config

PROBE_NBYTES = 4096
"""Bytes at the start of a plane that the repeat probe compresses."""

_PROBE_TARGET_LENGTH = 4
"""The probe's zstd ``targetLength``: with the fast strategy, a value above 0 stores
literals raw (the probe only counts what matches save) and skips positions
``targetLength + 1`` at a time, which still finds runs and periodic data."""

FAST_PLANE_HASH_LOG = 6
FAST_PLANE_MIN_MATCH = 7
"""zstd's match settings for byte planes at fast levels, with the fast strategy and
target length 0, in this module's contexts and in zstd_frames.compressor alike."""

_BLOCK_NBYTES = 128 << 10
"""zstd's largest block: each run of literals handed over is at most this long."""

_LITERALS_MIN_DST_NBYTES = 64
"""Smallest output buffer handed to ``ZSTD_compressSequencesAndLiterals``. libzstd 1.5.7
does not check the frame header's error there: a buffer under 18 bytes (the largest
frame header) makes it write through a wild pointer (seen under valgrind). Smaller
outputs go through ``ZSTD_compress2``, which checks every size."""


@cache
def _binding() -> tuple[Any, Any] | None:
    try:
        from zstandard import backend_cffi
    except ImportError:  # no cffi package, or a zstandard build without the binding
        return None
    lib: Any = getattr(backend_cffi, "lib", None)
    if not hasattr(lib, "ZSTD_compressSequencesAndLiterals"):  # libzstd before 1.5.7
        return None
    return backend_cffi.ffi, lib  # type: ignore[attr-defined]


_local = threading.local()


def plane_contexts() -> PlaneContexts | None:
    """This thread's contexts (libzstd contexts are not thread-safe), or None without the
    cffi binding or with ``RESHARD_ZSTD_LITERALS=0``."""
    if not config.zstd_literals():
        return None
    ctx = getattr(_local, "contexts", None)
    if ctx is None:
        binding = _binding()
        if binding is None:
            return None
        ctx = _local.contexts = PlaneContexts(*binding)
    return ctx


class PlaneContexts:
    """One thread's libzstd compression contexts for byte planes."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self._ffi, self._lib = ffi, lib
        # The smallest match tables (this context never searches for matches: larger ones
        # were allocated and cleared for nothing), and a window that allows 128 KiB blocks.
        self._literals = self._context(
            (lib.ZSTD_c_blockDelimiters, lib.ZSTD_sf_explicitBlockDelimiters),
            (lib.ZSTD_c_literalCompressionMode, lib.ZSTD_ps_enable),
            (lib.ZSTD_c_strategy, lib.ZSTD_fast), (lib.ZSTD_c_windowLog, 17),
            (lib.ZSTD_c_hashLog, 6), (lib.ZSTD_c_chainLog, 6), (lib.ZSTD_c_minMatch, 7),
        )
        self._probe = self._context(
            (lib.ZSTD_c_strategy, lib.ZSTD_fast), (lib.ZSTD_c_hashLog, 6),
            (lib.ZSTD_c_minMatch, 7), (lib.ZSTD_c_targetLength, _PROBE_TARGET_LENGTH),
        )
        self._matches: dict[int, Any] = {}
        self._probe_capacity = lib.ZSTD_compressBound(PROBE_NBYTES)
        self._probe_out = ffi.new("char[]", self._probe_capacity)
        self._sequences = ffi.new("ZSTD_Sequence[]", 1)

    def _context(self, *params: tuple[int, int]) -> Any:
        ffi, lib = self._ffi, self._lib
        cctx = lib.ZSTD_createCCtx()
        if cctx == ffi.NULL:
            raise MemoryError("ZSTD_createCCtx failed")
        cctx = ffi.gc(cctx, lib.ZSTD_freeCCtx)
        for param, value in params:
            r = lib.ZSTD_CCtx_setParameter(cctx, param, value)
            if lib.ZSTD_isError(r):
                name = ffi.string(lib.ZSTD_getErrorName(r)).decode()
                raise RuntimeError(f"zstd parameter {param} = {value}: {name}")
        return cctx

    def compress_into(self, buf: np.ndarray, n: int, out: np.ndarray, *, fast: bool,
                      level: int) -> int:
        """See ``zstd_frames.compress_plane_into``: the size written to ``out``, or 0."""
        if n <= 0 or not len(out):
            return 0
        ffi, lib = self._ffi, self._lib
        src = ffi.from_buffer(buf)
        dst = ffi.from_buffer(out, require_writable=True)
        if (fast and len(out) >= _LITERALS_MIN_DST_NBYTES
                and not self._repeats(src, min(n, PROBE_NBYTES))):
            cctx = self._literals
            r = self._literals_only(src, n, len(buf), dst, len(out))
            if lib.ZSTD_isError(r) and n > _BLOCK_NBYTES:
                # It fails as a whole when any one block does not compress (it cannot
                # store a block raw); ZSTD_compress2 stores that block raw, codes the rest.
                lib.ZSTD_CCtx_reset(cctx, lib.ZSTD_reset_session_only)
                cctx = self._matches_context(level, fast)
                r = lib.ZSTD_compress2(cctx, dst, len(out), src, n)
        else:
            cctx = self._matches_context(level, fast)
            r = lib.ZSTD_compress2(cctx, dst, len(out), src, n)
        if lib.ZSTD_isError(r):  # mostly: it does not fit in ``out``
            lib.ZSTD_CCtx_reset(cctx, lib.ZSTD_reset_session_only)
            return 0
        return int(r)

    def _repeats(self, src: Any, m: int) -> bool:
        """Whether matches save at least 1/8 of the plane's first ``m`` bytes."""
        lib = self._lib
        r = lib.ZSTD_compress2(self._probe, self._probe_out, self._probe_capacity, src, m)
        if lib.ZSTD_isError(r):
            lib.ZSTD_CCtx_reset(self._probe, lib.ZSTD_reset_session_only)
            return False
        return int(r) < m - m // 8

    def _literals_only(self, src: Any, n: int, capacity: int, dst: Any, dst_nbytes: int) -> int:
        """One zstd frame of ``n`` literals and no matches: one sequence per block, each a
        block delimiter (offset and match length 0) carrying that block's literals."""
        blocks = -(-n // _BLOCK_NBYTES)
        if len(self._sequences) < blocks:
            self._sequences = self._ffi.new("ZSTD_Sequence[]", blocks)
        seqs = self._sequences
        for b in range(blocks):
            s = seqs[b]
            s.offset = s.matchLength = s.rep = 0
            s.litLength = min(_BLOCK_NBYTES, n - b * _BLOCK_NBYTES)
        return self._lib.ZSTD_compressSequencesAndLiterals(  # type: ignore[no-any-return]
            self._literals, dst, dst_nbytes, seqs, blocks, src, n, capacity, n)

    def _matches_context(self, level: int, fast: bool) -> Any:
        """The context of a full zstd compression: at fast levels the match settings of
        ``zstd_frames.compressor(PLANE_PARAMS, level)`` on top of level 3 (one context for
        every fast level; the C backend derives its other parameters from the level
        itself), else the level's own."""
        key = 0 if fast else level  # the fast settings do not depend on the level
        cctx = self._matches.get(key)
        if cctx is None:
            lib = self._lib
            if fast:
                cctx = self._context(
                    (lib.ZSTD_c_compressionLevel, 3), (lib.ZSTD_c_strategy, lib.ZSTD_fast),
                    (lib.ZSTD_c_hashLog, FAST_PLANE_HASH_LOG),
                    (lib.ZSTD_c_minMatch, FAST_PLANE_MIN_MATCH), (lib.ZSTD_c_targetLength, 0),
                )
            else:
                cctx = self._context((lib.ZSTD_c_compressionLevel, level))
            self._matches[key] = cctx
        return cctx
