"""Torch and numpy objects to boxes and back: the one place that knows about DTensor,
LocalShardsWrapper and DCP's checkpointable protocol."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.layout import Box, full_box, placed_runs, run_boxes, strides_overlap
from ..core.planner import Desc, TensorDesc, ValueDesc
from ..errors import LayoutMismatchError, UnsupportedValueError
from ..format.manifest import MAX_DIM_SIZE, MAX_NDIM, Key, dotted
from ..format.values import encode_value

_TORCH_DTYPES: dict[torch.dtype, str] = {
    torch.bool: "bool", torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16",
    torch.int32: "int32", torch.int64: "int64", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64",
    torch.complex64: "complex64", torch.complex128: "complex128",
}
for _name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        _TORCH_DTYPES[getattr(torch, _name)] = _name
_BY_NAME: dict[str, torch.dtype] = {v: k for k, v in _TORCH_DTYPES.items()}


def dtype_name(dtype: torch.dtype, key: str) -> str:
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise UnsupportedValueError(f"key {key!r}: dtype {dtype} is not supported") from None


def torch_dtype(name: str) -> torch.dtype:
    return _BY_NAME[name]


# The numpy dtypes torch.from_numpy takes, native byte order only. A kind test ("biufc")
# let longdouble and clongdouble through, and from_numpy's TypeError named no key.
# Keyed by equality: np.ulonglong equals uint64 but from_numpy refuses its type number,
# so an array of an equal dtype is viewed as the value first.
_NUMPY_DTYPES = {np.dtype(n): np.dtype(n) for n in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)}


def numpy_to_torch(array: np.ndarray[Any, Any], key: str) -> torch.Tensor:
    dtype = _NUMPY_DTYPES.get(array.dtype)
    if dtype is None:
        raise UnsupportedValueError(
            f"key {key!r}: numpy dtype {array.dtype} is not supported (use a native-endian "
            "bool, int, uint, float or complex array)"
        )
    return torch.from_numpy(array if array.dtype.num == dtype.num else array.view(dtype))


# State dict walking


MAX_KEY_DEPTH = 256
"""Containers nested deeper than this are refused by name: deeper ones ran out of
Python's recursion limit here or further on (a RecursionError naming no key)."""


def flatten(state_dict: Mapping[Any, Any]) -> list[tuple[Key, Any]]:
    """Leaves of a nested state dict with their key paths (dicts, lists, tuples walked)."""
    if not isinstance(state_dict, Mapping):
        raise UnsupportedValueError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    out: list[tuple[Key, Any]] = []
    _walk(state_dict, (), out, set())
    return out


def _walk(obj: Any, prefix: Key, out: list[tuple[Key, Any]], above: set[int]) -> None:
    """``above``: the ids of the containers on the path to ``obj``, to name a cycle."""
    walked = (isinstance(obj, Mapping) and obj) or (
        isinstance(obj, (list, tuple)) and obj and not _is_leaf_tuple(obj))
    if not walked:
        if prefix:
            out.append((prefix, obj))
        return
    if id(obj) in above:
        raise UnsupportedValueError(
            f"key {dotted(prefix)!r}: the state dict contains itself there (a cycle)")
    if len(prefix) >= MAX_KEY_DEPTH:
        raise UnsupportedValueError(
            f"key {dotted(prefix[:8])!r}...: containers nested more than {MAX_KEY_DEPTH} deep")
    above.add(id(obj))
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise UnsupportedValueError(
                    f"key {dotted(prefix) or '<root>'!r}: dict key {k!r} of type "
                    f"{type(k).__name__} is not supported (use str or int keys)"
                )
            _walk(v, prefix + (k,), out, above)
    else:
        for i, v in enumerate(obj):
            _walk(v, prefix + (i,), out, above)
    above.discard(id(obj))


def _is_leaf_tuple(obj: Any) -> bool:
    return isinstance(obj, torch.Size)


def set_path(root: Any, key: Key, value: Any) -> Any:
    """Replace the leaf at ``key``; tuples on the way are rebuilt. Returns the new root."""
    if not key:
        return value
    head, rest = key[0], key[1:]
    child = root[head]
    new_child = set_path(child, rest, value)
    if isinstance(root, tuple):
        items = list(root)
        items[head] = new_child  # type: ignore[index]
        return _rebuilt(root, items)
    if new_child is not child or not rest:
        root[head] = new_child
    return root


