"""Collective steps over torch.distributed, with agreement on failure.

Each step runs local work, then exchanges its outcome, so an exception on one rank
becomes the same CheckpointError on every rank instead of a hang. A one-process
stand-in serves when torch.distributed is not initialized.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import ERROR_CLASSES, CheckpointError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one rank's local step produced: a value, or an error to share."""

    value: T | None = None
    error_class: str | None = None
    error_message: str | None = None


def run_local(fn: Callable[[], T], rank: int) -> Outcome[T]:
    try:
        return Outcome(value=fn())
    except CheckpointError as e:
        return Outcome(error_class=type(e).__name__, error_message=str(e))
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        return Outcome(error_class="CheckpointError", error_message=f"rank {rank}: {detail}")


def raise_if_failed(outcomes: list[Outcome[Any]]) -> None:
    """Raise one error, the same on every rank, if any rank failed.

    Identical messages are said once: by themselves when every failing rank gave the
    same one (with the failing ranks named when some ranks did not fail), else each
    after the ranks that gave it ("ranks 0-3: ...; rank 5: ..."). A rank's own "rank r: "
    prefix (an unexpected exception, see ``run_local``) joins identical texts too.
    """
    failed = [(r, o) for r, o in enumerate(outcomes) if o.error_class is not None]
    if not failed:
        return
    classes = {o.error_class for _, o in failed}
    only = classes.pop() if len(classes) == 1 else None
    cls = ERROR_CLASSES.get(only, CheckpointError) if only else CheckpointError
    groups: dict[str, list[int]] = {}  # message -> the ranks that gave it, in rank order
    labelled: set[str] = set()
    for rank, o in failed:
        msg = o.error_message or "unknown error"
        own = f"rank {rank}: "
        if msg.startswith(own):
            msg = msg[len(own):]
            labelled.add(msg)
        groups.setdefault(msg, []).append(rank)
    ranks = ", ".join(str(r) for r, _ in failed)
    if len(groups) == 1:
        ((msg, rs),) = groups.items()
        text = f"{_rank_list(rs)}: {msg}" if msg in labelled else msg
    else:
        shown = list(groups.items())
        text = "; ".join(f"{_rank_list(rs)}: {msg}" for msg, rs in shown[:_SHOWN_MESSAGES])
        rest = sorted(r for _, rs in shown[_SHOWN_MESSAGES:] for r in rs)
        if rest:
            n = len(shown) - _SHOWN_MESSAGES
            text += f"; and {n} other error{'s' if n != 1 else ''} on {_rank_list(rest)}"
    if len(outcomes) > 1 and len(failed) < len(outcomes):
        text = f"{text} (failed on rank {ranks})"
    raise cls(text)


_SHOWN_MESSAGES = 8
"""Different messages quoted in one agreed error; the rest are counted."""


