"""``reshard.async_save``: stage the state into host memory, write it in the background.

The caller is blocked only while the save is planned (small object collectives) and
every shard this rank must write is copied into host staging buffers. From then on the
live tensors may change freely: the background thread writes the copies, then commits
the manifest exactly as ``save`` does (same collective steps, same commit rule).

Process groups. The background thread runs collectives (gather, scatter, broadcast of
small objects) while the training loop runs its own on its process group, possibly from
another thread at the same moment. Two threads issuing collectives on one group
interleave them differently on different ranks and hang or corrupt both. So every save
step runs on a separate gloo group over the same ranks, created once per process group
(cached) by ``torch.distributed.new_group(backend="gloo")``. Creating a group is itself
collective, so it happens inside ``async_save`` on the calling thread, which every rank
enters; planning and the staging agreement also use this group, from the calling thread,
while no background save is running.

Memory. One save is in flight per process: a second ``async_save`` (or a ``save``) first
waits for the previous one (without raising its error, which stays on its handle). Staging buffers are
kept between saves and reused when the sizes match (pinned host memory for CUDA tensors,
so the device-to-host copies run at full speed), so a training loop saving the same state
allocates them once; buffers the next save does not need are freed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .codecs import Codec
from .dist.collective import Collective
from .errors import CheckpointError
from .save import open_for_save, prepare_save, write_and_commit
from .storage.base import same_place

Shard = tuple[int, int, torch.Tensor]
_log = logging.getLogger("reshard")


class AsyncSaveHandle:
    """A save running in the background; ``result()`` waits for it and raises its error."""

    def __init__(self, location: str, *, staged_nbytes: int, blocked_s: float) -> None:
        self.location = location
        #: Bytes this rank copied into staging buffers (its share of the checkpoint).
        self.staged_nbytes = staged_nbytes
        #: Seconds ``async_save`` blocked the caller (planning and staging).
        self.blocked_s = blocked_s
        self._finished = threading.Event()
        self._error: CheckpointError | None = None

    def done(self) -> bool:
        """Whether the background write has finished, successfully or not."""
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> None:
        """Wait for the save; raise its failure as a CheckpointError (the same on every rank).

        With ``timeout`` (seconds), raise TimeoutError if it is still running then.
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(f"the async save to {self.location} is still running after {timeout} s")
        if self._error is not None:
            raise self._error

    def _run(self, work: Callable[[], None], cleanup: Callable[[], None]) -> None:
        try:
            work()
        except CheckpointError as e:
            self._error = e
        except BaseException as e:  # noqa: BLE001 - handed to result() on the caller's thread
            error = CheckpointError(f"the async save to {self.location} failed: {type(e).__name__}: {e}")
            error.__cause__ = e
            self._error = error
        finally:
            if self._error is not None:
                # Logged too: a program that never calls result() (or exits first) would
                # otherwise lose the save without a word.
                _log.warning("reshard.async_save to %s failed (handle.result() raises it): %s",
                             self.location, self._error)
            try:
                cleanup()
            finally:
                self._finished.set()


class _StagingPool:
    """Flat host byte buffers, reused across saves when their size and pinning match."""

    def __init__(self) -> None:
        self._free: dict[tuple[int, bool], list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int, pinned: bool) -> torch.Tensor:
        with self._lock:
            free = self._free.get((nbytes, pinned))
            if free:
                return free.pop()
        if pinned:
            try:
                return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            except RuntimeError:
                pass  # pinning can be refused (locked-memory limits); pageable still works
        return torch.empty(nbytes, dtype=torch.uint8)

    def give_back(self, buffers: list[tuple[torch.Tensor, bool]]) -> None:
        """Keep exactly ``buffers`` for the next save; free anything else still held."""
        with self._lock:
            self._free = {}
            for buf, pinned in buffers:
                self._free.setdefault((buf.numel(), pinned), []).append(buf)

    def clear(self) -> None:
        with self._lock:
            self._free = {}


_POOL = _StagingPool()
_START_LOCK = threading.Lock()
_inflight: AsyncSaveHandle | None = None
_GROUPS: dict[Any, tuple[Any, Any]] = {}