def _rebuilt(old: tuple[Any, ...], items: list[Any]) -> tuple[Any, ...]:
    # A namedtuple (or a subclass of one) takes its fields as arguments, any other tuple
    # type an iterable: calling a plain tuple subclass with the items as arguments failed.
    if hasattr(type(old), "_make"):
        return type(old)._make(items)  # type: ignore[attr-defined,no-any-return]
    return type(old)(items)


def settable_problem(root: Any, key: Key) -> str | None:
    """Why ``set_path(root, key, ...)`` would fail, or None: checked while a load plans,
    before any tensor is filled. A tuple is rebuilt and handed to its parent; the first
    container above the leaf that is not a tuple must take item assignment (a
    ``MappingProxyType`` does not)."""
    chain = [root]
    for part in key[:-1]:
        chain.append(chain[-1][part])
    for container in reversed(chain):
        if isinstance(container, tuple):
            try:
                _rebuilt(container, list(container))
            except Exception as e:  # noqa: BLE001 - a user type whose constructor differs
                return f"the {type(container).__name__} holding it cannot be rebuilt ({e})"
            continue
        if not hasattr(container, "__setitem__"):
            return f"a {type(container).__name__} holds it, which cannot be changed in place"
        return None
    return None


# Leaves to boxes


@dataclass(frozen=True, slots=True, kw_only=True)
class Shards:
    """A leaf as boxes of one global tensor, each with the local torch tensor holding it."""

    shape: tuple[int, ...]
    dtype: str
    container: str
    boxes: tuple[Box, ...]
    tensors: tuple[torch.Tensor, ...]


def is_tensor_leaf(leaf: Any) -> bool:
    return (
        isinstance(leaf, (torch.Tensor, np.ndarray, np.generic))
        or hasattr(leaf, "__create_chunk_list__")
    )


def shards_of(leaf: Any, key: Key, *, for_load: bool) -> Shards:
    """The boxes of ``leaf`` held by this rank and the tensors backing them."""
    if _is_dtensor(leaf):
        local = leaf._local_tensor
        if not hasattr(local, "__create_chunk_list__"):
            return _dtensor_shards(leaf, local, key, for_load=for_load)
    name = dotted(key)
    if hasattr(leaf, "__create_chunk_list__"):
        return _protocol_shards(leaf, name, for_load=for_load)
    if _is_sharded_tensor(leaf):
        return _sharded_tensor_shards(leaf, name, for_load=for_load)
    if isinstance(leaf, np.generic):
        leaf = np.asarray(leaf)
        container = "numpy_scalar"
    elif isinstance(leaf, np.ndarray):
        container = "numpy"
    else:
        container = "torch"
    if isinstance(leaf, np.ndarray):
        if for_load and not leaf.flags.writeable:
            raise UnsupportedValueError(f"key {name!r}: the numpy array is read-only")
        if not for_load and isinstance(leaf, np.ma.MaskedArray):
            # Saved as its data alone, the mask was lost without a word (masked elements
            # came back as whatever the data held under them).
            raise UnsupportedValueError(
                f"key {name!r}: a numpy MaskedArray would be saved without its mask; save "
                "np.ma.getdata(x) and np.ma.getmaskarray(x) as two arrays")
        if not for_load and any(s < 0 for s in leaf.strides):
            # torch cannot view negative strides (np.flip, a[::-1]); saving copies anyway.
            leaf = np.ascontiguousarray(leaf)
        tensor = numpy_to_torch(leaf, name)
    else:
        tensor = leaf.detach() if leaf.requires_grad else leaf
    check_dense(tensor, name, for_load=for_load)
    shape = tuple(tensor.shape)
    return Shards(
        shape=shape, dtype=dtype_name(tensor.dtype, name), container=container,
        boxes=(full_box(shape),), tensors=(tensor,),
    )


def _is_dtensor(leaf: Any) -> bool:
    # Importing DTensor costs most of a second; a leaf can only be one if it was imported.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(leaf, module.DTensor)


