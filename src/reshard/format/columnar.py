"""Reading the chunk arrays of a manifest straight from its bytes, as columns.

A manifest of 2,048 ranks x 500 tensors holds 845k chunks in 132 MiB of JSON. Parsing it
into Python objects (a dict, nine keys and three lists per chunk) took ~2 CPU s with
orjson, and checking those objects column by column (format.chunks) ~3 s more, both
mostly spent walking millions of scattered small objects. Here each entry's chunk array
is read from the bytes with numpy: the integers are decoded in bulk, the text around
them is compared with the chunk template, and the checks of format.chunks run over
int64 columns.

This is only a fast path, for the layout reshard writes (canonical JSON, no spaces):

* ``split_chunk_arrays`` cuts out every array that is plainly a list of chunk objects
  of that layout and stands a random marker string in for it; the rest of the document
  (the skeleton) goes through the ordinary JSON parser. Anything unusual in an array
  (spaces, signs, fractions, leading zeros, 19 or more digits, other keys or key order)
  leaves it in the skeleton, parsed as before.
* ``ChunkArray.columns`` returns the same ``Columns`` as ``checked_columns`` would for
  the parsed array, or None when anything is not plainly valid; the caller then parses
  the array's text (``ChunkArray.items``) and runs the ordinary checks, which word the
  error. It must never accept what those checks refuse; tests/unit/test_columnar.py
  compares the two.

Why a cut-out array parses as the ordinary parser would read it in place: its text is a
comma-separated run of objects whose only characters besides the fixed keys and
punctuation are digit runs (non-negative JSON integers), so it is valid JSON on its own
and means the same anywhere an array may stand. The ``[`` it starts with follows
``{"chunks":``, which in valid JSON is always the opening of an object and its first
key: a quote inside a string would have to be escaped, and a string closed by that
quote could not be followed by ``chunks``. The marker is a JSON string with a random
128-bit nonce, so no document can hold it by chance; the caller checks that every
marker was taken exactly once, as the chunks of a tensor entry, and otherwise parses
the whole document the ordinary way.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import numpy as np

from ..core.layout import is_grid
from .chunks import Columns, identity_ok
from .limits import MAX_DIM_SIZE, MAX_FILE_OFFSET, MAX_FRAME_RAW_NBYTES, MAX_INT

_OPEN = b'{"chunks":[{"codec":'
_NEXT = b'},{"codec":'
MIN_CHUNKS = 128
"""Arrays of fewer chunks stay with the JSON parser: the columnar read costs ~0.3-0.5 ms
per array whatever its length, which the ordinary parse only exceeds from about 100
chunks (a manifest of 5,000 one-chunk tensors parsed 6x slower with every array cut
out)."""
_CONTENT_AT = len(b'{"chunks":[')
_HASH = 35  # "#": a digit run in the template text
_MAX_DIGITS = 18  # every integer of 18 digits fits int64
_POW10 = 10 ** np.arange(_MAX_DIGITS, dtype=np.int64)
# One chunk object without its braces, each integer written as "#"; groups: the frames
# after the first, the offsets after the first, the sizes after the first.
_PIECE = re.compile(
    rb'"codec":#,"file":#,"frame_raw_nbytes":#,"frames":\[\[#,#\]((?:,\[#,#\])*)\],'
    rb'"nbytes":#,"offset":#,"offsets":\[#((?:,#)*)\],"raw_nbytes":#,"sizes":\[#((?:,#)*)\]'
)


class ChunkArray:
    """One cut-out chunk array: its integers in text order and each chunk's form."""

    __slots__ = ("_data", "_span", "_loads", "_values", "_frames", "_ndim")

    def __init__(self, data: bytes, span: tuple[int, int], loads: Callable[[bytes], object],
                 values: Any, frames: Any, ndim: int) -> None:
        self._data = data
        self._span = span
        """The array's text, ``[`` to ``]``, is ``data[span[0]:span[1]]`` (not copied)."""
        self._loads = loads
        self._values = values
        self._frames = frames
        """Each chunk's frame count (int64 array)."""
        self._ndim = ndim
        """The dims of every chunk's offsets and sizes, or -1 when they differ."""

    def items(self) -> object:
        """The array as the JSON parser reads it (a list of chunk dicts)."""
        return self._loads(self._data[self._span[0]:self._span[1]])

    def columns(
        self, shape: tuple[int, ...], itemsize: int, n_files: int, identity_codecs: Sequence[bool],
    ) -> Columns | None:
        """What ``checked_columns(self.items(), ...)`` returns when it accepts the array
        with these arguments; None when it might not (the caller then asks it)."""
        ndim = len(shape)
        if self._ndim != ndim or ndim == 0:
            return None
        return _columns(self._values, self._frames, shape, itemsize, n_files, identity_codecs)


