"""The load path: read the manifest once, match it to the state dict, fill in place."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any

import numpy as np
import torch

from . import config
from .adapters.tensors import (
    MAX_KEY_DEPTH,
    flatten,
    is_tensor_leaf,
    set_path,
    settable_problem,
    shards_of,
    torch_dtype,
)
from .core.layout import element_offsets, full_box, views_overlap
from .core.nogc import without_gc
from .dist.collective import Collective
from .errors import LayoutMismatchError, MissingKeysError
from .format.manifest import Chunk, Entry, Manifest, TensorEntry, dotted
from .interop.dcp import records_empty_dicts
from .manifest_io import find_manifest, parse_manifest
from .storage import Store, is_remote, open_store
from .transfer import exchange
from .transfer.coalesce import fill_whole_chunks, split_whole_chunks
from .transfer.read import Target, fill


@dataclass(frozen=True, slots=True)
class _Later:
    """A replacement value computed only after the tensors are filled."""

    make: Callable[[], Any]


@dataclass(slots=True)
class LoadPlan:
    """What fills each key: targets that are exactly one small saved chunk (with that
    chunk, read in runs), the other targets (read piece by piece), replacement values."""

    whole: list[tuple[Target, Chunk]]
    rest: list[Target]
    values: list[tuple[tuple[Any, ...], Any]]
    wrappers: list[torch.Tensor] = field(default_factory=list)
    """Tensor subclasses (DTensors) filled through their parts, changed in place too."""
    # Tunables are read with the plan, inside load's agreed planning step: a bad value on
    # one rank must not stop that rank alone, before the cooperative reads' collectives.
    threads: int = field(default_factory=config.io_threads)
    max_piece_nbytes: int = field(default_factory=config.max_piece_nbytes)


@dataclass(frozen=True, slots=True)
class LoadStats:
    """What one rank's ``load`` read from the checkpoint."""

    bytes_read: int
    """Manifest and data bytes, read or memory-mapped (frames are read whole)."""
    bytes_mapped: int
    """Of ``bytes_read``, those touched through a memory map of a local file, which the
    operating system's read counters (``rchar`` in /proc/<pid>/io) do not count."""