def _is_sharded_tensor(leaf: Any) -> bool:
    module = sys.modules.get("torch.distributed._shard.sharded_tensor.api")
    return module is not None and isinstance(leaf, module.ShardedTensorBase)


def _sharded_tensor_shards(st: Any, name: str, *, for_load: bool) -> Shards:
    """The legacy ``ShardedTensor`` (FSDP1's sharded state dicts, TorchRec): its local
    shards, each placed by its metadata."""
    meta = st.metadata()
    shape = tuple(int(s) for s in meta.size)
    dtype = dtype_name(meta.tensor_properties.dtype, name)
    boxes: list[Box] = []
    tensors: list[torch.Tensor] = []
    for shard in st.local_shards():
        md = shard.metadata
        box = Box(tuple(int(o) for o in md.shard_offsets), tuple(int(n) for n in md.shard_sizes))
        tensor = shard.tensor
        if tuple(tensor.shape) != box.sizes:
            raise LayoutMismatchError(
                f"key {name!r}: a local shard at {list(box.offsets)} has shape "
                f"{list(tensor.shape)} but its metadata says {list(box.sizes)}"
            )
        if _TORCH_DTYPES.get(tensor.dtype) != dtype:
            raise LayoutMismatchError(
                f"key {name!r}: a local shard at {list(box.offsets)} has dtype {tensor.dtype} "
                f"but the ShardedTensor declares {meta.tensor_properties.dtype}"
            )
        if box.is_empty:
            continue
        tensor = tensor.detach() if tensor.requires_grad else tensor
        check_dense(tensor, name, for_load=for_load)
        boxes.append(box)
        tensors.append(tensor)
    return Shards(shape=shape, dtype=dtype, container="torch", boxes=tuple(boxes),
                  tensors=tuple(tensors))


def _is_plain_dense(tensor: torch.Tensor, *, for_load: bool) -> bool:
    """The common case check_dense accepts, in a few attribute reads (no device object,
    no stride walk: a contiguous tensor has no zero stride over more than one element)."""
    return (
        tensor.layout == torch.strided and not tensor.is_nested and not tensor.is_meta
        and (not for_load or tensor.is_contiguous())
    )


def check_dense(tensor: torch.Tensor, name: str, *, for_load: bool) -> None:
    """Refuse tensors whose elements are not plain strided memory this process can read
    (and, for a load, write) element by element, naming the key."""
    problem = None
    if tensor.is_nested:
        problem = "nested tensors are not supported (save their components as a list)"
    elif tensor.layout != torch.strided:
        problem = (f"layout {tensor.layout} is not supported (convert it to a dense tensor, "
                   "e.g. .to_dense())")
    elif tensor.device.type == "meta":
        problem = ("it is on the meta device and holds no data"
                   + (" (materialize it first, e.g. module.to_empty(device=...))" if for_load else ""))
    elif type(tensor) is not torch.Tensor and _has_no_storage(tensor):
        # A wrapper subclass (torch.masked.MaskedTensor, ...) has no memory of its own:
        # its bytes were read through its __torch_dispatch__, which failed as
        # "rank 0: TypeError: ..." on save and as a CorruptCheckpointError on load.
        problem = (f"a {type(tensor).__module__}.{type(tensor).__qualname__} is a tensor "
                   "subclass without memory of its own; reshard reads and writes such "
                   "subclasses only through DCP's checkpoint protocol (__create_chunk_list__, "
                   "__get_tensor_shard__): save its plain tensors instead")
    elif for_load and tensor.numel() and any(
        st == 0 and n > 1 for st, n in zip(tensor.stride(), tensor.shape)
    ):  # an empty array has no elements to share (numpy gives empty arrays zero strides)
        problem = "it is an expanded view whose elements share memory; load into a copy"
    elif for_load and tensor.numel() > 1 and not tensor.is_contiguous():
        # Overlapping strides without a zero one (as_strided((4, 4), (2, 1))): elements
        # that share memory took whichever saved value was written last, silently.
        overlap = strides_overlap(tensor.shape, tensor.stride())
        if overlap is not False:
            problem = (f"its strides {list(tensor.stride())} for shape {list(tensor.shape)} make "
                       + ("elements share memory" if overlap else
                          "a layout whose elements may share memory")
                       + ", which cannot hold every saved value; load into a copy")
    if problem is not None:
        raise UnsupportedValueError(f"key {name!r}: {problem}")


