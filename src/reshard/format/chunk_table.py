"""The chunks of a parsed tensor entry, kept as checked columns and built on access.

A manifest of 2,048 ranks x 500 tensors holds 845k chunks. Building a Chunk, its Box and
its Frames for every one of them took about as long as parsing the JSON, while a rank
reading a resharded layout touches a few chunks per entry. ``ChunkTable`` holds the
columns that format.chunks already checked in full (every field of every chunk, and the
tiling of the entry), and builds the Chunk objects one at a time, when they are asked
for. Nothing is validated later: a table exists only for an entry whose every chunk
passed the checks of docs/FORMAT.md.

``touching(box)`` finds the chunks a box intersects from the grid the chunks form (the
fast path accepts only grid tilings, and keeps the grid's cell starts and the chunk of
each cell from its checks), by bisection per dimension: a rank's read plan no longer
scans every chunk of every entry it loads.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Any, overload

from ..core.layout import Box
from ..core.records import fast_constructor
from .chunks import Columns

_new_box = fast_constructor(Box)


class ChunkTable(Sequence[Any]):
    """A read-only sequence of Chunk, equal to the tuple of the same chunks.

    ``make_chunk(box, file, offset, nbytes, raw_nbytes, codec, frame_raw_nbytes, frames,
    column_crcs)``
    and ``make_frame(nbytes, crc32c)`` build the objects (format.manifest passes its
    classes' constructors; this module does not import manifest, which imports it).
    """

    __slots__ = ("_columns", "_files", "_codecs", "_make_chunk", "_make_frame", "_built")

    def __init__(self, columns: Columns, files: Sequence[str], codecs: Sequence[Any], *,
                 make_chunk: Any, make_frame: Any) -> None:
        self._columns = columns
        self._files = files
        self._codecs = codecs
        self._make_chunk = make_chunk
        self._make_frame = make_frame
        self._built: list[Any] = [None] * len(columns.file)

    def __len__(self) -> int:
        return len(self._built)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Any, ...]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        chunk = self._built[index]
        if chunk is None:
            # A race between threads builds two equal chunks; either one is kept.
            chunk = self._built[index] = self._build(index if index >= 0 else index + len(self))
        return chunk

    def __iter__(self) -> Iterator[Any]:
        return map(self.__getitem__, range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, ChunkTable)):
            return len(self) == len(other) and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"ChunkTable({len(self)} chunks)"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the plain tuple it stands for: a receiver gets ordinary chunks.
        return tuple, (tuple(self),)

    @property
    def files(self) -> list[str]:
        """The data file of each chunk, in order (without building the chunks)."""
        return list(map(self._files.__getitem__, self._columns.file))

    @property
    def codec_names(self) -> set[str]:
        """The names of the codecs the chunks use."""
        return {self._codecs[i].name for i in set(self._columns.codec)}

    def touching(self, box: Box) -> list[int]:
        """Indices of the chunks that share an element with ``box``, in order."""
        if any(s == 0 for s in box.sizes) or len(box.sizes) != len(self._columns.offsets[0]):
            return []
        starts, cells = self._columns.grid_starts, self._columns.by_offsets
        ranges = []
        for d, (lo, size) in enumerate(zip(box.offsets, box.sizes)):
            cuts = starts[d]
            # The cells whose start is below the box's end, from the one holding its start.
            first = max(0, bisect_right(cuts, lo) - 1)
            ranges.append(cuts[first:bisect_left(cuts, lo + size)])
        found = [cells[cell] for cell in product(*ranges) if cell in cells]
        found.sort()
        return found

    def _build(self, i: int) -> Any:
        c = self._columns
        bounds = c.frame_bounds
        lo, hi = (i, i + 1) if bounds is None else (bounds[i], bounds[i + 1])
        frames = tuple(map(self._make_frame, c.frame_nbytes[lo:hi], c.frame_crc32c[lo:hi]))
        return self._make_chunk(
            _new_box(c.offsets[i], c.sizes[i]), self._files[c.file[i]], c.offset[i], c.nbytes[i],
            c.raw_nbytes[i], self._codecs[c.codec[i]], c.frame_raw_nbytes[i], frames,
            c.column_crcs.get(i) if c.column_crcs else None,
        )


def touching(chunks: Sequence[Any], box: Box) -> Sequence[int]:
    """Indices of the chunks of ``chunks`` that may share an element with ``box``: exact
    for a ChunkTable, every index otherwise (callers intersect each one anyway)."""
    if isinstance(chunks, ChunkTable):
        return chunks.touching(box)
    return range(len(chunks))


def codec_names(chunks: Sequence[Any]) -> set[str]:
    """The names of the codecs ``chunks`` use (from the columns of a ChunkTable)."""
    if isinstance(chunks, ChunkTable):
        return chunks.codec_names
    return {c.codec.name for c in chunks}