@without_gc
def load(
    state_dict: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    process_group: Any = None,
    strict: bool = True,
    allow_pickle: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> LoadStats:
    """Fill ``state_dict`` in place from the checkpoint at ``path``; collective.

    Each rank reads only the bytes its own shards need, whatever mesh, placements or
    world size saved them. Tensors (DTensor local shards, plain tensors, numpy arrays,
    LocalShardsWrapper shards, checkpointable subclasses) are written into; plain values
    are replaced. With ``strict`` a key the checkpoint lacks raises; extra checkpoint
    keys are ignored. Errors are raised on every rank. ``path`` may be an fsspec URL
    (``s3://bucket/prefix``); ``storage_options`` go to fsspec.

    ``path`` may also be a torch.distributed.checkpoint directory (docs/INTEROP.md).
    ``allow_pickle=True`` lets its non-tensor values that need arbitrary pickle load;
    only pass it for checkpoints you trust. Without it such keys raise CheckpointError.

    Returns this rank's ``LoadStats`` (bytes read).
    """
    # The cyclic GC is paused throughout (see save): planning and filling build a few
    # acyclic objects per tensor, and collections walked the caller's whole heap.
    from .async_save import wait_for_inflight  # async_save builds on save, not on load

    coll = Collective(process_group)
    opened, opening = coll.deferred(lambda: open_store(path, storage_options))

    def store_of() -> Store:
        # A rank that could not open the store raises here, inside an agreed step.
        if opened is None:
            raise opening  # type: ignore[misc]
        return opened

    try:
        # An async save to this path in this process would delete, as it commits, the
        # files of the checkpoint this load is reading: it is waited for first.
        if opened is not None:
            wait_for_inflight(opened.location)
        found = coll.agree_broadcast(lambda: find_manifest(store_of(), allow_pickle=allow_pickle))
        plan: dict[str, LoadPlan] = {}

        def prepare() -> Any:
            store = store_of()
            manifest = found if isinstance(found, Manifest) else parse_manifest(store, found)
            plan["plan"] = plan_load(state_dict, manifest, strict=strict, location=store.location)
            # What this rank would share reads of: gathered here at no extra collective.
            # Needs index plan.rest, the targets fill() gets.
            return exchange.local_needs(plan["plan"].rest, world_size=coll.world_size,
                                        can_swap=coll.swaps_host_bytes, remote=is_remote(store))

        gathered = exchange.gather(coll.agree_all(prepare))

        def execute() -> None:
            apply(store_of(), state_dict, plan["plan"], coll=coll, gathered=gathered)

        coll.agree_all(execute)
        return LoadStats(bytes_read=int(getattr(opened, "bytes_read", 0)),
                         bytes_mapped=int(getattr(opened, "bytes_mapped", 0)))
    finally:
        if opened is not None:
            opened.close()


def apply(
    store: Store, state_dict: dict[str, Any], plan: LoadPlan, *,
    coll: Collective | None = None, gathered: exchange.Gathered | None = None,
) -> None:
    with torch.no_grad():
        threads = plan.threads
        try:
            # The whole chunks are read inside fill: a failure there on one rank must still
            # reach the cooperative reads' agreement that the other ranks wait in.
            fill(store, plan.rest, threads=threads, max_piece_nbytes=plan.max_piece_nbytes,
                 coll=coll, gathered=gathered,
                 before=partial(fill_whole_chunks, store, plan.whole, threads=threads))
        finally:
            # Most bytes land through memory torch does not see written, so autograd did
            # not learn of the change: a parameter saved for backward before the load gave
            # gradients of its new values without a word, where load_state_dict's copy_
            # makes backward raise. Also after a failed load, which may have written some.
            # (Inference tensors have no counter; numpy's are never read.)
            torch.autograd.graph.increment_version(
                [t.tensor for t in plan.rest] + [t.tensor for t, _ in plan.whole] + plan.wrappers)
    for key, value in plan.values:
        set_path(state_dict, key, value.make() if isinstance(value, _Later) else value)


def plan_load(
    state_dict: Mapping[str, Any], manifest: Manifest, *, strict: bool, location: str
) -> LoadPlan:
    """Targets and replacement values for every key of ``state_dict``; raises on mismatch."""
    by_key: dict[Any, Entry] = {e.key: e for e in manifest.entries}
    by_name: dict[str, Entry] | None = None  # built on the first key not found as it is
    targets: list[Target] = []
    values: list[tuple[tuple[Any, ...], Any]] = []
    missing: list[str] = []
    problems: list[str] = []
    # Tensor subclasses written through their parts (a DTensor's local tensor), whose
    # own version counter autograd checks too.
    wrappers: list[torch.Tensor] = []
    leaves = flatten(state_dict)
    for key, leaf in leaves:
        entry = by_key.get(key)
        if entry is None:
            by_name = manifest.by_dotted() if by_name is None else by_name
            entry = by_name.get(dotted(key))
        if entry is None and _is_empty_container(leaf):
            inside = _subtree(manifest, by_name or {}, key)
            if inside:
                # A fresh optimizer's state_dict()["state"] is {}: fill it with the saved
                # subtree rather than report it missing (or, with strict=False, skip it).
                clash = _leaf_and_subtree([below for _, below in inside])
                if clash is not None:
                    problems.append(f"key {dotted(key + clash)!r}: the checkpoint holds both a "
                                    "value and keys below it, so it cannot fill the empty "
                                    f"{type(leaf).__name__} at {dotted(key)!r}")
                    continue
                depth = max(len(key) + len(below) for _, below in inside)
                if depth > MAX_KEY_DEPTH:
                    # The containers are built and filled recursively, as a save walks them.
                    problems.append(f"key {dotted(key)!r}: the checkpoint's keys below it are "
                                    f"{depth} parts long, more than the {MAX_KEY_DEPTH} a "
                                    "state dict may nest")
                    continue
                values.append((key, _skeleton(leaf, [below for _, below in inside])))
                for e, below in inside:
                    _match(key + below, None, e, targets, values, problems)
                continue
            if type(leaf) is dict and not records_empty_dicts(manifest):
                # DCP's flattening writes nothing for an empty dict (a fresh optimizer's
                # "state" saved before its first step), and DCP's own load accepts one;
                # strict loads of such checkpoints, and of their conversions to reshard,
                # failed with 'no key optim.state'.
                continue
        if entry is None:
            missing.append(dotted(key))
            continue
        _match(key, leaf, entry, targets, values, problems)
        if (type(leaf) is not torch.Tensor and isinstance(leaf, torch.Tensor)
                and isinstance(entry, TensorEntry)):
            wrappers.append(leaf)
    # Values replace leaves of the state dict (paths inside a new container from an
    # empty one do not exist in it yet): each must be assignable, or the load would fail
    # half-way, its tensors filled and its values not.
    dest_keys = {key for key, _ in leaves}
    for key in dict.fromkeys(key for key, _ in values if key in dest_keys):
        problem = settable_problem(state_dict, key)
        if problem is not None:
            problems.append(f"key {dotted(key)!r}: its value is replaced by a load, but {problem}")
    targets = _shared_memory(targets, problems)
    if problems:
        raise LayoutMismatchError(_join(problems))
    if missing and strict:
        raise MissingKeysError(
            f"the checkpoint at {location} has no key {_join([repr(m) for m in missing], ', ')}"
            f"{_nested_hint(missing, by_name or {}, manifest) or _whole_hint(missing, by_name or {})}"
            " (load with strict=False to skip missing keys)"
        )
    whole, rest = split_whole_chunks(targets)
    return LoadPlan(whole=whole, rest=rest, values=values, wrappers=wrappers)


def _shared_memory(targets: list[Target], problems: list[str]) -> list[Target]:
    """``targets`` without those that another key's target fills in the same memory.

    Two keys may hold one tensor (tied weights: ``lm_head.weight`` is
    ``embed.weight``): their targets were filled at once by different threads, and
    where the saved values differ each frame's checksum, taken from the destination
    after the copy, could see the other key's bytes: the load failed as a corrupt
    checkpoint. The key later in the state dict fills it, as load_state_dict's copies
    in order leave it. Views that share only part of their memory cannot hold both
    keys' values and are refused by key.
    """
    # Address ranges of the destinations (distinct storages of a device never share addresses),
    # column by column: a Python step per target cost ~2.5 us, at 50k small tensors
    # 5% of the load. The pairs are looked at only if two ranges meet.
    tensors = [t.tensor if t.memory is None else t.memory for t in targets]
    if len(tensors) < 2:
        return targets
    lo = np.fromiter(map(_DATA_PTR, tensors), dtype=np.uint64, count=len(tensors))
    hi = lo + np.fromiter(map(_NBYTES, tensors), dtype=np.uint64, count=len(tensors))
    for i in np.flatnonzero(~np.fromiter(map(_CONTIGUOUS, tensors), dtype=bool,
                                         count=len(tensors))).tolist():
        if tensors[i].numel():
            hi[i] = np.uint64(_span(tensors[i])[1])
    keep = hi > lo
    order = np.flatnonzero(keep)[np.argsort(lo[keep], kind="stable")]
    if len(order) < 2 or not bool((lo[order[1:]] < np.maximum.accumulate(hi[order])[:-1]).any()):
        return targets
    spans = [(int(lo[i]), int(hi[i]), int(i)) for i in order]
    dropped: set[int] = set()
    refused: set[tuple[str, str]] = set()  # one line per pair of keys, however many shards meet
    active: list[tuple[int, int, int]] = []
    for start, end, i in spans:
        active = [a for a in active if a[1] > start]
        for _, _, j in active:
            a, b = targets[min(i, j)], targets[max(i, j)]
            mem_a, mem_b = tensors[min(i, j)], tensors[max(i, j)]
            if mem_a.device != mem_b.device:
                continue  # devices have their own memory
            if a.entry.key == b.entry.key:
                # Shards of one key hold disjoint boxes, in memory of their own unless
                # the caller cut them from one buffer (LocalShardsWrapper([buf[0:4],
                # buf[2:6]])): each shared element silently took the later value.
                if (a.name, a.name) not in refused and (_same_view(mem_a, mem_b)
                                                         or _views_share(mem_a, mem_b)):
                    refused.add((a.name, a.name))
                    problems.append(
                        f"key {a.name!r}: two of its shards are views that share memory, which "
                        "cannot hold the saved values of both; load into separate tensors")
                continue
            copies = (a.memory is not None) + (b.memory is not None)
            if _same_view(mem_a, mem_b) and copies != 1:
                # Two copies written back in state dict order leave the later key's
                # values too; a copy and a direct fill would leave the copy's.
                if not copies:
                    dropped.add(min(i, j))
            elif (a.name, b.name) not in refused and (_same_view(mem_a, mem_b)
                                                      or _views_share(mem_a, mem_b)):
                refused.add((a.name, b.name))
                problems.append(
                    f"keys {a.name!r} and {b.name!r}: their tensors are views that share "
                    "part of their memory, which cannot hold the saved values of both; "
                    "load into separate tensors")
        active.append((start, end, i))
    return [t for i, t in enumerate(targets) if i not in dropped] if dropped else targets


_DATA_PTR = torch.Tensor.data_ptr
_NBYTES = attrgetter("nbytes")
_CONTIGUOUS = torch.Tensor.is_contiguous


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride())