def _has_no_storage(tensor: torch.Tensor) -> bool:
    if not tensor.numel():
        return False
    try:
        return bool(tensor.data_ptr() == 0)
    except Exception:  # noqa: BLE001 - a subclass refusing even this has no usable memory
        return True


def _dtensor_shards(dt: Any, local: torch.Tensor, key: Key, *, for_load: bool) -> Shards:
    spec = dt._spec
    layout = _dtensor_layout(spec, key)
    if layout.sizes is None:  # this rank is not in the mesh
        return Shards(shape=layout.shape, dtype=dtype_name(dt.dtype, dotted(key)),
                      container="torch", boxes=(), tensors=())
    if local.shape != layout.sizes:
        if not _COORD_CACHE[id(spec.mesh)][2]:
            # The same words on every rank that raises: the agreed error says them once
            # (with this rank's shapes, each rank's message differed and all were joined).
            raise LayoutMismatchError(
                f"key {dotted(key)!r}: local shards do not have the sizes placements "
                f"{list(spec.placements)} of global shape {list(layout.shape)} give on a mesh "
                f"whose ranks are not ascending ({spec.mesh.mesh.tolist()}): DTensor's "
                "collectives place shards by process-group rank there, and torch gives uneven "
                "shards on such a mesh sizes that do not match their data (full_tensor() is "
                "wrong too); use ascending ranks"
            )
        raise LayoutMismatchError(
            f"key {dotted(key)!r}: the local shard has shape {list(local.shape)}, but placements "
            f"{list(spec.placements)} of global shape {list(layout.shape)} give this rank "
            f"{list(layout.sizes)} (DTensor uneven shards must follow torch.chunk sizes)"
        )
    if local.requires_grad:
        local = local.detach()
    # A local tensor of a subclass may hold no memory of its own (a MaskedTensor).
    if type(local) is not torch.Tensor or not _is_plain_dense(local, for_load=for_load):
        check_dense(local, dotted(key), for_load=for_load)
    dtype = _TORCH_DTYPES.get(local.dtype)
    if dtype is None:
        dtype = dtype_name(local.dtype, dotted(key))
    if layout.local_offsets is None:
        tensors: tuple[torch.Tensor, ...] = (local,)
    else:  # strided shards: one view of the local tensor per box
        tensors = tuple(_narrowed(local, at, box.sizes)
                        for box, at in zip(layout.boxes, layout.local_offsets))
    return Shards(shape=layout.shape, dtype=dtype, container="torch", boxes=layout.boxes,
                  tensors=tensors)