def split_chunk_arrays(
    data: bytes, loads: Callable[[bytes], object]
) -> tuple[bytes, dict[str, ChunkArray]] | None:
    """The skeleton of ``data`` (every chunk array in reshard's layout replaced by a
    marker string) and the arrays by marker; None when there is none to cut out."""
    if type(data) is not bytes:
        return None
    nonce = secrets.token_hex(16)
    parts: list[bytes] = []
    arrays: dict[str, ChunkArray] = {}
    done = 0  # data[:done] is in parts
    at = data.find(_OPEN)
    while at >= 0:
        start = at + _CONTENT_AT  # the first chunk's "{"
        end = data.find(b"}]", start) + 1  # the "]" after the last chunk's "}"
        if end <= 0:
            break
        few = data.count(_NEXT, start, end) + 1 < MIN_CHUNKS
        array = None if few else _scan(data, (start - 1, end + 1), loads)
        if array is not None:
            marker = f"@reshard-columns:{nonce}:{len(arrays)}"
            arrays[marker] = array
            parts.append(data[done:start - 1])
            parts.append(b'"' + marker.encode("ascii") + b'"')
            done = end + 1  # past the "]"
        at = data.find(_OPEN, end)
    if not arrays:
        return None
    parts.append(data[done:])
    return b"".join(parts), arrays


def _scan(data: bytes, span: tuple[int, int], loads: Callable[[bytes], object]) -> ChunkArray | None:
    """``data[span[0]:span[1]]`` (``[``, chunk objects joined by commas, ``]``) as a
    ChunkArray, when it is laid out exactly as reshard writes it; else None."""
    u = np.frombuffer(data, np.uint8, count=span[1] - span[0] - 2, offset=span[0] + 1)
    digit = (u - 48) <= 9  # uint8 arithmetic: bytes below "0" wrap to large values
    bounds = np.flatnonzero(np.diff(digit, prepend=False, append=False))
    starts, ends = bounds[0::2], bounds[1::2]
    if not len(starts):
        return None
    lengths = ends - starts
    # JSON refuses leading zeros; more digits than int64 holds go to the JSON parser.
    if int(lengths.max()) > _MAX_DIGITS or bool(((u[starts] == 48) & (lengths > 1)).any()):
        return None
    keep = ~digit
    keep[starts] = True
    skeleton = np.where(digit, np.uint8(_HASH), u)[keep].tobytes()
    forms = _forms(skeleton)
    if forms is None:
        return None
    frames, ndims = forms
    # Digit j of the digits taken in order, in run r (first at[r]), weighs
    # 10 ** (lengths[r] - 1 - (j - at[r])).
    at = np.cumsum(lengths) - lengths
    exponent = np.repeat(lengths - 1 + at, lengths) - np.arange(int(at[-1] + lengths[-1]))
    values = np.add.reduceat(_POW10[exponent] * (u[digit] - 48), at)
    return ChunkArray(data, span, loads, values, frames, ndims)


