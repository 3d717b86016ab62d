"""Read a torch.distributed.checkpoint ``.metadata`` file without running arbitrary pickle.

DCP writes its metadata with ``pickle.dump``. Unpickling runs whatever callables the
stream names, so a hostile ``.metadata`` could execute code. This module resolves only
an allowlist of names (DCP's metadata dataclasses, ``torch.Size``, dtypes and layouts,
paths) and checks the shape of what it gets back; any other name raises before
anything is called.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptCheckpointError, UnsupportedFormatError

MAX_METADATA_NBYTES = 1 << 30

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED_CLASSES: dict[str, frozenset[str]] = {
    _DCP_METADATA: frozenset({
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    }),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch": frozenset({"Size"}),
    "collections": frozenset({"OrderedDict"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"}),
}


KeyPath = tuple[str | int, ...]
"""A key's path in the state dict DCP saved: dict keys (as str) and list indices."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageInfo:
    """Where DCP stored one item: a byte range of a ``.distcp`` file, maybe transformed."""

    file: str
    offset: int
    length: int
    transforms: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DcpChunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    storage: StorageInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class DcpTensor:
    fqn: str
    dtype: Any  # torch.dtype
    shape: tuple[int, ...]
    chunks: tuple[DcpChunk, ...]
    path: KeyPath | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DcpBytes:
    fqn: str
    storage: StorageInfo
    path: KeyPath | None = None


class _RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the allowlisted names.

    The pure-Python unpickler, not the C one: the C one sizes its memo table by the
    index a PUT opcode names, and zero-fills it, so one flipped bit of a .metadata (a
    LONG_BINPUT of index ~2**31) made it allocate and touch tens of GiB and the process
    was killed for memory (CPython gh-115952, fixed only in later versions). The Python
    one keeps its memo in a dict. It parses about 3x slower (an 18 MB .metadata of 128k
    chunks, describing 64 GiB: 8 s instead of 2.5 s), small beside reading that data.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return _get_layout
        if module == "torch":
            import torch

            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout)):
                return value
        # Quoted: the names come from the file, and may hold terminal escapes.
        raise pickle.UnpicklingError(
            f"it references {module + '.' + name!r}, which is not a DCP metadata class"
        )


def _refuse_opcode(self: Any) -> None:
    raise pickle.UnpicklingError("it uses pickle buffers (protocol 5), which DCP metadata never holds")


# BYTEARRAY8 makes a bytearray of the length the stream declares before reading it;
# DCP metadata holds no bytearrays or out-of-band buffers.
_RestrictedUnpickler.dispatch = dict(pickle._Unpickler.dispatch)
for _op in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
    _RestrictedUnpickler.dispatch[_op[0]] = _refuse_opcode


def _get_layout(name: object) -> Any:
    # torch pickles layouts as _get_layout("torch.strided"); resolve only real layouts.
    import torch

    if isinstance(name, str) and name.startswith("torch."):
        value = getattr(torch, name[len("torch."):], None)
        if isinstance(value, torch.layout):
            return value
    raise pickle.UnpicklingError(f"{name!r} is not a torch layout")


def read_metadata(data: bytes, *, source: str) -> tuple[list[DcpTensor], list[DcpBytes]]:
    """The tensors and byte items a DCP ``.metadata`` describes, validated.

    Raises CorruptCheckpointError naming ``source`` for anything that is not plain DCP
    metadata (including pickles that try to call other functions); nothing outside the
    allowlist is ever called.
    """
    if len(data) > MAX_METADATA_NBYTES:
        raise CorruptCheckpointError(f"{source}: {len(data)} bytes is too large for DCP metadata")
    import torch.distributed.checkpoint.filesystem  # noqa: F401 - the allowlisted classes
    import torch.distributed.checkpoint.metadata as md

    try:
        meta = _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptCheckpointError(
            f"{source}: refusing to load this DCP .metadata: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(meta, md.Metadata):
        raise CorruptCheckpointError(f"{source}: expected DCP Metadata, got {type(meta).__name__}")
    version = getattr(meta, "version", None)
    if version is not None and (not isinstance(version, str) or not version.startswith("1.")):
        raise UnsupportedFormatError(f"{source}: DCP metadata version {version!r} is not supported (1.x)")
    storage = _storage_table(getattr(meta, "storage_data", None), source)
    sd_meta = getattr(meta, "state_dict_metadata", None)
    if not isinstance(sd_meta, dict):
        raise CorruptCheckpointError(f"{source}: state_dict_metadata is not a dict")
    paths = getattr(meta, "planner_data", None)
    tensors: list[DcpTensor] = []
    byte_items: list[DcpBytes] = []
    for fqn, item in sd_meta.items():
        # "" is a name: dcp.save writes a state dict's key "" as it is, and reshard keys
        # may be "" too; refusing it made the whole checkpoint unreadable.
        if not isinstance(fqn, str):
            raise CorruptCheckpointError(f"{source}: state_dict_metadata key {fqn!r} is not a name")
        path = _path(paths.get(fqn) if isinstance(paths, dict) else None, fqn)
        if isinstance(item, md.BytesStorageMetadata):
            byte_items.append(DcpBytes(fqn=fqn, storage=_lookup(storage, fqn, None, source), path=path))
        elif isinstance(item, md.TensorStorageMetadata):
            tensors.append(_tensor(fqn, item, storage, source, path))
        else:
            raise CorruptCheckpointError(f"{source}: key {fqn!r}: unknown item {type(item).__name__}")
    return tensors, byte_items


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**48 for v in value
    ):
        raise CorruptCheckpointError(f"{what}: expected non-negative ints, got {value!r}")
    return tuple(int(v) for v in value)