def async_save(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    process_group: Any = None,
    codec: str | Codec | None = None,
    storage_options: Mapping[str, Any] | None = None,
    column_blocks: int | None = None,
) -> AsyncSaveHandle:
    """Start saving ``state_dict`` to ``path``; return once it is staged in host memory.

    Collective over ``process_group`` like ``save``, with the same options. Errors found
    while planning or staging (bad state dict, layout mismatch) raise here, on every
    rank; errors of the background write and commit are raised by ``handle.result()``,
    on every rank. Tensors may be modified as soon as this returns. A call while a
    previous async save is in flight first waits for it.
    """
    global _inflight
    with _START_LOCK:
        started = time.perf_counter()
        if _inflight is not None:
            _inflight._finished.wait()
        coll = Collective(_background_group(process_group))
        store = open_for_save(coll, path, storage_options, state_dict, codec, column_blocks)
        try:
            prepared = prepare_save(coll, store, state_dict, codec, column_blocks=column_blocks)
            staged: dict[str, Any] = {}

            def stage() -> None:
                staged["shards"], staged["buffers"] = _stage(prepared.shards())

            coll.agree_all(stage)
        except BaseException:
            store.close()
            raise
        shards: list[Shard] = staged["shards"]
        buffers: list[tuple[torch.Tensor, bool]] = staged["buffers"]
        handle = AsyncSaveHandle(
            store.location, staged_nbytes=sum(b.numel() for b, _ in buffers),
            blocked_s=time.perf_counter() - started,
        )

        def cleanup() -> None:
            store.close()
            shards.clear()
            _POOL.give_back(buffers)

        thread = threading.Thread(
            target=handle._run, name="reshard-async-save",
            args=(lambda: write_and_commit(coll, store, prepared, shards), cleanup),
        )
        # Not a daemon: an interpreter exiting right after async_save still finishes the save.
        thread.start()
        _inflight = handle
        return handle


def wait_for_inflight(location: str) -> None:
    """Block until this process's in-flight async save to ``location``, if any, is done.

    Saves to one folder commit in the order they were called, and a load or read of
    that folder does not read the previous checkpoint while the commit deletes its
    files.
    """
    with _START_LOCK:
        handle = _inflight
    if handle is not None and same_place(handle.location, location):
        handle._finished.wait()


def release_staging_buffers() -> None:
    """Free the host staging buffers kept for reuse (after waiting for an in-flight save)."""
    with _START_LOCK:
        if _inflight is not None:
            _inflight._finished.wait()
        _POOL.clear()


def _background_group(process_group: Any) -> Any:
    """The cached gloo group over the ranks of ``process_group`` for background saves."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.group.WORLD
    key = "default" if process_group is None else process_group
    cached = _GROUPS.get(key)
    if cached is not None and cached[0] is world:
        return cached[1]
    if process_group is None:
        group = dist.new_group(backend="gloo")
    else:
        # Only the members call async_save for a subgroup, so only they may take part.
        ranks = dist.get_process_group_ranks(process_group)
        group = dist.new_group(ranks=ranks, backend="gloo", use_local_synchronization=True)
    _GROUPS[key] = (world, group)
    return group


def _stage(shards: list[Shard]) -> tuple[list[Shard], list[tuple[torch.Tensor, bool]]]:
    """Copy every shard into a staging buffer; return the copies and the buffers used."""
    staged: list[Shard] = []
    buffers: list[tuple[torch.Tensor, bool]] = []
    cuda_devices: set[torch.device] = set()
    try:
        with torch.no_grad():
            for item_index, box_index, tensor in shards:
                # A non-blocking copy of a non-contiguous conjugate or negative CUDA
                # view (a column_blocks tile of one) to pinned memory loses the view's
                # lazy bit, so it is resolved on the device first (no-op for plain tensors).
                src = tensor.detach().resolve_conj().resolve_neg()
                pinned = src.device.type == "cuda"
                buf = _POOL.take(src.numel() * src.element_size(), pinned)
                buffers.append((buf, pinned))
                dst = _typed(buf, src)
                # Pinned destinations let the copy run asynchronously; it is awaited below.
                dst.copy_(src, non_blocking=pinned)
                if pinned:
                    cuda_devices.add(src.device)
                staged.append((item_index, box_index, dst))
            for device in cuda_devices:
                torch.cuda.synchronize(device)
    except BaseException:
        _POOL.give_back(buffers)
        raise
    # Pooled buffers this save did not take are not needed any more: free them now.
    _POOL.clear()
    return staged, buffers


def _typed(buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.numel() == 0:
        return torch.empty(like.shape, dtype=like.dtype)
    return buf.view(like.dtype).view(like.shape)