def _views_share(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two views of one storage share an element; where that cannot be told
    cheaply (unlike strides, sizes too large to compare element by element, neither
    view covering its whole span), they are taken not to, as before."""
    size = a.element_size()
    gap = b.data_ptr() - a.data_ptr()
    if b.element_size() == size and a.stride() == b.stride() and not gap % size:
        return bool(views_overlap(gap // size, a.shape, b.shape, a.stride()))
    # Other layouts of one memory (w and w.t() or w.view(-1), a complex tensor and its
    # view_as_real) are what tied weights of another shape are; at real model sizes
    # they were taken not to share, and the load wrote both keys into one memory
    # (one key silently held the other's values, or a good checkpoint read as corrupt).
    # A view covering every byte of its span shares memory with the other exactly where
    # one of the other's elements lies in that span.
    span_a, span_b = _span(a), _span(b)
    if not (span_a[0] < span_b[1] and span_b[0] < span_a[1]):
        return False
    dense_a, dense_b = _covers_span(a), _covers_span(b)
    if dense_a and dense_b:
        return True
    for dense, span, other in ((dense_a, span_a, b), (dense_b, span_b, a)):
        if dense and other.numel() <= 1 << 22:
            starts = _addresses(other)
            return bool(((starts < span[1]) & (starts + other.element_size() > span[0])).any())
    if a.element_size() * a.numel() + b.element_size() * b.numel() > 1 << 22:
        return False
    return bool(np.intersect1d(_byte_addresses(a), _byte_addresses(b)).size)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """``[start, stop)`` byte addresses the elements of non-empty ``t`` lie in."""
    reach = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (reach + 1) * t.element_size()


def _covers_span(t: torch.Tensor) -> bool:
    """Whether the elements of ``t`` fill every byte of its span once (any permutation
    of a C-order layout: contiguous, transposed, channels_last)."""
    expect = 1
    for st, n in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n > 1):
        if st != expect:
            return False
        expect *= n
    return True


def _addresses(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """The byte address of each element of ``t``."""
    size = t.element_size()
    return element_offsets(t.shape, [st * size for st in t.stride()], t.data_ptr())


def _byte_addresses(t: torch.Tensor) -> np.ndarray[Any, Any]:
    return (_addresses(t)[:, None] + np.arange(t.element_size(), dtype=np.int64)).ravel()


def _nested_hint(missing: list[str], by_name: dict[str, Entry], manifest: Manifest) -> str:
    """Where the state dict holds a leaf at a key the checkpoint saved a subtree under
    (a model where a dict of models was saved), name a saved key below it: 'no key
    'model'' alone read as if the checkpoint lacked the model."""
    from .interop.dcp import exact_names

    exact = exact_names(manifest)
    for name in missing[:20]:
        prefix = name + "."
        below = next((n for n, e in by_name.items() if n.startswith(prefix) and (
            n not in exact or _parts_after(e.key, len(name)))), None)
        if below is not None:
            return f"; it holds keys below {name!r}, such as {below!r}, where the state dict has one value"
    return ""


def _whole_hint(missing: list[str], by_name: dict[str, Entry]) -> str:
    """Where the checkpoint holds one value at a key above a missing one (a DCP value
    kept whole, such as a tuple of tensors, or a value where the state dict has a
    dict), name it and, if it is refused, why: 'no key 'tup.0'' alone read as if the
    checkpoint lacked it."""
    from .interop.dcp import RefusedValueEntry

    for name in missing[:20]:
        end = name.rfind(".")
        while end > 0:
            entry = by_name.get(name[:end])
            if entry is not None:
                why = f": {entry.reason}" if isinstance(entry, RefusedValueEntry) else ""
                return (f"; it holds {name[:end]!r} as one value, where the state dict has keys "
                        f"below it (put one value there){why}")
            end = name.rfind(".", 0, end)
    return ""


def _match(
    key: tuple[Any, ...], leaf: Any, entry: Entry, targets: list[Target],
    values: list[tuple[tuple[Any, ...], Any]], problems: list[str],
) -> None:
    if isinstance(entry, TensorEntry):
        _match_tensor(key, leaf, entry, targets, values, problems)
    elif is_tensor_leaf(leaf):
        # An entry that stands in for something refused (a DCP tensor of a dtype reshard
        # lacks) raises its own reason here, naming the key, not "a plain value".
        entry.decoded()
        problems.append(f"key {dotted(key)!r}: the checkpoint holds a plain value, "
                        f"the state dict a {type(leaf).__name__}")
    else:
        values.append((key, entry.decoded()))


def _is_empty_container(leaf: Any) -> bool:
    return type(leaf) in (dict, list, tuple) and not leaf


_INDEX_PART = re.compile(r"0|[1-9][0-9]{0,17}")


def _subtree(
    manifest: Manifest, by_name: dict[str, Entry], key: tuple[Any, ...]
) -> list[tuple[Entry, tuple[Any, ...]]]:
    """The entries saved below ``key``, each with its key path below it.

    Matched by key parts; failing that, by dotted name: DCP checkpoints and the output of
    ``reshard convert`` name each entry by one dotted string (``optim.state.0.exp_avg``),
    which the state dict's nested keys match by name as everywhere else. Those names
    are split at the dots, and parts that are plain decimal numbers become ints, as an
    optimizer's state keys and list indices were before DCP and convert wrote them as
    text: with the text key "0", ``Optimizer.load_state_dict`` would keep the state
    aside without a word instead of giving it to parameter 0.
    """
    n = len(key)
    inside = [(e, e.key[n:]) for e in manifest.entries if len(e.key) > n and e.key[:n] == key]
    if inside:
        return inside
    from .interop.dcp import exact_names

    # A DCP entry whose key is the path DCP's planner recorded is never split at the dots
    # of its parts ("layer.0.weight" is one dict key): it is below ``key`` when some of
    # its leading parts spell ``key``'s name, and keeps its own parts below.
    exact = exact_names(manifest)
    prefix = dotted(key) + "."
    out = []
    for name, e in by_name.items():
        if not name.startswith(prefix):
            continue
        if name in exact:
            below = _parts_after(e.key, len(prefix) - 1)
            if below:
                out.append((e, below))
            continue
        out.append((e, tuple(int(p) if _INDEX_PART.fullmatch(p) else p
                             for p in name[len(prefix):].split("."))))
    return out


def _parts_after(key: tuple[Any, ...], name_len: int) -> tuple[Any, ...]:
    """The parts of ``key`` after those whose dotted name is ``name_len`` characters
    long; () where no run of leading parts ends there (the name ends inside a part)."""
    end = -1
    for i, part in enumerate(key):
        end += 1 + len(str(part))
        if end == name_len:
            return key[i + 1:]
        if end > name_len:
            break
    return ()


def _leaf_and_subtree(rests: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    """A path in ``rests`` that is also a proper prefix of another one, if any: a value
    and a subtree at one place (a damaged manifest, or dotted names such as ``a.0`` and
    ``a.0.x``) cannot be built into one container."""
    leaves = set(rests)
    for rest in rests:
        for i in range(1, len(rest)):
            if rest[:i] in leaves:
                return rest[:i]
    return None


def _skeleton(like: Any, rests: list[tuple[Any, ...]]) -> Any:
    """A container shaped like the saved keys ``rests`` below it, leaves None (filled later).

    The top level keeps the type of ``like`` where the keys fit it; below it, int parts
    0..n-1 make a list and other parts a dict (the format records keys, not container
    types). Tensors arrive whole, as plain tensors: a destination of their own (a
    DTensor, ...) needs a state dict that already holds one.
    """
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for rest in rests:
        groups.setdefault(rest[0], []).append(rest[1:])
    children = {k: _skeleton(None, [r for r in g if r]) if any(g) else None
                for k, g in groups.items()}
    is_seq = (all(type(k) is int for k in children)
              and set(children) == set(range(len(children))))
    if like is not None and (is_seq or type(like) is dict):
        kind: Any = type(like)
    else:
        kind = list if is_seq else dict
    if kind is dict:
        return children
    return kind(children[i] for i in range(len(children)))


def _match_tensor(
    key: tuple[Any, ...], leaf: Any, entry: TensorEntry, targets: list[Target],
    values: list[tuple[tuple[Any, ...], Any]], problems: list[str],
) -> None:
    if not is_tensor_leaf(leaf):
        tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
        targets.append(Target(entry=entry, box=full_box(entry.shape), tensor=tensor))
        values.append((key, _as_container(tensor, entry.container)))
        return
    scalar = isinstance(leaf, np.generic)
    if scalar:
        leaf = np.array(leaf)
    if isinstance(leaf, np.ndarray) and leaf.flags.writeable and any(s < 0 for s in leaf.strides):
        # torch cannot view negative strides (np.flip, a[::-1]): fill a copy, then write
        # it back into the caller's array in place.
        dest, leaf = leaf, np.empty(leaf.shape, dtype=leaf.dtype)
        # Its memory, as positive strides over the same elements, is what is checked for
        # elements shared inside it or with other keys (the copy shares none): an
        # as_strided with overlapping negative strides, or two keys' views, took
        # whichever value was written back last, silently.
        memory = shards_of(dest[tuple(slice(None, None, -1) if s < 0 else slice(None)
                                      for s in dest.strides)], key, for_load=True).tensors[0]
        values.append((key, _Later(partial(_copied_into, dest, leaf))))
    else:
        memory = None
    shards = shards_of(leaf, key, for_load=True)
    if shards.shape != entry.shape:
        problems.append(f"key {dotted(key)!r}: the checkpoint holds shape {list(entry.shape)}, "
                        f"the state dict expects {list(shards.shape)}")
        return
    problem = _lossy_dtype(entry, shards.tensors)
    if problem is not None:
        problems.append(f"key {dotted(key)!r}: {problem}")
        return
    for box, tensor in zip(shards.boxes, shards.tensors):
        targets.append(Target(entry=entry, box=box, tensor=tensor, memory=memory))
    if scalar:
        values.append((key, _Later(partial(_item, leaf))))


def _lossy_dtype(entry: TensorEntry, tensors: tuple[torch.Tensor, ...]) -> str | None:
    """Why the saved elements cannot go into ``tensors``, if they cannot.

    A load converts dtypes as ``Tensor.copy_`` does (float64 into float32, int into float,
    real into complex), as ``load_state_dict`` does. Complex into real is refused: the copy
    would drop every imaginary part with only a torch warning, a value silently not loaded.
    Only tensors holding elements count: an empty shard writes nothing (and an empty
    LocalShardsWrapper reports the default dtype, not its own).
    """
    if not entry.dtype.startswith("complex"):
        return None
    real = next((t.dtype for t in tensors if t.numel() and not t.dtype.is_complex), None)
    if real is None:
        return None
    return (f"the checkpoint holds {entry.dtype}, the state dict "
            f"{str(real).removeprefix('torch.')}: loading complex values into a real dtype "
            "would drop their imaginary parts; load into a complex tensor (and take .real "
            "if only that is wanted)")


def _item(array: np.ndarray[Any, Any]) -> Any:
    return array[()]


def _copied_into(dest: np.ndarray[Any, Any], src: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    np.copyto(dest, src)
    return dest


def _as_container(tensor: torch.Tensor, container: str) -> Any:
    if container == "torch" or tensor.dtype == torch.bfloat16:
        return tensor
    array = tensor.numpy()
    return _Later(lambda: array[()]) if container == "numpy_scalar" else array


def _join(items: list[str], sep: str = "; ", limit: int = 20) -> str:
    more = len(items) - limit
    return sep.join(items[:limit]) + (f" and {more} more" if more > 0 else "")