def _rank_list(ranks: list[int]) -> str:
    """``rank 2``, ``ranks 0-3``, ``ranks 0, 2, 5-7`` (``ranks`` ascending)."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    parts = [f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs]
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(parts)


class Collective:
    """The collective operations reshard needs, on one process group."""

    def __init__(self, process_group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist if dist.is_available() and dist.is_initialized() else None
        self._group = process_group
        if self._dist is None:
            if process_group is not None:
                raise CheckpointError("process_group given but torch.distributed is not initialized")
            self.rank, self.world_size = 0, 1
        else:
            self.rank = self._dist.get_rank(process_group)
            self.world_size = self._dist.get_world_size(process_group)
            if self.rank < 0:
                raise CheckpointError("this process is not a member of the given process_group")

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def _global(self, group_rank: int) -> int:
        assert self._dist is not None
        if self._group is None:
            return group_rank
        return int(self._dist.get_global_rank(self._group, group_rank))

    def all_gather(self, obj: T) -> list[T]:
        if self._dist is None:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` on the coordinator; None elsewhere."""
        if self._dist is None:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_coordinator else None
        # The coordinator's own object would be pickled and rebuilt for nothing: it sends
        # None and keeps the object itself.
        sent = None if self.is_coordinator else obj
        self._dist.gather_object(sent, out, dst=self._global(0), group=self._group)
        if out is not None:
            out[0] = obj
        return out

    def broadcast(self, obj: T | None) -> T:
        """The coordinator's ``obj`` on every rank."""
        if self._dist is None:
            return obj  # type: ignore[return-value]
        box = [obj]
        self._dist.broadcast_object_list(box, src=self._global(0), group=self._group)
        return box[0]  # type: ignore[return-value]

    def scatter(self, objs: list[T] | None) -> T:
        """Item ``r`` of the coordinator's list on rank ``r``."""
        if self._dist is None:
            assert objs is not None
            return objs[0]
        out: list[Any] = [None]
        # As in gather: the coordinator's own part is not sent through pickle.
        sent = [None, *objs[1:]] if self.is_coordinator and objs is not None else None
        self._dist.scatter_object_list(out, sent, src=self._global(0), group=self._group)
        if self.is_coordinator and objs is not None:
            return objs[0]
        return out[0]  # type: ignore[no-any-return]

    @property
    def swaps_host_bytes(self) -> bool:
        """Whether ``all_to_all_bytes`` can move CPU tensors on this group: gloo and MPI
        can, an NCCL-only group cannot (cooperative reads then stay off)."""
        if self._dist is None:
            return True
        backend = str(self._dist.get_backend(self._group)).lower()
        return "gloo" in backend or "mpi" in backend

    def all_to_all_bytes(
        self, recv: Any, send: Any, *, recv_counts: list[int], send_counts: list[int]
    ) -> Callable[[], None]:
        """Start sending ``send_counts[r]`` bytes of the uint8 tensor ``send`` (in rank
        order) to rank ``r`` and receiving ``recv_counts[r]`` bytes from rank ``r`` into
        ``recv``; returns the wait that completes it (both buffers stay untouched till then)."""
        if self._dist is None:
            recv.copy_(send)
            return lambda: None
        work = self._dist.all_to_all_single(recv, send, recv_counts, send_counts,
                                            group=self._group, async_op=True)
        return lambda: work.wait()

    def deferred(self, fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
        """Run ``fn`` before the first agreed step: with several ranks, its error is
        returned (value None) for the caller to raise inside that step, so that every rank
        raises it instead of the others waiting there for a rank that left. One rank
        raises it at once."""
        try:
            return fn(), None
        except Exception as e:
            if self._dist is None or self.world_size <= 1:
                raise
            return None, e

    # Agreed steps: every rank returns, or every rank raises the same error.

    def agree_all(self, fn: Callable[[], T]) -> list[T]:
        """Run ``fn`` on every rank; every rank gets every rank's result."""
        outcomes = self.all_gather(run_local(fn, self.rank))
        raise_if_failed(outcomes)
        return [o.value for o in outcomes]  # type: ignore[misc]

    def gather_outcomes(self, fn: Callable[[], T]) -> list[Outcome[T]] | None:
        """Run ``fn`` on every rank; the outcomes reach the coordinator, which must
        pass them to ``raise_if_failed`` inside the next agreed step."""
        return self.gather(run_local(fn, self.rank))

    def agree_broadcast(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the coordinator; every rank gets its result or its error."""
        outcome = run_local(fn, self.rank) if self.is_coordinator else None
        shared: Outcome[T] = self.broadcast(outcome)
        raise_if_failed([shared])
        return shared.value  # type: ignore[return-value]

    def agree_scatter(self, fn: Callable[[], list[T]]) -> T:
        """Run ``fn`` on the coordinator (one result per rank); each rank gets its own
        result, or every rank the coordinator's error."""
        if self.is_coordinator:
            outcome = run_local(fn, self.rank)
            if outcome.error_class is None:
                parts: list[Outcome[T]] = [Outcome(value=v) for v in outcome.value]  # type: ignore[union-attr]
            else:
                parts = [outcome] * self.world_size  # type: ignore[list-item]
        else:
            parts = None  # type: ignore[assignment]
        mine: Outcome[T] = self.scatter(parts)
        raise_if_failed([mine])
        return mine.value  # type: ignore[return-value]
