"""CUDA tensors to host memory in pieces, through two reused pinned buffers.

A plain ``.cpu()`` copies the whole tensor into fresh pageable memory (page faults, and
a staged copy by the driver) before the first byte can be written. Here the copy of
piece ``i + 1`` runs on a side stream while piece ``i`` is checksummed and written, and
the pinned buffers are kept for the next save.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

from ..adapters.tensors import flat_view, storable

PIECE_NBYTES = 32 << 20

_lock = threading.Lock()
_free: dict[int, list[list[torch.Tensor]]] = {}  # piece size -> idle buffer pairs


def streamable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s bytes are best fetched piece by piece (a CUDA tensor)."""
    return tensor.device.type == "cuda" and tensor.numel() > 0


def pieces(tensor: torch.Tensor, piece_nbytes: int) -> Iterator[memoryview]:
    """The C-order bytes of CUDA ``tensor``, ``piece_nbytes`` at a time (the last piece
    may be shorter). Each view stays valid until the next one is asked for."""
    flat = flat_view(storable(tensor).contiguous()).view(torch.uint8)
    n = flat.numel()
    pair = _take(piece_nbytes)
    stream = torch.cuda.Stream(device=flat.device)  # type: ignore[no-untyped-call]
    # The side stream must see what the caller's stream has queued for the tensor.
    stream.wait_stream(torch.cuda.current_stream(flat.device))

    def start(at: int, which: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        stop = min(n, at + piece_nbytes)
        with torch.cuda.stream(stream):
            dst = pair[which][:stop - at]
            dst.copy_(flat[at:stop], non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(stream)
        return dst, done

    try:
        at, which = 0, 0
        nxt: tuple[torch.Tensor, torch.cuda.Event] | None = start(0, 0)
        while nxt is not None:
            dst, done = nxt
            done.synchronize()
            at += dst.numel()
            which ^= 1
            # The other buffer's piece was consumed before this one was asked for.
            nxt = start(at, which) if at < n else None
            yield dst.numpy().data.cast("B")
    finally:
        stream.synchronize()  # no copy may still land in buffers handed back
        _give(piece_nbytes, pair)


def _take(nbytes: int) -> list[torch.Tensor]:
    with _lock:
        idle = _free.get(nbytes)
        if idle:
            return idle.pop()
    try:
        return [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    except RuntimeError:  # pinning can be refused (locked-memory limits); pageable works
        return [torch.empty(nbytes, dtype=torch.uint8) for _ in range(2)]


def _give(nbytes: int, pair: list[torch.Tensor]) -> None:
    with _lock:
        if nbytes not in _free:
            _free.clear()  # keep buffers of one piece size only
        _free.setdefault(nbytes, []).append(pair)
