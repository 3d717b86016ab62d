"""Read-only access to a checkpoint from one process: ``reshard.open``."""

from __future__ import annotations

import operator
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from . import config
from .adapters.tensors import torch_dtype
from .core.layout import Box
from .errors import CheckpointError, MissingKeysError
from .format.manifest import Chunk, Entry, Key, ValueEntry, dotted
from .manifest_io import load_manifest
from .storage import open_store
from .transfer.read import Target, fill

IndexPart = Union[int, slice, "types.EllipsisType", None]
Index = Union[IndexPart, tuple[IndexPart, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkInfo:
    """One saved chunk of a tensor: its box (``offsets``, ``sizes`` in the tensor's
    global index space), the data file holding it (relative to the checkpoint), its
    stored and raw byte counts and its codec's name (docs/FORMAT.md)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    nbytes: int
    raw_nbytes: int
    codec: str
    column_parts: int = 0
    """The parts of its column checksums (docs/FORMAT.md), 0 when it has none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    """What a checkpoint holds under one key.

    ``refused``: why reading or loading this key raises, or None where it reads. A DCP
    directory's tensor of a dtype reshard lacks is a ``"tensor"`` with its dtype and
    shape and no chunks; its value that needs arbitrary pickle (opened without
    ``allow_pickle``) is a ``"value"``.
    """

    key: str
    kind: str
    shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    nbytes: int
    chunks: tuple[ChunkInfo, ...]
    refused: str | None = None


class Checkpoint:
    """A committed checkpoint opened for reading; needs no torch.distributed."""

    def __init__(
        self, path: str | os.PathLike[str], *, allow_pickle: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        from .async_save import wait_for_inflight

        self._store = open_store(path, storage_options)
        self.path = self._store.location
        try:
            wait_for_inflight(self.path)  # as in load: its commit deletes the files read here
            self.manifest = load_manifest(self._store, allow_pickle=allow_pickle)
        except BaseException:
            self._store.close()
            raise
        self._entries = self.manifest.by_dotted()
        self._by_key = {e.key: e for e in self.manifest.entries}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store (open files, remote sessions); ``with`` calls it."""
        self._store.close()

    def keys(self) -> list[str]:
        """Flattened key names, dotted (``"optim.state.0.exp_avg"``), in saved order.

        One per entry: where two keys of a DCP directory read as one name (a list value
        ``n = [1, 2]`` beside a key ``"n.0"``), the name is listed twice; read each by its
        key parts (``("n", 0)``, ``("n.0",)``).
        """
        return [dotted(e.key) for e in self.manifest.entries]

    def __contains__(self, key: object) -> bool:
        # Every key form read() and info() take: `0 in ck` was False where ck.read(0) read.
        name = _name(key)
        return name is not None and name in self._entries

    def _entry(self, key: str | int | Key) -> Entry:
        name = _name(key)
        if name is None:
            raise MissingKeysError(f"{self.path}: {key!r} is not a key (a str, an int, or a "
                                   "tuple of str and int parts)")
        # Key parts first: in a DCP directory two keys may read as one dotted name (a
        # list value n = [1, 2] read as n.0, n.1, beside a key "n.0"), and ("n", 0)
        # read the other one.
        exact = self._by_key.get(tuple(key) if isinstance(key, (tuple, list)) else (key,))
        if exact is not None:
            return exact
        try:
            return self._entries[name]
        except KeyError:
            raise MissingKeysError(f"{self.path} has no key {name!r}") from None

    def info(self, key: str | int | Key) -> EntryInfo:
        """What is saved at ``key`` (a dotted name, an int, or a tuple of key parts):
        ``kind`` ``"tensor"`` (with ``shape``, ``dtype``, ``nbytes`` of the raw data and
        its chunks) or ``"value"``; MissingKeysError naming the key when there is none."""
        from .interop.dcp import RefusedValueEntry, UnsupportedTensorEntry

        entry = self._entry(key)
        if isinstance(entry, UnsupportedTensorEntry):
            # Not "a plain value": it is a tensor, one that reshard cannot hold.
            return EntryInfo(key=dotted(entry.key), kind="tensor", shape=entry.shape,
                             dtype=entry.dtype, nbytes=_nbytes(entry.shape, entry.dtype),
                             chunks=(), refused=entry.reason)
        if isinstance(entry, ValueEntry):
            return EntryInfo(key=dotted(entry.key), kind="value", shape=None, dtype=None,
                             nbytes=0, chunks=(), refused=entry.reason
                             if isinstance(entry, RefusedValueEntry) else None)
        return EntryInfo(
            key=dotted(entry.key), kind="tensor", shape=entry.shape,
            dtype=torch_dtype(entry.dtype), nbytes=entry.nbytes,
            chunks=tuple(_chunk_info(c) for c in entry.chunks),
        )

    def read(self, key: str | int | Key, index: Index = None) -> Any:
        """The whole tensor at ``key``, or ``tensor[index]``.

        ``index`` is what torch indexing takes of ints (negative ones count from the
        end), slices with a positive step, one Ellipsis and None (a new dim), alone or in
        a tuple; ``None`` alone reads everything. Anything else, or an int out of range,
        raises CheckpointError naming the key. Only the frames holding the selection are
        read (for a stepped slice, those from its first to its last element). Plain values are returned as is.

        An entry saved from a numpy array or scalar (``container`` ``numpy`` or
        ``numpy_scalar`` in the manifest) comes back as numpy gives ``value[index]``: a
        numpy scalar where every dim takes an int and the index holds no Ellipsis or None
        (``()`` of a 0-d array or scalar included), else an array (``[...]`` of a scalar is
        a 0-d array); slices may also step backwards, as numpy's do. Read whole, it is
        what was saved, as ``reshard.load`` gives it where the state dict has no object of
        its own. Anything else comes back as a torch tensor, as ``tensor[index]``.
        """
        entry = self._entry(key)
        if isinstance(entry, ValueEntry):
            # A refused key (a DCP tensor of a dtype reshard lacks, a value that needs
            # pickle) raises its reason, index or not: it may not be a plain value at all.
            if index is not None and not _refused(entry):
                raise CheckpointError(f"key {dotted(entry.key)!r} is a plain value; it has no index")
            return entry.decoded()
        as_numpy = _reads_as_numpy(entry.container, entry.dtype)
        box, post = _index_box(entry.shape, index, dotted(entry.key), numpy=as_numpy)
        try:
            out = torch.empty(box.sizes, dtype=torch_dtype(entry.dtype))
        except (RuntimeError, MemoryError) as e:
            # The size comes from the manifest: a damaged or hostile one must not crash the caller.
            raise CheckpointError(
                f"{self.path}: cannot allocate {list(box.sizes)} {entry.dtype} for key "
                f"{dotted(entry.key)!r} (read a slice with an index instead): {e}"
            ) from e
        fill(self._store, [Target(entry=entry, box=box, tensor=out)],
             threads=config.io_threads(), max_piece_nbytes=config.max_piece_nbytes())
        if index is None or not as_numpy:
            if post:
                # contiguous(): a stepped selection does not keep the whole box it was read from.
                out = out[post].contiguous()
            return out if not as_numpy else _as_saved(out, entry.container)
        # numpy's own indexing of the box read decides scalar or array as value[index]
        # does: a scalar for an int in every dim and no Ellipsis or None (() of a 0-d
        # entry too), a 0-d array where an Ellipsis was given (post keeps it).
        picked = out.numpy()[post]
        if isinstance(picked, np.ndarray) and not picked.flags.c_contiguous:
            picked = picked.copy()  # a stepped view would keep the whole box alive
        return picked


def open(  # noqa: A001 - public name
    path: str | os.PathLike[str], *, allow_pickle: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Open the checkpoint at ``path`` for reading in this process.

    ``path`` is a directory or an fsspec URL holding a reshard checkpoint, or a
    torch.distributed.checkpoint directory (``allow_pickle`` as in ``reshard.load``).
    ``storage_options`` go unchanged to fsspec (for s3fs: ``key``, ``secret``, ``endpoint_url``).
    """
    return Checkpoint(path, allow_pickle=allow_pickle, storage_options=storage_options)


def _as_saved(tensor: torch.Tensor, container: str) -> Any:
    """``tensor`` as the kind of object that was saved (docs/FORMAT.md, ``container``),
    as load's ``_as_container`` gives it. A dtype numpy lacks (bfloat16, float8: a
    manifest not written by a save from numpy) or a container this reader does not know
    stays a tensor."""
    if container not in ("numpy", "numpy_scalar"):
        return tensor
    try:
        array = tensor.numpy()
    except TypeError:
        return tensor
    return array[()] if container == "numpy_scalar" else array


def _reads_as_numpy(container: str, dtype: str) -> bool:
    """Whether an entry reads back as numpy: saved from numpy, and of a dtype numpy has
    (a manifest not written by a save from numpy may say bfloat16: that stays a tensor)."""
    if container not in ("numpy", "numpy_scalar"):
        return False
    try:
        torch.empty(0, dtype=torch_dtype(dtype)).numpy()
    except (TypeError, CheckpointError):
        return False
    return True


def _refused(entry: ValueEntry) -> bool:
    from .interop.dcp import RefusedValueEntry

    return isinstance(entry, RefusedValueEntry)


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    n = getattr(dtype, "itemsize", 0)
    for s in shape:
        n *= s
    return int(n)


def _chunk_info(c: Chunk) -> ChunkInfo:
    return ChunkInfo(offsets=c.box.offsets, sizes=c.box.sizes, file=c.file, nbytes=c.nbytes,
                     raw_nbytes=c.raw_nbytes, codec=c.codec.name,
                     column_parts=c.column_crcs.parts if c.column_crcs is not None else 0)


def _name(key: object) -> str | None:
    """The dotted name ``key`` stands for: a str as it is, an int as a one-part key
    ({0: ...}), a tuple (or list) of str and int parts joined; None for anything else."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return dotted((key,))
    if (isinstance(key, (tuple, list)) and key
            and all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in key)):
        return dotted(tuple(key))
    return None


def _index_box(
    shape: tuple[int, ...], index: Index, name: str, *, numpy: bool = False
) -> tuple[Box, tuple[Any, ...]]:
    """The box that ``index`` selects from a tensor of ``shape``, and the index that then
    gives ``tensor[index]`` out of that box (ints, steps, None, and a trailing Ellipsis
    where ``index`` had one, which numpy needs to give a 0-d array, not a scalar). Ints,
    slices, one Ellipsis and None index as torch indexes; a stepped slice reads the box
    from its first to its last element. ``numpy``: slices may step backwards (numpy's do,
    torch's do not)."""
    given = () if index is None else (index if isinstance(index, tuple) else (index,))
    parts = _expand_ellipsis(given, shape, name)
    offsets: list[int] = []
    sizes: list[int] = []
    post: list[Any] = []
    d = 0
    for raw in parts:
        if raw is None:  # a new dim of size 1, as torch's t[None]
            post.append(None)
            continue
        part = _as_int(raw)
        n = shape[d]
        if isinstance(part, int) and not isinstance(part, bool):
            i = part + n if part < 0 else part
            if not 0 <= i < n:
                raise CheckpointError(f"key {name!r}: index {part} out of range for dim {d} of size {n}")
            offsets.append(i)
            sizes.append(1)
            post.append(0)
        elif isinstance(part, slice):
            try:
                start, stop, step = part.indices(n)
            except (TypeError, ValueError) as e:  # a zero step, bounds that are not ints
                raise CheckpointError(f"key {name!r}: slice {part!r} for dim {d}: {e}") from None
            if step < 0 and not numpy:
                raise CheckpointError(f"key {name!r}: slice {part!r} for dim {d}: negative steps are "
                                      "not supported (torch tensors have none); read with a positive "
                                      "step and flip the result")
            count = len(range(start, stop, step))
            span = (count - 1) * abs(step) + 1 if count else 0
            if step > 0:
                offsets.append(start)
                post.append(slice(None, None, step))
            else:  # from the last element selected up to the first, read backwards
                offsets.append(start + (count - 1) * step if count else 0)
                post.append(slice(span - 1, None, step) if count else slice(None))
            sizes.append(span)
        else:
            raise CheckpointError(f"key {name!r}: index parts must be ints or slices (or one "
                                  f"Ellipsis, or None for a new dim), got {raw!r}")
        d += 1
    # Dims the index did not reach are taken whole.
    offsets += [0] * (len(shape) - d)
    sizes += shape[d:]
    if any(p is Ellipsis for p in given):
        post.append(Ellipsis)
    return Box(tuple(offsets), tuple(sizes)), tuple(post)


def _expand_ellipsis(parts: tuple[Any, ...], shape: tuple[int, ...], name: str) -> tuple[Any, ...]:
    """``parts`` with its Ellipsis (at most one) replaced by the whole slices it stands for;
    CheckpointError naming the key when they index more dims than there are."""
    ndim = len(shape)
    dims = sum(1 for p in parts if p is not None and p is not Ellipsis)
    if dims > ndim:
        raise CheckpointError(f"key {name!r}: {dims} indices for shape {list(shape)}")
    ellipses = [i for i, p in enumerate(parts) if p is Ellipsis]
    if len(ellipses) > 1:
        raise CheckpointError(f"key {name!r}: an index can have only one Ellipsis, got {len(ellipses)}")
    if not ellipses:
        return parts
    i = ellipses[0]
    return parts[:i] + (slice(None),) * (ndim - dims) + parts[i + 1:]


def _as_int(part: Any) -> Any:
    """Integer-likes (numpy ints, 0-d integer tensors) as int; anything else unchanged."""
    if isinstance(part, (bool, slice)) or not hasattr(part, "__index__"):
        return part
    # A one-element tensor or array also has __index__, but torch indexes with it as an
    # index tensor (t[tensor([2])] keeps the dim) and with a bool one as a mask
    # (t[tensor(True)] adds a dim): neither is t[int], so both stay refused.
    if isinstance(part, (torch.Tensor, np.ndarray)) and (
        part.ndim != 0 or part.dtype in (torch.bool, np.bool_)
    ):
        return part
    try:
        return operator.index(part)
    except TypeError:
        return part
