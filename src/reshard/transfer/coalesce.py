"""Coalescing reads for stores where each request is expensive (object stores).

One GET costs a round trip of tens of milliseconds whatever its size, so pieces that
lie close together in one data file (many small tensors, neighbouring frames of several
boxes) are fetched as one ranged request and served from memory. A store opts in with a
``coalesce_gap_nbytes`` attribute: the largest hole between two pieces worth reading
through. Local files do not set it, and keep reading straight into destination memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import CheckpointError
from ..storage.base import Store

# (target, piece, frame offsets) as transfer/read.py builds them.
Job = tuple[Any, Any, list[int]]


def _span(job: Job) -> tuple[str, int, int]:
    target, piece, offs = job
    return target.entry.chunks[piece.chunk_index].file, offs[piece.frame_lo], offs[piece.frame_hi]


def group_reads(store: Store, jobs: list[Job], *, max_group_nbytes: int) -> list[list[Job]]:
    """``jobs`` in groups that one request each can serve; singletons when the store
    does not ask for coalescing."""
    gap = int(getattr(store, "coalesce_gap_nbytes", 0) or 0)
    if gap <= 0 or len(jobs) <= 1:
        return [[job] for job in jobs]
    by_file: dict[str, list[tuple[int, int, Job]]] = {}
    for job in jobs:
        file, lo, hi = _span(job)
        by_file.setdefault(file, []).append((lo, hi, job))
    groups: list[list[Job]] = []
    for spans in by_file.values():
        spans.sort(key=lambda s: (s[0], s[1]))
        current: list[Job] = []
        start = end = 0
        for lo, hi, job in spans:
            if current and lo - end <= gap and max(end, hi) - start <= max_group_nbytes:
                current.append(job)
                end = max(end, hi)
                continue
            if current:
                groups.append(current)
            current, start, end = [job], lo, hi
        groups.append(current)
    return groups


def run_group(store: Store, jobs: list[Job], run: Callable[[Any, Any, Any, list[int]], None]) -> None:
    """Fetch the span of ``jobs`` with one request, then ``run`` each job from memory."""
    if len(jobs) == 1:
        run(store, *jobs[0])
        return
    spans = [_span(job) for job in jobs]
    file = spans[0][0]
    lo = min(s[1] for s in spans)
    hi = max(s[2] for s in spans)
    data = bytearray(hi - lo)
    try:
        store.read_into(file, lo, memoryview(data))
    except CheckpointError as e:
        names = sorted({job[0].name for job in jobs})
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise type(e)(f"key {names[0]!r}{more}: {e}") from None
    served = _SpanStore(store, file, lo, memoryview(data))
    for job in jobs:
        run(served, *job)


class _SpanStore:
    """``store``, with reads inside one fetched span of one file answered from memory."""

    def __init__(self, store: Store, file: str, lo: int, data: memoryview) -> None:
        self._store = store
        self._file = file
        self._lo = lo
        self._data = data

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        start = offset - self._lo
        if name == self._file and start >= 0 and start + len(view) <= len(self._data):
            view[:] = self._data[start:start + len(view)]
            return
        self._store.read_into(name, offset, buffer)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._store, attr)
