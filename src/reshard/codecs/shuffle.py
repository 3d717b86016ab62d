"""Byte shuffle: regroup the bytes of fixed-size elements into byte planes.

The shuffle filter of HDF5 and blosc. ``n = len(data) // elementsize`` whole elements
become ``elementsize`` planes of ``n`` bytes each (plane ``k`` holds byte ``k`` of every
element, in element order), followed by the ``len(data) % elementsize`` trailing bytes
unchanged. The sign/exponent bytes of floats then sit together in low-entropy planes
that a compressor squeezes well, while the near-random mantissa planes are stored as
they are. Pure numpy; both directions copy plane by plane, which numpy runs at several
GB/s (one strided 2-D transpose copy of bytes ran at ~0.2 GB/s).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_ELEMENTSIZE = 16
"""The widest element any dtype of the format has (complex128)."""


# Little-endian, as the format's raw bytes are, whatever the host's order.
_WIDE: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8"),
}


def shuffle(data: np.ndarray, elementsize: int, out: np.ndarray) -> np.ndarray:
    """Write the shuffled bytes of ``data`` (uint8, 1-D) into ``out`` (same length)."""
    n = len(data) // elementsize
    whole = n * elementsize
    for k in range(elementsize):
        plane(data, elementsize, k, out[k * n:(k + 1) * n])
    out[whole:] = data[whole:]
    return out


def plane(data: np.ndarray, elementsize: int, k: int, out: np.ndarray) -> np.ndarray:
    """Write plane ``k`` of ``data`` (byte ``k`` of each whole element) into ``out``, whose
    length is the number of whole elements."""
    n = len(out)
    e = elementsize
    wide = _WIDE.get(e)
    if wide is None or not n:
        out[:] = data[k:n * e:e]
        return out
    # Byte k of element i is the low byte of the little-endian word that starts at byte
    # i * e + k: a contiguous (for k > 0 unaligned) view of words, cast to bytes in one
    # pass. 1.3-1.8x faster than a shift then a cast, or than a strided byte gather; the
    # last element's word would run past the element, so its byte is copied on its own.
    if k == 0:
        np.copyto(out, data[:n * e].view(wide), casting="unsafe")
    else:
        np.copyto(out[:n - 1], data[k:k + (n - 1) * e].view(wide), casting="unsafe")
        out[n - 1] = data[(n - 1) * e + k]
    return out


def unshuffle_planes(planes: list[np.ndarray | int], elementsize: int, out: np.ndarray) -> np.ndarray:
    """Interleave ``elementsize`` planes (byte arrays of ``len(out) // elementsize``, or one
    byte value repeated) into the whole elements of ``out``; its tail bytes are untouched."""
    n = len(out) // elementsize
    whole = n * elementsize
    first = planes[0]
    if all(isinstance(p, int) for p in planes) and all(p == first for p in planes):
        out[:whole] = first  # zero frames: one fill
        return out
    lo, hi = planes[0], planes[-1]
    if elementsize == 2 and n and not isinstance(lo, int) and not isinstance(hi, int):
        # (high << 8) | low on 16-bit elements: ~2x faster than two strided byte stores.
        elements = out[:whole].view(_WIDE[2])
        np.left_shift(hi, 8, out=elements, dtype=_WIDE[2])
        np.bitwise_or(elements, lo, out=elements)
        return out
    columns = out[:whole].reshape(n, elementsize)
    for k, p in enumerate(planes):
        columns[:, k] = p
    return out


def unshuffle(data: np.ndarray, elementsize: int, out: np.ndarray) -> np.ndarray:
    """Invert :func:`shuffle`: write the element-ordered bytes of ``data`` into ``out``."""
    n = len(data) // elementsize
    whole = n * elementsize
    if elementsize == 2 and n:
        # (high << 8) | low on 16-bit elements: ~2x faster than two strided byte stores.
        elements = out[:whole].view(_WIDE[2])
        np.left_shift(data[n:whole], 8, out=elements, dtype=_WIDE[2])
        np.bitwise_or(elements, data[:n], out=elements)
    else:
        columns = out[:whole].reshape(n, elementsize)
        for k in range(elementsize):
            columns[:, k] = data[k * n:(k + 1) * n]
    out[whole:] = data[whole:]
    return out


def plane_bounds(nbytes: int, elementsize: int) -> list[tuple[int, int]]:
    """Byte ranges of the planes of a shuffled buffer of ``nbytes``, then of its tail."""
    n = nbytes // elementsize
    bounds = [(k * n, (k + 1) * n) for k in range(elementsize)]
    if nbytes > n * elementsize:
        bounds.append((n * elementsize, nbytes))
    return bounds