def _narrowed(tensor: torch.Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
    for dim, (o, n) in enumerate(zip(offsets, sizes)):
        if n != tensor.shape[dim]:
            tensor = tensor.narrow(dim, o, n)
    return tensor


@dataclass(frozen=True, slots=True)
class _DTensorLayout:
    """The global shape of a DTensor, this rank's local shape (None outside the mesh)
    and its boxes; ``local_offsets`` places each box in the local tensor, None when the
    one box is the whole local tensor."""

    shape: tuple[int, ...]
    sizes: tuple[int, ...] | None
    boxes: tuple[Box, ...]
    local_offsets: tuple[tuple[int, ...], ...] | None = None


def _dtensor_layout(spec: Any, key: Key) -> _DTensorLayout:
    """This rank's layout of a DTensor spec, computed once per (shape, mesh, placements):
    the placement checks and DTensor's own offset computation cost ~10 us per tensor,
    which dominated saves and loads of thousands of small DTensors."""
    mesh = spec.mesh
    placements = spec.placements
    cache_key = (spec.shape, id(mesh), placements)
    hit = _LAYOUT_CACHE.get(cache_key)
    # id(mesh) is only a valid key while _COORD_CACHE pins that very mesh object.
    if hit is not None and _COORD_CACHE.get(id(mesh), (None,))[0] is mesh:
        return hit
    from torch.distributed.tensor import Replicate, Shard

    strided = _strided_shard_type()
    for p in placements:
        if type(p) not in (Shard, Replicate, strided):
            raise UnsupportedValueError(
                f"key {dotted(key)!r}: placement {p} is not supported (Shard(d), Replicate() "
                "and _StridedShard are; redistribute Partial placements first)"
            )
    shape = tuple(int(s) for s in spec.shape)
    coordinate = _coordinate(mesh)
    if coordinate is None:
        layout = _DTensorLayout(shape=shape, sizes=None, boxes=())
    elif ((strided is not None and any(type(p) is strided for p in placements))
          or not _COORD_CACHE[id(mesh)][2]):
        layout = _runs_layout(shape, mesh, placements, coordinate, strided)
    else:
        sizes, offsets = _local_shape_and_offset(shape, mesh, tuple(placements))
        layout = _DTensorLayout(shape=shape, sizes=sizes, boxes=(Box(offsets, sizes),))
    if len(_LAYOUT_CACHE) > _CACHE_LIMIT:
        _LAYOUT_CACHE.clear()
    _LAYOUT_CACHE[cache_key] = layout
    return layout


def _strided_shard_type() -> type | None:
    try:
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:  # a torch without it has no such DTensors either
        return None
    return _StridedShard


def _runs_layout(
    shape: tuple[int, ...], mesh: Any, placements: Any, coordinate: Any, strided: type | None
) -> _DTensorLayout:
    """This rank's boxes by reshard's own placement math: a rank of a ``_StridedShard``
    DTensor (FSDP2 over tensor parallelism) may hold indices that are not consecutive,
    one box per run of them; and DTensor's own offsets follow mesh coordinates, which
    its collectives do not (see ``_coordinate``). ``strided``: the ``_StridedShard`` type."""
    specs = [("replicate", -1, 1) if p.is_replicate() else
             ("strided_shard" if type(p) is strided else "shard", int(p.dim),
              int(getattr(p, "split_factor", 1)))
             for p in placements]
    runs = placed_runs(shape, tuple(int(n) for n in mesh.shape), specs,
                       tuple(int(c) for c in coordinate))
    sizes = tuple(sum(k for _, k in dim_runs) for dim_runs in runs)
    pieces = run_boxes(runs)
    if len(pieces) == 1:
        return _DTensorLayout(shape=shape, sizes=sizes, boxes=(pieces[0][0],))
    return _DTensorLayout(shape=shape, sizes=sizes, boxes=tuple(b for b, _ in pieces),
                          local_offsets=tuple(at for _, at in pieces))


# DTensor's own shape/offset computation costs ~0.1-0.3 ms per call, which dominated
# saves and loads of thousands of small DTensors; the answer depends only on the
# global shape, the mesh (and this rank's place in it) and the placements.
_SHAPE_CACHE: dict[tuple[Any, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}
_COORD_CACHE: dict[Any, Any] = {}
_LAYOUT_CACHE: dict[tuple[Any, ...], _DTensorLayout] = {}
_CACHE_LIMIT = 4096


def _coordinate(mesh: Any) -> Any:
    """This rank's place on each mesh dim as the data sits there: its rank in the dim's
    process group. DTensor's scatter and gather, and FSDP2's sharding, place shards by
    that rank, which orders a group's ranks ascending; ``get_coordinate`` follows the
    mesh's order instead, so on a mesh whose ranks are not ascending (``[[3, 2], [1, 0]]``)
    it names another rank's shard. Cached with whether the two agree."""
    key = id(mesh)
    hit = _COORD_CACHE.get(key)
    if hit is None or hit[0] is not mesh:
        if len(_COORD_CACHE) > _CACHE_LIMIT:
            _COORD_CACHE.clear()
            _SHAPE_CACHE.clear()  # their keys use id(mesh), valid only while pinned here
            _LAYOUT_CACHE.clear()
        coordinate = mesh.get_coordinate()
        if coordinate is not None:
            coordinate = tuple(int(c) for c in coordinate)
            try:
                local = tuple(int(mesh.get_local_rank(d)) for d in range(mesh.ndim))
            except Exception:  # noqa: BLE001 - a mesh without process groups: no collective placed its shards
                local = coordinate
            hit = (mesh, local, local == coordinate)
        else:
            hit = (mesh, None, True)
        _COORD_CACHE[key] = hit
    return hit[1]


def _local_shape_and_offset(
    shape: tuple[int, ...], mesh: Any, placements: tuple[Any, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    key = (shape, id(mesh), placements)
    hit = _SHAPE_CACHE.get(key)
    if hit is None or _COORD_CACHE.get(id(mesh), (None,))[0] is not mesh:
        if len(_SHAPE_CACHE) > _CACHE_LIMIT:
            _SHAPE_CACHE.clear()
        _coordinate(mesh)  # pins the mesh object behind id(mesh) for the cache key
        sizes, offsets = compute_local_shape_and_global_offset(shape, mesh, list(placements))
        hit = _SHAPE_CACHE[key] = (tuple(int(x) for x in sizes), tuple(int(x) for x in offsets))
    return hit


def _protocol_shards(obj: Any, name: str, *, for_load: bool) -> Shards:
    from torch.distributed.checkpoint.metadata import MetadataIndex

    # DCP asks only tensors it saves whole for write items: a tensor subclass with just
    # __create_chunk_list__ and __get_tensor_shard__ loads with DCP (its global shape and
    # dtype are its own), and failed here on the missing method.
    has_items = hasattr(obj, "__create_write_items__")
    if not has_items and not isinstance(obj, torch.Tensor):
        raise UnsupportedValueError(
            f"key {name!r}: a {type(obj).__qualname__} has __create_chunk_list__ but no "
            "__create_write_items__ and is not a torch.Tensor, so nothing gives its global "
            "shape and dtype; implement __create_write_items__ or subclass torch.Tensor")
    items: Any = []
    if has_items:
        try:
            items = obj.__create_write_items__(name, obj)
        except Exception as e:
            raise UnsupportedValueError(f"key {name!r}: __create_write_items__ failed: {e}") from e
    if items:
        # Every item must describe one tensor: a BYTE_IO item (no tensor_data) failed as
        # an AttributeError naming no key, and items after the first that declared another
        # global shape or dtype were not looked at.
        described = {(None if i.tensor_data is None else
                      (tuple(i.tensor_data.size), i.tensor_data.properties.dtype))
                     for i in items}
        if None in described or len(described) > 1:
            raise UnsupportedValueError(
                f"key {name!r}: __create_write_items__ must return SHARD items of one "
                "tensor (each with tensor_data of the same size and dtype), got "
                + ", ".join(sorted("no tensor_data" if d is None else
                                   f"size {list(d[0])} dtype {d[1]}" for d in described)))
        tensor_data = items[0].tensor_data
        shape = tuple(int(s) for s in tensor_data.size)
        dtype = dtype_name(tensor_data.properties.dtype, name)
    elif isinstance(obj, torch.Tensor):
        # A rank that holds no shard has no write item to describe the tensor (an empty
        # LocalShardsWrapper gives none), but a tensor subclass still knows its global
        # shape and dtype: the rank then contributes no boxes.
        shape, dtype = tuple(int(s) for s in obj.shape), dtype_name(obj.dtype, name)
    else:
        raise UnsupportedValueError(
            f"key {name!r}: __create_write_items__ returned no items and the object has no "
            "tensor shape; a rank holding nothing must still describe the tensor (return a "
            "write item with an empty chunk, or subclass torch.Tensor)"
        )
    try:
        chunks = (obj.__create_chunk_list__() if for_load or not has_items
                  else [i.tensor_data.chunk for i in items])
    except Exception as e:
        raise UnsupportedValueError(f"key {name!r}: __create_chunk_list__ failed: {e}") from e
    boxes: list[Box] = []
    tensors: list[torch.Tensor] = []
    for index, chunk in enumerate(chunks):
        box = Box(tuple(int(o) for o in chunk.offsets), tuple(int(s) for s in chunk.sizes))
        if box.is_empty:  # an empty LocalShardsWrapper's chunk is [0, 0] whatever the ndim
            continue
        if len(box.sizes) != len(shape) or len(box.offsets) != len(shape):
            # Skipped, a load left the destination's shard unfilled without a word.
            raise LayoutMismatchError(
                f"key {name!r}: chunk {index} at {list(box.offsets)} of sizes "
                f"{list(box.sizes)} does not have the {len(shape)} dims of shape {list(shape)}")
        if for_load and any(o < 0 or o + n > d for o, n, d in zip(box.offsets, box.sizes, shape)):
            # A save's boxes are checked against the shape by the planner; a load's were
            # intersected with the saved chunks and the part outside was left unfilled.
            raise LayoutMismatchError(
                f"key {name!r}: chunk {index} at {list(box.offsets)} of sizes "
                f"{list(box.sizes)} lies outside shape {list(shape)}")
        try:
            tensor = obj.__get_tensor_shard__(MetadataIndex(name, chunk.offsets, index))
        except Exception as e:
            raise UnsupportedValueError(
                f"key {name!r}: __get_tensor_shard__ failed for chunk {index} at "
                f"{list(box.offsets)}: {e}") from e
        if not isinstance(tensor, torch.Tensor):
            raise UnsupportedValueError(
                f"key {name!r}: __get_tensor_shard__ returned a {type(tensor).__name__} for "
                f"chunk {index} at {list(box.offsets)}, not a torch.Tensor")
        if tuple(tensor.shape) != box.sizes:
            raise LayoutMismatchError(
                f"key {name!r}: shard {index} has shape {list(tensor.shape)} but its chunk "
                f"says {list(box.sizes)}"
            )
        if not for_load and _TORCH_DTYPES.get(tensor.dtype) != dtype:
            # Its bytes would be saved under the declared dtype: a manifest no reader accepts
            # (or, at the same element size, other values).
            raise LayoutMismatchError(
                f"key {name!r}: shard {index} has dtype {tensor.dtype} but the write items "
                f"declare {dtype}"
            )
        tensor = tensor.detach() if tensor.requires_grad else tensor
        # As for every other leaf: a meta shard loaded nothing, silently; one whose
        # strides overlap kept whichever value came last; a sparse one failed unnamed.
        if type(tensor) is not torch.Tensor or not _is_plain_dense(tensor, for_load=for_load):
            check_dense(tensor, name, for_load=for_load)
        boxes.append(box)
        tensors.append(tensor)
    return Shards(shape=shape, dtype=dtype, container="torch", boxes=tuple(boxes),
                  tensors=tuple(tensors))


def describe(key: Key, leaf: Any) -> tuple[Desc, tuple[torch.Tensor, ...]]:
    """The save description of one leaf, and the tensors behind its boxes."""
    if is_tensor_leaf(leaf):
        s = shards_of(leaf, key, for_load=False)
        if len(s.shape) > MAX_NDIM:
            # The reader refuses such manifests: never commit a checkpoint it cannot open.
            raise UnsupportedValueError(
                f"key {dotted(key)!r}: {len(s.shape)} dims, the format allows at most {MAX_NDIM}"
            )
        if any(n > MAX_DIM_SIZE for n in s.shape):  # only an empty tensor can be this large
            raise UnsupportedValueError(
                f"key {dotted(key)!r}: shape {list(s.shape)} has a dim larger than the format's "
                f"{MAX_DIM_SIZE}"
            )
        desc = TensorDesc(key=key, dtype=s.dtype, shape=s.shape, container=s.container,
                          boxes=s.boxes)
        return desc, s.tensors
    return ValueDesc(key=key, value=encode_value(leaf, dotted(key))), ()


def storable(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as one whose memory holds its values: detached, with the lazy conjugate
    and negative bits resolved (``.contiguous()`` keeps them, ``.view()`` refuses them),
    bool viewed as uint8. Copies only to resolve a lazy bit."""
    t = tensor.detach().resolve_conj().resolve_neg()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The C-order little-endian bytes of ``tensor`` (copied only if needed)."""
    t = storable(tensor)
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    flat = flat_view(t).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return flat.numpy().data.cast("B")


def flat_view(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor as one dim of stride 1 (a view), which ``.view(dtype)`` of
    another element size accepts. torch calls a one-element tensor contiguous whatever
    its strides (``x[::2][:1]``; DCP's torch.save keeps them), ``.contiguous()`` returns
    it as it is, and ``reshape(-1)`` keeps that stride."""
    flat = t.reshape(-1)
    if flat.numel() <= 1 and flat.stride(0) != 1:
        flat = flat.as_strided((flat.numel(),), (1,))
    return flat