def _path(raw: object, fqn: str) -> KeyPath | None:
    """The state dict path DCP's default planner recorded for ``fqn`` (its
    ``planner_data``: ``"model.layer.0.weight"`` -> ``("model", "layer.0.weight")``), or
    None where there is none that fits.

    It tells which dots of a name separate keys and which are part of a key; the name
    alone cannot. A custom planner may keep anything in ``planner_data``, so a path is
    taken only when its parts are str and int and they join to ``fqn`` exactly, as DCP
    joins them; otherwise the name is split at its dots as before.
    """
    if not isinstance(raw, (tuple, list)) or not raw:
        return None
    for p in raw:
        if type(p) is int:
            if not 0 <= p < 2**62:
                return None
        elif type(p) is not str:
            return None
    if ".".join(map(str, raw)) != fqn:
        return None
    return tuple(raw)


def _tensor(
    fqn: str, item: Any, storage: dict[tuple[str, Any], StorageInfo], source: str,
    path: KeyPath | None = None,
) -> DcpTensor:
    import torch

    where = f"{source}: key {fqn!r}"
    dtype = getattr(getattr(item, "properties", None), "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise CorruptCheckpointError(f"{where}: dtype {dtype!r} is not a torch.dtype")
    shape = _ints(getattr(item, "size", None), f"{where}: size")
    raw_chunks = getattr(item, "chunks", None)
    if not isinstance(raw_chunks, list):
        raise CorruptCheckpointError(f"{where}: chunks is not a list")
    chunks: list[DcpChunk] = []
    for i, c in enumerate(raw_chunks):
        offsets = _ints(getattr(c, "offsets", None), f"{where}: chunks[{i}].offsets")
        sizes = _ints(getattr(c, "sizes", None), f"{where}: chunks[{i}].sizes")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise CorruptCheckpointError(f"{where}: chunks[{i}] has the wrong number of dims")
        if 0 in sizes:
            continue  # an empty shard holds no bytes
        chunks.append(DcpChunk(offsets=offsets, sizes=sizes,
                               storage=_lookup(storage, fqn, offsets, source)))
    return DcpTensor(fqn=fqn, dtype=dtype, shape=shape, chunks=tuple(chunks), path=path)


def _lookup(
    storage: dict[tuple[str, Any], StorageInfo], fqn: str, offsets: tuple[int, ...] | None, source: str
) -> StorageInfo:
    info = storage.get((fqn, offsets))
    if info is None:
        at = "" if offsets is None else f" at offsets {list(offsets)}"
        raise CorruptCheckpointError(f"{source}: key {fqn!r}{at} has no storage record")
    return info


def _storage_table(raw: object, source: str) -> dict[tuple[str, Any], StorageInfo]:
    import torch.distributed.checkpoint.metadata as md
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    if not isinstance(raw, dict):
        raise CorruptCheckpointError(
            f"{source}: storage_data is {type(raw).__name__}, not the dict FileSystemWriter writes"
        )
    out: dict[tuple[str, Any], StorageInfo] = {}
    for index, info in raw.items():
        if not isinstance(index, md.MetadataIndex) or not isinstance(info, _StorageInfo):
            raise CorruptCheckpointError(f"{source}: storage_data holds {type(info).__name__}")
        fqn = getattr(index, "fqn", None)
        if not isinstance(fqn, str):
            raise CorruptCheckpointError(f"{source}: storage_data index without a name")
        where = f"{source}: storage of key {fqn!r}"
        off = getattr(index, "offset", None)
        key_offsets = None if off is None else _ints(off, f"{where}: offset")
        out[(fqn, key_offsets)] = StorageInfo(
            file=_file_name(getattr(info, "relative_path", None), where),
            offset=_ints([getattr(info, "offset", None)], f"{where}: offset")[0],
            length=_ints([getattr(info, "length", None)], f"{where}: length")[0],
            transforms=_transforms(getattr(info, "transform_descriptors", None), where),
        )
    return out


def _file_name(name: object, where: str) -> str:
    # A plain name in the checkpoint folder: never a path that leaves it.
    if (
        not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..")
        or name.startswith(".") or len(name) > 255 or "\0" in name
    ):
        raise CorruptCheckpointError(f"{where}: refusing data file name {name!r}")
    return name


def _transforms(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)) or not all(isinstance(d, str) for d in raw):
        raise CorruptCheckpointError(f"{where}: transform_descriptors {raw!r} is not a list of str")
    for d in raw:
        name, _, version = d.partition("/")
        if name != "stream.zstd" or version.partition(".")[0] != "1":
            raise UnsupportedFormatError(
                f"{where}: DCP extension {d!r} is not supported (reshard reads 'stream.zstd/1')"
            )
    return tuple(raw)
