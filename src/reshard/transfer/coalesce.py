"""Coalescing reads: for stores where each request is expensive (object stores), and
for many small chunks loaded whole (``split_whole_chunks``, ``fill_whole_chunks``).

One GET costs a round trip of tens of milliseconds whatever its size, so pieces that
lie close together in one data file (many small tensors, neighbouring frames of several
boxes) are fetched as one ranged request and served from memory. A store opts in with a
``coalesce_gap_nbytes`` attribute: the largest hole between two pieces worth reading
through. Local files do not set it, and keep reading straight into destination memory.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..adapters.tensors import torch_dtype
from ..codecs import crc32c
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..storage.base import Store, let_go, view_of

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


# Whole small chunks
#
# Loading thousands of small tensors whose boxes were saved as they are (the same layout,
# or plain tensors) spent ~90 us per tensor in general read planning, a read call, and a
# thread hand-off for 512 bytes. Such targets are filled here instead: their chunks are
# grouped by file and read with one request per run of neighbouring chunks, every frame
# is checksummed in memory, and the verified bytes are copied into the destination.

SMALL_CHUNK_NBYTES = 1 << 20  # larger chunks keep the general path (reads straight into the destination)
MAX_RUN_NBYTES = 4 << 20  # one buffer of at most this size per reading thread
SMALL_GAP_NBYTES = 4096  # holes up to this size are read through: cheaper than another request
_MAX_SCANNED_CHUNKS = 16  # entries with more chunks than this take the general path
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def split_whole_chunks(targets: list[Any]) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """The targets that are exactly one small identity-coded chunk, each with that chunk,
    and the rest.

    A target qualifies when one chunk of its entry has exactly its box, is stored
    uncoded, holds at most ``SMALL_CHUNK_NBYTES``, and the destination is a plain
    contiguous CPU tensor of the saved dtype (so its memory is the chunk's raw bytes).
    """
    whole: list[tuple[Any, Any]] = []
    rest: list[Any] = []
    for t in targets:
        chunk = _whole_chunk(t)
        if chunk is None:
            rest.append(t)
        else:
            whole.append((t, chunk))
    return whole, rest


def fill_whole_chunks(store: Store, whole: list[tuple[Any, Any]], *, threads: int = 1) -> None:
    """Fill each target of ``whole`` (from ``split_whole_chunks``) from its chunk.

    Neighbouring chunks of a file are read in one run; every byte copied is first
    checked against its frame's CRC-32C. Several runs are read on up to ``threads``
    threads (cold files, object stores).
    """
    by_file: dict[str, list[tuple[int, Any, Any]]] = {}
    for t, chunk in whole:
        by_file.setdefault(chunk.file, []).append((chunk.offset, t, chunk))
    gap = max(SMALL_GAP_NBYTES, int(getattr(store, "coalesce_gap_nbytes", 0) or 0))
    runs: list[tuple[str, list[tuple[int, Any, Any]]]] = []
    for file, items in by_file.items():
        _check_file(store, file, items)
        items.sort(key=lambda item: item[0])
        runs.extend((file, run) for run in _runs(items, gap))
    if len(runs) == 1 or threads <= 1:
        for file, run in runs:
            _read_run(store, file, run)
    elif runs:
        with ThreadPoolExecutor(max_workers=min(threads, len(runs))) as pool:
            for f in [pool.submit(_read_run, store, file, run) for file, run in runs]:
                f.result()


def _read_run(store: Store, file: str, run: list[tuple[int, Any, Any]]) -> None:
    lo = run[0][0]
    hi = max(c.offset + c.nbytes for _, _, c in run)
    try:
        mapped = view_of(store, file, lo, hi - lo)
        if mapped is None:
            buffer = np.empty(hi - lo, dtype=np.uint8)
            store.read_into(file, lo, buffer.data)
        else:
            buffer = np.frombuffer(mapped, dtype=np.uint8)
    except CheckpointError as e:
        raise type(e)(f"key {run[0][1].name!r}: {e}") from None
    try:
        _copy_verified(buffer.data, buffer.ctypes.data, lo, run)
    finally:
        if mapped is not None:
            let_go(store, file, lo, hi - lo)


def _whole_chunk(t: Any) -> Any:
    """The chunk that is exactly ``t``'s box, if ``t`` can be filled from it as raw bytes."""
    tensor = t.tensor
    chunks = t.entry.chunks
    if (
        len(chunks) > _MAX_SCANNED_CHUNKS or type(tensor) not in _PLAIN_TENSORS
        or not tensor.is_cpu or not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg()
        or tensor.dtype != torch_dtype(t.entry.dtype)
    ):
        return None
    nbytes = tensor.nbytes
    if nbytes > SMALL_CHUNK_NBYTES or tensor.shape != t.box.sizes:
        return None
    for c in chunks:
        if c.box == t.box:
            frames = c.frames
            covered = (frames[0].nbytes if len(frames) == 1
                       else sum(f.nbytes for f in frames))  # the frames span the chunk's bytes
            if (c.codec.name == "identity" and c.raw_nbytes == nbytes and c.nbytes == nbytes
                    and covered == nbytes):
                return c
            return None
    return None


def _check_file(store: Store, file: str, items: list[tuple[int, Any, Any]]) -> None:
    """Refuse a missing or truncated data file before sizing any buffer from the manifest."""
    try:
        size = store.size(file)
    except CheckpointNotFoundError:
        raise CorruptCheckpointError(
            f"key {items[0][1].name!r}: data file {file} is missing from {store.location} "
            "(if a later save to this path replaced the checkpoint while it was read, "
            "read it again)"
        ) from None
    except CheckpointError as e:
        raise type(e)(f"key {items[0][1].name!r}: {e}") from None
    for _, t, c in items:
        if c.offset + c.nbytes > size:
            raise CorruptCheckpointError(
                f"key {t.name!r}: data file {file} in {store.location} is truncated: the chunk "
                f"at offsets {list(c.box.offsets)} needs bytes up to {c.offset + c.nbytes}, "
                f"the file has {size}"
            )


def _runs(items: list[tuple[int, Any, Any]], gap: int) -> list[list[tuple[int, Any, Any]]]:
    """Offset-sorted ``items`` cut into runs of at most ``MAX_RUN_NBYTES`` with small holes."""
    runs: list[list[tuple[int, Any, Any]]] = []
    current: list[tuple[int, Any, Any]] = []
    start = end = 0
    for item in items:
        c = item[2]
        stop = c.offset + c.nbytes
        if current and c.offset - end <= gap and max(end, stop) - start <= MAX_RUN_NBYTES:
            current.append(item)
            end = max(end, stop)
            continue
        if current:
            runs.append(current)
        current, start, end = [item], c.offset, stop
    if current:
        runs.append(current)
    return runs


def _copy_verified(view: memoryview, address: int, lo: int, run: list[tuple[int, Any, Any]]) -> None:
    """Check each chunk's frames in ``view`` (file bytes from ``lo``), then copy its bytes.

    The copy is a memmove into the destination's memory: _whole_chunk admitted only
    contiguous CPU tensors of exactly the chunk's size, and the chunk lies in ``view``.
    """
    for offset, t, c in run:
        start = offset - lo
        pos = start
        for i, f in enumerate(c.frames):
            end = pos + f.nbytes
            if f.crc32c is not None and crc32c(view[pos:end]) != f.crc32c:
                raise CorruptCheckpointError(
                    f"key {t.name!r}: chunk at offsets {list(c.box.offsets)} in {c.file}: "
                    f"frame {i} (file bytes {offset + pos - start}..{offset + end - start}) "
                    "fails its CRC-32C check"
                )
            pos = end
        if c.nbytes and 0 <= start and start + c.nbytes <= len(view):
            ctypes.memmove(t.tensor.data_ptr(), address + start, c.nbytes)
        elif c.nbytes:
            raise CorruptCheckpointError(f"key {t.name!r}: internal error, chunk outside the bytes read")