def _forms(skeleton: bytes) -> tuple[Any, int] | None:
    """Each chunk's frame count, and the dims of every box (-1 when they differ), when
    ``skeleton`` is chunk templates joined by commas; else None."""
    if skeleton[:1] != b"{" or skeleton[-1:] != b"}":
        return None
    inner = skeleton[1:-1]
    n = inner.count(b"},{") + 1
    first = inner.split(b"},{", 1)[0]
    # Usually every chunk has one form: one comparison of the whole text.
    pieces = [first] * n if inner == b"},{".join([first] * n) else inner.split(b"},{")
    shapes: dict[bytes, tuple[int, int, int]] = {}
    for piece in set(pieces):
        m = _PIECE.fullmatch(piece)
        if m is None:
            return None
        shapes[piece] = (1 + len(m[1]) // 6, 1 + len(m[2]) // 2, 1 + len(m[3]) // 2)
    ndims = {o for _, o, _ in shapes.values()} | {s for _, _, s in shapes.values()}
    frames = np.array([shapes[p][0] for p in pieces], dtype=np.int64) if len(shapes) > 1 else \
        np.full(n, next(iter(shapes.values()))[0], dtype=np.int64)
    return frames, (ndims.pop() if len(ndims) == 1 else -1)


def _columns(
    values: Any, frames: Any, shape: tuple[int, ...], itemsize: int, n_files: int,
    identity_codecs: Sequence[bool],
) -> Columns | None:
    """The checks of format.chunks.checked_columns, over int64 columns. Every value is
    a non-negative integer below 10**18 here (the scan made sure), so no sum or product
    below overflows int64 once the bounds before it hold."""
    ndim = len(shape)
    n = len(frames)
    # Chunk i's integers: codec, file, frame_raw_nbytes, 2 per frame, nbytes, offset,
    # offsets (ndim), raw_nbytes, sizes (ndim).
    width = 6 + 2 * frames + 2 * ndim
    base = np.cumsum(width) - width
    if int(base[-1] + width[-1]) != len(values):
        return None
    codec, file, frame_raw = values[base], values[base + 1], values[base + 2]
    after = base + 3 + 2 * frames
    nbytes, offset = values[after], values[after + 1]
    offs = values[(after + 2)[:, None] + np.arange(ndim)]
    raw = values[after + 2 + ndim]
    sizes = values[(after + 3 + ndim)[:, None] + np.arange(ndim)]
    total = int(frames.sum())
    # Each frame's first integer: its chunk's first frame's, plus 2 per frame before it.
    first_frame = np.cumsum(frames) - frames
    frame_at = np.repeat(base + 3 - 2 * first_frame, frames) + 2 * np.arange(total)
    frame_nbytes, frame_crc = values[frame_at], values[frame_at + 1]

    scalars = (file, offset, nbytes, raw, codec, frame_raw)
    if max(int(c.max()) for c in scalars) > MAX_INT:
        return None
    if (int(file.max()) >= n_files or int(codec.max()) >= len(identity_codecs)
            or int(frame_raw.min()) < 1 or int(frame_raw.max()) > MAX_FRAME_RAW_NBYTES):
        return None
    # Boxes: non-empty, inside the shape, distinct, a grid over it.
    if int(sizes.min()) < 1 or int(sizes.max()) > MAX_DIM_SIZE:
        return None
    if bool((offs + sizes > np.array(shape, dtype=np.int64)).any()):
        return None
    numel = sizes.prod(axis=1)  # each size is at most its extent: no overflow
    if bool((raw != numel * itemsize).any()):
        return None
    if bool((frames != -(-raw // frame_raw)).any()):
        return None
    if int(frame_nbytes.max()) > MAX_DIM_SIZE or int(frame_crc.max()) > 0xFFFFFFFF:
        return None
    # Frame sums below 2**62 cannot overflow; a chunk of so many frames goes the slow way.
    if int(frames.max()) * int(frame_nbytes.max()) >= MAX_INT:
        return None
    if bool((np.add.reduceat(frame_nbytes, first_frame) != nbytes).any()):
        return None
    if bool((offset > MAX_FILE_OFFSET - nbytes).any()):
        return None
    o_cols, s_cols = offs.T.tolist(), sizes.T.tolist()
    offsets_l: list[tuple[int, ...]] = list(zip(*o_cols))
    by_offsets = dict(zip(offsets_l, range(n)))
    if len(by_offsets) != n:
        return None
    intervals = [_pairs(o, s) for o, s in zip(offs.T, sizes.T)]
    if not is_grid(shape, intervals, n):
        return None
    counts = frames.tolist()
    bounds = None if max(counts) == 1 else [0, *accumulate(counts)]
    codec_t, raw_t, nbytes_t = tuple(codec.tolist()), tuple(raw.tolist()), tuple(nbytes.tolist())
    frame_raw_t, frame_nbytes_l = tuple(frame_raw.tolist()), frame_nbytes.tolist()
    if not identity_ok(codec_t, identity_codecs, raw_t, nbytes_t, frame_raw_t, frame_nbytes_l,
                       counts, bounds):
        return None
    return Columns(
        offsets=offsets_l, sizes=list(zip(*s_cols)), file=tuple(file.tolist()),
        offset=tuple(offset.tolist()), nbytes=nbytes_t, raw_nbytes=raw_t, codec=codec_t,
        frame_raw_nbytes=frame_raw_t, frame_nbytes=frame_nbytes_l,
        frame_crc32c=frame_crc.tolist(), frame_bounds=bounds,
        grid_starts=[sorted({o for o, _ in found}) for found in intervals],
        by_offsets=by_offsets,
    )


def _pairs(offsets: Any, sizes: Any) -> set[tuple[int, int]]:
    """The distinct ``(offset, size)`` pairs of one dim (sorted and deduplicated in
    numpy: the set then holds a few pairs, not one per chunk)."""
    order = np.lexsort((sizes, offsets))
    o, s = offsets[order], sizes[order]
    new = np.ones(len(o), dtype=bool)
    new[1:] = (o[1:] != o[:-1]) | (s[1:] != s[:-1])
    return set(zip(o[new].tolist(), s[new].tolist()))
