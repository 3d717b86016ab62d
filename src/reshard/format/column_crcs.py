"""A chunk's optional ``column_crcs`` field: checksums over column tiles (format 1.1).

core.column_checks places the tiles; this module parses and validates the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.column_checks import run_count, segment_count
from ..core.pickling import slots_reduce
from ..errors import CorruptCheckpointError
from .limits import MAX_DIM_SIZE

FIELD = "column_crcs"
MAX_PARTS = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnCrcs:
    """CRC-32C of each tile of a chunk, runs of ``rows`` rows by the column segments of
    a tensor cut in ``parts`` along dim 1 (core.column_checks), run by run."""

    __reduce__ = slots_reduce

    parts: int
    rows: int
    crc32c: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"crc32c": list(self.crc32c), "parts": self.parts, "rows": self.rows}


def parse_column_crcs(
    raw: object, *, shape: tuple[int, ...], offsets: tuple[int, ...], sizes: tuple[int, ...],
    identity: bool, path: str,
) -> ColumnCrcs:
    """The field of the chunk at JSON ``path`` with box ``offsets``/``sizes``, checked
    against it; CorruptCheckpointError naming the path otherwise."""
    where = f"{path}.{FIELD}"
    if type(raw) is not dict or set(raw) != {"crc32c", "parts", "rows"}:
        raise CorruptCheckpointError(f"{where}: expected an object with crc32c, parts and rows")
    if not identity:
        raise CorruptCheckpointError(f"{where}: only chunks stored raw (codec identity) carry it")
    if len(shape) < 2:
        raise CorruptCheckpointError(f"{where}: a chunk of {len(shape)} dims has no columns")
    parts, rows, crcs = raw["parts"], raw["rows"], raw["crc32c"]
    if type(parts) is not int or not 2 <= parts <= MAX_PARTS:
        raise CorruptCheckpointError(f"{where}.parts: expected an int from 2 to {MAX_PARTS}")
    if type(rows) is not int or not 1 <= rows <= MAX_DIM_SIZE:
        raise CorruptCheckpointError(f"{where}.rows: expected a positive int")
    expected = run_count(sizes[0], rows) * segment_count(offsets[1], sizes[1], shape[1], parts)
    if type(crcs) is not list or len(crcs) != expected:
        raise CorruptCheckpointError(f"{where}.crc32c: expected a list of {expected} checksums")
    if set(map(type, crcs)) - {int} or (crcs and (min(crcs) < 0 or max(crcs) > 0xFFFFFFFF)):
        raise CorruptCheckpointError(f"{where}.crc32c: expected unsigned 32-bit ints")
    return ColumnCrcs(parts=parts, rows=rows, crc32c=tuple(crcs))
