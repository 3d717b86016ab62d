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


# Little-endian, as the format's raw bytes are, whatever the host's order. 8-byte
# elements are faster as strided byte copies.
_WIDE: dict[int, np.dtype[np.unsignedinteger[Any]]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def shuffle(data: np.ndarray, elementsize: int, out: np.ndarray) -> np.ndarray:
    """Write the shuffled bytes of ``data`` (uint8, 1-D) into ``out`` (same length)."""
    n = len(data) // elementsize
    whole = n * elementsize
    wide = _WIDE.get(elementsize)
    if wide is not None and n:
        # Plane k is each little-endian element shifted right by 8k bits, cast to a byte:
        # one contiguous pass per plane (~3x faster than gathering strided bytes).
        elements = data[:whole].view(wide)
        for k in range(elementsize):
            np.right_shift(elements, 8 * k, out=out[k * n:(k + 1) * n], casting="unsafe")
    else:
        columns = data[:whole].reshape(n, elementsize)
        for k in range(elementsize):
            out[k * n:(k + 1) * n] = columns[:, k]
    out[whole:] = data[whole:]
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
