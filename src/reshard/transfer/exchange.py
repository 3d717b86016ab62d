"""Cooperative reads: each shared frame is read and CRC-checked by one rank, which then
sends the other ranks the elements they need of it (plan: core/exchange_plan.py).

Every round, each rank reads its transfers of the round into scratch, verifies them,
copies its own elements into place and packs the others' into a send buffer; the ranks
then agree on the outcome (a failed read on any rank becomes the same error on every
rank, before anyone waits for bytes that will not come) and swap the packed bytes with
one ``all_to_all_single``, each receiver copying them straight into its tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import config
from ..adapters.tensors import torch_dtype
from ..core.exchange_plan import (
    EMPTY_PLAN,
    ExchangePlan,
    Need,
    Part,
    Transfer,
    eligible_frame,
    flat_range_boxes,
    plan_exchange,
    wasted_nbytes,
)
from ..core.layout import Box, c_strides, element_span, intersect
from ..dist.collective import Collective, Outcome, raise_if_failed, run_local
from ..errors import CorruptCheckpointError
from ..format.chunk_table import touching
from ..storage.base import Store
from .read import _check_extent, _drop_scratch, _elements, _verify, named_errors, stored_bytes

if TYPE_CHECKING:
    from .read import Target

# Frames read per transfer: small enough that the verified bytes are still in L2 when
# they are cut into place, large enough that per-transfer Python stays small.
TRANSFER_NBYTES = 1 << 20

# Needs one rank contributes to the plan (see local_needs); the plan itself also gives
# up, to the plain path everywhere, past core.exchange_plan.MAX_PLANNED_NEEDS in all.
MAX_NEEDS_PER_RANK = 4096

_INT_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


@dataclass(frozen=True, slots=True)
class Gathered:
    """Every rank's needs and rank 0's settings (so every rank plans alike)."""

    needs: list[list[Need]]
    settings: tuple[int, int, int]


def local_needs(
    targets: list[Target], *, world_size: int, can_swap: bool = True, remote: bool = False
) -> tuple[tuple[int, int, int], list[Need]]:
    """This rank's settings and the needs worth sharing: chunks that it would read
    mostly for other bytes (a column cut), in whole-element identity frames.
    ``can_swap`` is False where the group cannot move host buffers (NCCL-only);
    ``remote`` says the checkpoint is not a local file (config.exchange_reads)."""
    settings = (config.exchange_min_nbytes(), config.exchange_round_nbytes(), TRANSFER_NBYTES)
    if world_size <= 1 or not can_swap or not config.exchange_reads(remote=remote):
        return settings, []
    out: list[Need] = []
    for slot, t in enumerate(targets):
        entry = t.entry
        if t.tensor.dtype != torch_dtype(entry.dtype) or t.box.is_empty:
            continue
        for ci in touching(entry.chunks, t.box):
            chunk = entry.chunks[ci]
            if (
                chunk.raw_nbytes <= 2 * chunk.frame_raw_nbytes  # cannot waste more (many small tensors)
                or chunk.codec.name != "identity"
                or not eligible_frame(chunk.frame_raw_nbytes, entry.itemsize)
            ):
                continue
            inter = intersect(chunk.box, t.box)
            if inter is None or inter.is_empty:
                continue
            need = Need(entry=t.name, chunk_index=ci, slot=slot, box=inter.relative_to(chunk.box),
                        chunk_sizes=chunk.box.sizes, itemsize=entry.itemsize,
                        frame_raw_nbytes=chunk.frame_raw_nbytes)
            # Whole frames at both ends are read anyway: only more waste can be saved.
            if wasted_nbytes(need) > 2 * chunk.frame_raw_nbytes:
                out.append(need)
    if len(out) > MAX_NEEDS_PER_RANK:
        # Every rank gathers and plans every rank's needs: past this, the gather and the
        # plan would cost more than re-reading frames, so this rank reads its own.
        return settings, []
    return settings, out


def gather(per_rank: list[tuple[tuple[int, int, int], list[Need]]]) -> Gathered:
    return Gathered(needs=[n for _, n in per_rank], settings=per_rank[0][0])


def plan(gathered: Gathered | None) -> ExchangePlan:
    if gathered is None or not any(gathered.needs):
        return EMPTY_PLAN
    min_saved, round_nbytes, transfer_nbytes = gathered.settings
    return plan_exchange(gathered.needs, min_saved_nbytes=min_saved,
                         transfer_nbytes=transfer_nbytes, round_nbytes=round_nbytes)


def run(
    store: Store, targets: list[Target], xplan: ExchangePlan, coll: Collective, *,
    threads: int, prior: Callable[[], None], sizes: dict[str, int],
) -> None:
    """Run ``prior`` (this rank's own reads), then every round of ``xplan``; collective.

    Any failure, in ``prior`` or a read of any rank, is raised as the same error on
    every rank at the next agreement."""
    me, world = coll.rank, coll.world_size
    outcome: Outcome[None] = run_local(prior, me)
    mine: list[list[Transfer]] = [[] for _ in range(xplan.rounds)]
    incoming: list[list[list[Transfer]]] = [[[] for _ in range(world)] for _ in range(xplan.rounds)]
    for tr in xplan.transfers:
        if tr.reader == me:
            mine[tr.round].append(tr)
        elif any(p.rank == me for p in tr.parts):
            incoming[tr.round][tr.reader].append(tr)
    dests: dict[int, np.ndarray] = {}
    bufs: list[torch.Tensor] = [torch.empty(0, dtype=torch.uint8)] * 4
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    # Round r's swap runs while round r + 1 is read; its status is checked only after
    # that, at the same point of the collective sequence on every rank.
    pending: _Swap | None = None
    try:
        for rnd in range(xplan.rounds + 1):
            current = None
            if rnd < xplan.rounds:
                send_counts = _counts(mine[rnd], me, world, lambda p: p.rank != me, lambda p: p.rank)
                starts = [sum(send_counts[:r]) + 1 for r in range(world)]
                send = _buffer(bufs, 2 * (rnd % 2), sum(send_counts))
                if outcome.error_class is None:
                    outcome = run_local(partial(
                        _read_round, store, targets, mine[rnd], send.numpy(), starts, me, pool,
                        sizes, dests), me)
                failed = outcome.error_class is not None
                for r in range(world):
                    if send_counts[r]:
                        send[starts[r] - 1] = int(failed)  # the status byte each peer checks
                recv_counts = [0 if q == me else 1 + sum(
                    tr.part_nbytes(p) for tr in incoming[rnd][q] for p in tr.parts if p.rank == me)
                    for q in range(world)]
                recv = _buffer(bufs, 2 * (rnd % 2) + 1, sum(recv_counts))
                wait = coll.all_to_all_bytes(recv, send, recv_counts=recv_counts, send_counts=send_counts)
                current = _Swap(rnd, wait, recv, recv_counts, failed)
            if pending is not None:
                pending.wait()
                heads = [sum(pending.recv_counts[:q]) for q in range(world) if q != me]
                if pending.failed or any(int(pending.recv[h]) for h in heads):
                    # Every rank saw the failure here: all drain the swap in flight and
                    # raise the same error naming key and file, instead of waiting for
                    # bytes that will not come.
                    if current is not None:
                        current.wait()
                    raise_if_failed(coll.all_gather(outcome))
                _unpack(targets, incoming[pending.round], pending.recv.numpy(), pending.recv_counts,
                        me, dests)
            pending = current
    finally:
        if pool is not None:
            pool.shutdown()
        _drop_scratch()


@dataclass(slots=True)
class _Swap:
    round: int
    wait: Callable[[], None]
    recv: torch.Tensor
    recv_counts: list[int]
    failed: bool


def _buffer(bufs: list[torch.Tensor], slot: int, nbytes: int) -> torch.Tensor:
    """Send (even slots) and receive (odd) buffers of two rounds, reused: fresh memory
    per round page-faulted every byte again."""
    if bufs[slot].numel() < nbytes:
        bufs[slot] = torch.empty(nbytes, dtype=torch.uint8)
    return bufs[slot][:nbytes]


def _counts(
    transfers: list[Transfer], me: int, world: int, keep: Callable[[Part], bool],
    to: Callable[[Part], int],
) -> list[int]:
    """Bytes per peer (plus its status byte) that ``transfers`` send from ``me``."""
    counts = [0 if r == me else 1 for r in range(world)]
    for tr in transfers:
        for p in tr.parts:
            if keep(p):
                counts[to(p)] += tr.part_nbytes(p)
    return counts


def _read_round(
    store: Store, targets: list[Target], transfers: list[Transfer], buf: np.ndarray,
    starts: list[int], me: int, pool: ThreadPoolExecutor | None, sizes: dict[str, int],
    dests: dict[int, np.ndarray],
) -> None:
    # Each transfer packs into its own slices of the send buffer: place them first, and
    # check every file's extent before any buffer is sized from the manifest.
    starts = list(starts)
    jobs: list[tuple[Transfer, list[int], list[int]]] = []
    for tr in transfers:
        at = [-1] * len(tr.parts)
        for i, p in enumerate(tr.parts):
            if p.rank != me:
                at[i] = starts[p.rank]
                starts[p.rank] += tr.part_nbytes(p)
            else:
                _dest(targets, p.slot, dests)
        target = targets[tr.reader_slot]
        chunk = target.entry.chunks[tr.chunk[1]]
        offs = chunk.frame_offsets()
        _check_extent(store, target, chunk, offs[tr.frame_hi], sizes)
        jobs.append((tr, at, offs))
    if pool is None or len(jobs) <= 1:
        for tr, at, offs in jobs:
            _read_transfer(store, targets, tr, at, offs, buf, me, dests)
    else:
        futures = [pool.submit(_read_transfer, store, targets, tr, at, offs, buf, me, dests)
                   for tr, at, offs in jobs]
        for f in futures:
            f.result()


def _dest(targets: list[Target], slot: int, dests: dict[int, np.ndarray]) -> np.ndarray:
    """The bytes of target ``slot`` as an integer array of its element size (dtype-blind
    copies: bf16 and bool move as int16 and uint8)."""
    d = dests.get(slot)
    if d is None:
        t = targets[slot]
        dest = t.staging if t.staging is not None else t.tensor
        d = dests[slot] = dest.view(_INT_DTYPES[t.entry.itemsize]).numpy()
    return d


def _region(targets: list[Target], p: Part, chunk_box: Box, dests: dict[int, np.ndarray]) -> np.ndarray:
    """The part's need box inside its target's tensor."""
    t = targets[p.slot]
    return _dest(targets, p.slot, dests)[p.box.shifted(chunk_box.offsets).relative_to(t.box).slices()]


def _read_transfer(
    store: Store, targets: list[Target], tr: Transfer, at: list[int], offs: list[int],
    buf: np.ndarray, me: int, dests: dict[int, np.ndarray],
) -> None:
    target = targets[tr.reader_slot]
    chunk = target.entry.chunks[tr.chunk[1]]
    lo, hi = offs[tr.frame_lo], offs[tr.frame_hi]
    with named_errors(target, chunk), stored_bytes(store, chunk.file, lo, hi) as stored:
        _verify(chunk, tr.frame_lo, tr.frame_hi, stored.data, offs, lo)
        size = tr.itemsize
        elems = _elements(stored, size)
        first = tr.frame_lo * chunk.frame_raw_nbytes // size
        strides = tuple(s * size for s in c_strides(chunk.box.sizes))
        for i, p in enumerate(tr.parts):
            region = _region(targets, p, chunk.box, dests) if p.rank == me else None
            for sub, pos in flat_range_boxes(p.box.sizes, p.e0, p.e1):
                s, e = element_span(chunk.box.sizes, sub.shifted(p.box.offsets))
                if s < first or e - first > len(elems):
                    # as_strided does no bounds check: never let a bad plan read past the buffer.
                    raise CorruptCheckpointError(
                        f"chunk at offsets {list(chunk.box.offsets)} in {chunk.file}: internal "
                        f"error, elements {s}..{e} lie outside the frames read")
                src = np.lib.stride_tricks.as_strided(elems[s - first:], shape=sub.sizes, strides=strides)
                if region is not None:
                    np.copyto(region[sub.slices()], src)
                else:
                    a = at[i] + (pos - p.e0) * size
                    np.copyto(buf[a:a + sub.numel * size].view(elems.dtype).reshape(sub.sizes), src)


def _unpack(
    targets: list[Target], incoming: list[list[Transfer]], recv: np.ndarray,
    recv_counts: list[int], me: int, dests: dict[int, np.ndarray],
) -> None:
    """Copy the received bytes into place, in the order the senders packed them."""
    for q, transfers in enumerate(incoming):
        pos = sum(recv_counts[:q]) + 1  # after the sender's status byte
        for tr in transfers:
            size = tr.itemsize
            for p in tr.parts:
                if p.rank != me:
                    continue
                chunk_box = targets[p.slot].entry.chunks[tr.chunk[1]].box
                region = _region(targets, p, chunk_box, dests)
                for sub, spos in flat_range_boxes(p.box.sizes, p.e0, p.e1):
                    a = pos + (spos - p.e0) * size
                    src = recv[a:a + sub.numel * size].view(region.dtype).reshape(sub.sizes)
                    np.copyto(region[sub.slices()], src)
                pos += tr.part_nbytes(p)
