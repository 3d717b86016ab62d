"""torch.distributed.checkpoint (DCP) directories read as reshard manifests.

A DCP directory (written by ``torch.distributed.checkpoint.save`` with FileSystemWriter)
holds a pickled ``.metadata`` and ``*.distcp`` files. Each tensor chunk is a
``torch.save`` blob at ``(offset, length)`` of one file, optionally zstd-compressed by
DCP's ZStandard extension. We describe it as a reshard chunk with one frame and the
internal codec ``dcp-torch-save``, whose decode runs ``torch.load(weights_only=True)``
and returns the chunk's raw C-order bytes; the whole reshard read path (planning,
resharding, parallel reads) then works unchanged.

Non-tensor items are ``torch.save``'d Python objects. They are loaded once, when the
manifest is built, with ``torch.load(weights_only=True)``: plain values (None, bool,
int, float, str, bytes and dicts/lists/tuples of them) become value entries, flattened
like reshard flattens state dicts (``"extra.steps.0"``). DCP saves a tuple whole, tensors
and all: a tensor inside a value becomes a tensor entry of its own (``"extra.pair.0"``)
whose one chunk is its own bytes in the data file where they lie there as they are
(``_stored_run``), else the value item, decoded by the same codec at its path inside
the value (``element``). An ``io.BytesIO`` value (pickled by DCP
like any other) is read without unpickling (``_dcp_bytesio``) and loads as a BytesIO, as
DCP's own load gives it. Anything else needs arbitrary pickle: it is refused (the key
raises CheckpointError when loaded) unless the caller passed ``allow_pickle=True``.
"""

from __future__ import annotations

import collections
import io
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..core.layout import Box, tiling_problem
from ..errors import CheckpointError, CorruptCheckpointError, UnsupportedValueError, printable
from ..format.manifest import (
    IDENTITY,
    Chunk,
    CodecSpec,
    Entry,
    Frame,
    Key,
    Manifest,
    TensorEntry,
    ValueEntry,
    dotted,
)
from ..format.values import encode_value
from ..storage.base import Store
from ._dcp_bytesio import BytesIOValueEntry, bytesio_state
from ._dcp_pickle import DcpBytes, DcpTensor, KeyPath, StorageInfo, read_metadata

METADATA_NAME = ".metadata"
CODEC_NAME = "dcp-torch-save"
LIBRARY = "torch.distributed.checkpoint"
"""The ``library_version`` of a DCP directory's in-memory manifest, whose world size,
format version and save id are stand-ins, not the DCP save's."""
# A torch.save blob is its tensor's bytes plus a zip directory and a small pickle.
_BLOB_OVERHEAD_NBYTES = 1 << 20
_MAX_VALUE_NBYTES = 1 << 30
_ELEMENT_FRAME_NBYTES = 1 << 20
"""Frames of the tensors inside DCP values that are read in place (``_stored_run``)."""


def is_dcp_checkpoint(store: Store) -> bool:
    """Whether ``store`` holds a DCP ``.metadata`` file."""
    try:
        store.size(METADATA_NAME)
    except CheckpointError:
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class DcpManifest(Manifest):
    """The in-memory manifest of a DCP directory.

    ``exact_names``: the dotted names of the entries whose keys are the paths DCP's
    planner recorded (``planner_data``), parts as saved (``("model", "layer.0.weight")``).
    The other entries' keys are DCP's flattened names, one part holding dots that may or
    may not separate keys; a load splits those at the dots to fill an empty container,
    never these.
    """

    exact_names: frozenset[str] = frozenset()
    value_items: tuple[ValueItem, ...] = ()
    """Every value item and what checking its bytes found, for ``verify``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueItem:
    """Where one DCP value item is stored, and why its bytes are damaged (None: they
    passed their zip CRC-32 checks and loaded), or why they were not read (``unchecked``:
    a value too large to read). ``key``: its dotted name."""

    key: str
    file: str
    offset: int
    nbytes: int
    damage: str | None = None
    unchecked: str | None = None


def is_dcp_manifest(manifest: Manifest) -> bool:
    """Whether ``manifest`` describes a DCP directory (read in memory, not parsed)."""
    return isinstance(manifest, DcpManifest)


CONVERTED_LABEL = "dcp"
"""The PEP 440 local version label ``reshard convert`` adds to the ``library_version`` of
its output when the source was a DCP directory (``0.1.0+dcp``): see ``records_empty_dicts``."""


def converted_version(version: str) -> str:
    """``version`` (reshard's) with the local label saying "converted from DCP"."""
    return f"{version}{'.' if '+' in version else '+'}{CONVERTED_LABEL}"


def records_empty_dicts(manifest: Manifest) -> bool:
    """Whether an empty dict of the saved state has an entry in ``manifest``.

    A reshard save records one (an ``empty`` value); DCP writes nothing for it (a fresh
    optimizer's ``state`` saved before its first step), and neither can a conversion of a
    DCP directory, whose output says so in its ``library_version``. A strict load of
    those leaves an empty dict the checkpoint has no key for as it is, as ``dcp.load``
    does, instead of reporting it missing.
    """
    if is_dcp_manifest(manifest):
        return False
    local = manifest.library_version.partition("+")[2]
    return CONVERTED_LABEL not in local.split(".")


def exact_names(manifest: Manifest) -> frozenset[str]:
    """The dotted names of ``manifest``'s entries whose keys are exact paths, not dotted
    names to split (empty for every manifest but a DCP directory's)."""
    return manifest.exact_names if isinstance(manifest, DcpManifest) else frozenset()


def load_dcp_manifest(
    store: Store, *, allow_pickle: bool = False, keep_damaged: bool = False
) -> DcpManifest:
    """An in-memory manifest for the DCP checkpoint in ``store`` (never written to disk).

    A value item whose bytes are damaged (or missing) raises CorruptCheckpointError; with
    ``keep_damaged`` (``verify``) it becomes a ``DamagedValueEntry`` instead, recorded in
    ``value_items``, and tensor items are left for the caller to check: one damaged item
    must not hide the state of all others.
    """
    import os

    source = os.path.join(store.location, METADATA_NAME)
    tensors, byte_items = read_metadata(store.read_bytes(METADATA_NAME), source=source)
    if not keep_damaged:
        _check_ranges(store, [c.storage for t in tensors for c in t.chunks]
                      + [b.storage for b in byte_items])
    entries: list[Entry] = [_tensor_entry_or_refusal(t) for t in tensors]
    exact = {dotted(e.key) for t, e in zip(tensors, entries) if t.path is not None}
    checked: list[ValueItem] = []
    sizes: dict[str, int] = {}
    for item in byte_items:
        key = entry_key(item.fqn, item.path)
        damage = unchecked = None
        try:
            problem = extent_problem(store, item.storage, sizes) if keep_damaged else None
            if problem is not None:
                raise CorruptCheckpointError(problem)
            found = _value_entries(_read_checked_item(store, item), allow_pickle=allow_pickle)
        except ValueTooLargeError as e:
            found = [RefusedValueEntry(key=key, value=_NONE, reason=str(e))]
            unchecked = (f"a DCP value of more than {_MAX_VALUE_NBYTES} bytes (the most reshard reads "
                         "into memory for one value); its bytes were not checked")
        except CheckpointError as e:
            if not keep_damaged:
                raise
            found = [DamagedValueEntry(key=key, value=_NONE, reason=str(e))]
            # verify names the key and file itself.
            damage = (str(e).removeprefix(f"DCP key {item.fqn!r} in {item.storage.file}: ")
                      .removeprefix(f"DCP key {item.fqn!r}: "))
        entries.extend(found)
        checked.append(ValueItem(key=dotted(key), file=item.storage.file, offset=item.storage.offset,
                                 nbytes=item.storage.length, damage=damage, unchecked=unchecked))
        if item.path is not None:
            exact.update(dotted(e.key) for e in found)
    return DcpManifest(
        save_id=f"dcp-{uuid.uuid4().hex[:12]}", world_size=1, created_unix_s=time.time(),
        library_version=LIBRARY, entries=tuple(entries), exact_names=frozenset(exact),
        value_items=tuple(checked),
    )


_INDEX_PART = re.compile(r"0|[1-9][0-9]{0,17}")


def entry_key(fqn: str, path: KeyPath | None) -> Key:
    """The reshard key of a DCP item: its planner path, else its flattened name.

    DCP turned every dict key into text (an optimizer's ``state`` keys 0, 1, ... became
    "0", "1", ...); plain decimal parts become ints again, as a load does for the parts of
    a dotted name, so that a fresh optimizer's empty ``state`` receives them under the
    int keys ``Optimizer.load_state_dict`` maps to its parameters. List indices are ints
    in the path already.
    """
    if path is None:
        return (fqn,)
    return tuple(int(p) if type(p) is str and _INDEX_PART.fullmatch(p) else p for p in path)


def _check_ranges(store: Store, infos: list[StorageInfo]) -> None:
    """Every item lies inside its data file (so no read is sized by a hostile length)."""
    sizes: dict[str, int] = {}
    for info in infos:
        if extent_problem(store, info, sizes) is None:
            continue
        if sizes[info.file] < 0:
            raise CorruptCheckpointError(f"{store.location}: DCP data file {info.file!r} is missing")
        raise CorruptCheckpointError(
            f"{store.location}: DCP item at bytes [{info.offset}, {info.offset + info.length}) "
            f"of {info.file!r} is past its end ({sizes[info.file]} bytes)"
        )


def extent_problem(store: Store, info: StorageInfo, sizes: dict[str, int]) -> str | None:
    """Why the item at ``info`` cannot be read whole (its file missing or too short), or
    None; ``sizes`` caches the files' sizes (-1: missing)."""
    if info.file not in sizes:
        try:
            sizes[info.file] = store.size(info.file)
        except CheckpointError:
            sizes[info.file] = -1
    size = sizes[info.file]
    if size < 0:
        return "the data file is missing"
    end = info.offset + info.length
    if end > size:
        return f"the data file is truncated: the item needs bytes [{info.offset}, {end}), the file has {size}"
    return None


def _tensor_entry(t: DcpTensor) -> TensorEntry:
    from ..adapters.tensors import dtype_name

    dtype = dtype_name(t.dtype, t.fqn)
    itemsize = t.dtype.itemsize
    # Replicas may be listed more than once; each distinct box is one chunk.
    seen: dict[tuple[tuple[int, ...], tuple[int, ...]], Chunk] = {}
    for c in t.chunks:
        box = Box(c.offsets, c.sizes)
        if any(o + s > d for o, s, d in zip(c.offsets, c.sizes, t.shape)):
            raise CorruptCheckpointError(
                f"DCP key {t.fqn!r}: chunk {list(c.offsets)}+{list(c.sizes)} is outside shape "
                f"{list(t.shape)}"
            )
        raw = box.numel * itemsize
        if c.storage.length > raw + raw // 64 + _BLOB_OVERHEAD_NBYTES:
            raise CorruptCheckpointError(
                f"DCP key {t.fqn!r}: a {c.storage.length}-byte item cannot hold a "
                f"{list(c.sizes)} {dtype} chunk"
            )
        seen.setdefault((c.offsets, c.sizes), Chunk(
            box=box, file=c.storage.file, offset=c.storage.offset, nbytes=c.storage.length,
            raw_nbytes=raw, codec=codec_spec(dtype, c.sizes, c.storage.transforms),
            frame_raw_nbytes=max(raw, 1), frames=(Frame(nbytes=c.storage.length, crc32c=None),),
        ))
    chunks = tuple(seen.values())
    problem = tiling_problem(t.shape, [c.box for c in chunks])
    if problem is not None:
        raise CorruptCheckpointError(f"DCP key {t.fqn!r}: the chunks do not tile the tensor: {problem}")
    return TensorEntry(key=entry_key(t.fqn, t.path), dtype=dtype, shape=t.shape, container="torch",
                       chunks=chunks)


def _tensor_entry_or_refusal(t: DcpTensor) -> Entry:
    # One tensor of a dtype reshard lacks (float8_e8m0fnu, qint8, ...) made the whole DCP
    # checkpoint unreadable, every other key with it; now only its own key raises.
    try:
        return _tensor_entry(t)
    except UnsupportedValueError as e:
        return UnsupportedTensorEntry(
            key=entry_key(t.fqn, t.path), value=_NONE, dtype=t.dtype, shape=t.shape,
            reason=f"DCP {e}; the other keys of the checkpoint load",
            items=tuple((c.offsets, c.storage) for c in t.chunks))


def codec_spec(
    dtype: str, sizes: tuple[int, ...], transforms: tuple[str, ...], element: KeyPath | None = None
) -> CodecSpec:
    """The in-memory codec of one DCP tensor item, or (``element``) of a tensor held inside
    a value item (a tuple of tensors): its path inside the value, as JSON."""
    config: tuple[tuple[str, str], ...] = (
        ("dtype", dtype), ("shape", ",".join(str(s) for s in sizes)),
        ("transforms", ";".join(transforms)),
    )
    if element is not None:
        config += (("element", json.dumps(list(element))),)
    return CodecSpec(name=CODEC_NAME, configuration=config)


# Tensor chunks


@dataclass(frozen=True, slots=True)
class DcpTorchSaveCodec:
    """Decodes one DCP tensor item: undo DCP's stream transforms, then
    ``torch.load(weights_only=True)``; yields the chunk's raw C-order bytes.

    Internal: looked up by ``codecs.registry.get_codec`` for in-memory DCP manifests;
    reshard never writes it.
    """

    dtype: str
    shape: tuple[int, ...]
    transforms: tuple[str, ...]
    element: KeyPath | None = None
    """Where the tensor lies inside a value item (``(0,)``: the tuple's first element);
    None for a tensor item, whose blob is the tensor itself."""
    name: str = CODEC_NAME

    @staticmethod
    def from_spec(spec: CodecSpec) -> DcpTorchSaveCodec:
        from ..format.dtypes import ITEMSIZE

        config = dict(spec.configuration)
        dtype, shape_text, transforms = (config.get(k) for k in ("dtype", "shape", "transforms"))
        try:
            if not isinstance(dtype, str) or dtype not in ITEMSIZE:
                raise ValueError(f"dtype {dtype!r}")
            if not isinstance(shape_text, str) or not isinstance(transforms, str):
                raise ValueError("shape and transforms must be strings")
            shape = tuple(int(s) for s in shape_text.split(",")) if shape_text else ()
        except ValueError as e:
            raise CorruptCheckpointError(f"codec {CODEC_NAME!r}: bad configuration ({e})") from None
        steps = tuple(transforms.split(";")) if transforms else ()
        if any(t != "stream.zstd/1" and not t.startswith("stream.zstd/1.") for t in steps):
            raise CorruptCheckpointError(f"codec {CODEC_NAME!r}: unsupported transforms {transforms!r}")
        return DcpTorchSaveCodec(dtype=dtype, shape=shape, transforms=steps,
                                 element=_element_path(config.get("element")))

    def encode(self, data: memoryview) -> bytes:
        raise CheckpointError("the DCP codec only reads; reshard never writes DCP items")

    def decode(self, data: memoryview) -> memoryview:
        import math

        import torch

        from ..adapters.tensors import tensor_bytes, torch_dtype

        raw_nbytes = math.prod(self.shape) * torch_dtype(self.dtype).itemsize
        # A value item holds other values (and tensors) beside this one: its own bound.
        limit = raw_nbytes + _BLOB_OVERHEAD_NBYTES if self.element is None else _MAX_VALUE_NBYTES
        blob = untransform(data, self.transforms, max_nbytes=limit)
        _check_zip_crcs(blob)
        try:
            tensor = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means a bad blob
            raise ValueError(f"DCP tensor item does not load with weights_only=True: {e}") from None
        if self.element is not None:
            tensor = _element_of(tensor, self.element)
        if not _is_plain_tensor(tensor, parameter=self.element is not None):
            raise ValueError(f"DCP tensor item holds a {type(tensor).__name__}, not a tensor")
        if tensor.dtype != torch_dtype(self.dtype) or tuple(tensor.shape) != self.shape:
            raise ValueError(
                f"DCP tensor item holds {tensor.dtype} {list(tensor.shape)}, the metadata says "
                f"{self.dtype} {list(self.shape)}"
            )
        return tensor_bytes(tensor.contiguous())


def _element_path(text: object) -> KeyPath | None:
    if text is None:
        return None
    try:
        parts = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        parts = None
    if not isinstance(parts, list) or not parts or not all(type(p) in (str, int) for p in parts):
        raise CorruptCheckpointError(f"codec {CODEC_NAME!r}: bad element path {text!r}")
    return tuple(parts)


def _element_of(obj: object, path: KeyPath) -> object:
    """The part of a loaded value at ``path`` (dict keys and list/tuple indices)."""
    for part in path:
        if type(obj) in (dict, collections.OrderedDict) and part in obj:  # type: ignore[operator]  # as _flatten_value walks
            obj = obj[part]  # type: ignore[index]
        elif type(obj) in (list, tuple) and type(part) is int and 0 <= part < len(obj):  # type: ignore[arg-type]
            obj = obj[part]  # type: ignore[index]
        else:
            raise ValueError(f"DCP value item has no element at {list(path)}")
    return obj


def _is_plain_tensor(obj: object, *, parameter: bool) -> bool:
    """A CPU tensor of the strided layout (an ``nn.Parameter`` too where ``parameter``:
    one may sit in a tuple value; DCP saves a parameter at a key of its own as a tensor)."""
    import torch

    kinds: tuple[type, ...] = (torch.Tensor, torch.nn.Parameter) if parameter else (torch.Tensor,)
    return (type(obj) in kinds and isinstance(obj, torch.Tensor) and obj.layout == torch.strided
            and obj.device.type == "cpu")


def _check_zip_crcs(blob: bytes) -> list[tuple[int, int]]:
    # DCP records no checksums and torch.load does not verify the zip's CRC-32s, so a
    # flipped bit in tensor data (or in a value's pickle: an lr of 0.5 read as 0.5625)
    # would load silently. torch.save stores records
    # uncompressed: check each in place (zipfile.testzip would copy it in 1 MiB steps).
    # Returns where each record's bytes lie in ``blob`` (start, length).
    import struct
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"DCP item is not a torch.save archive ({e})") from None
    view = memoryview(blob)
    records: list[tuple[int, int]] = []
    for info in infos:
        h = info.header_offset
        if info.compress_type != zipfile.ZIP_STORED or bytes(view[h:h + 4]) != b"PK\x03\x04":
            raise ValueError(f"DCP item: record {info.filename!r} is not a stored zip record")
        # torch's zip reader (miniz) takes a record flagged as a directory (the DOS
        # attribute bit, or a name ending in "/") for one and extracts no bytes: torch.load
        # then returns the tensor's storage uninitialized, without an error.
        if info.external_attr & 0x10 or info.filename.endswith("/") or info.file_size != info.compress_size:
            raise ValueError(f"DCP item: record {info.filename!r} has damaged zip attributes")
        name_len, extra_len = struct.unpack("<HH", view[h + 26:h + 30])
        lo = h + 30 + name_len + extra_len
        if lo + info.compress_size > len(view):
            raise ValueError(f"DCP item: record {info.filename!r} is truncated")
        if zlib.crc32(view[lo:lo + info.compress_size]) != info.CRC:
            raise ValueError(f"DCP item: record {info.filename!r} fails its CRC-32 check")
        records.append((lo, info.compress_size))
    return records


def untransform(
    data: memoryview | bytes | bytearray, transforms: tuple[str, ...], *, max_nbytes: int
) -> bytes:
    """Undo DCP stream transforms (only ``stream.zstd/1``), producing at most ``max_nbytes``."""
    out = bytes(data)
    for _ in transforms:  # validated as stream.zstd/1 when the metadata was read
        import zstandard

        try:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out))
            out = reader.read(max_nbytes + 1)
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd stream does not decode: {e}") from None
        if len(out) > max_nbytes:
            raise _TooLarge(f"zstd stream decodes to more than the expected {max_nbytes} bytes")
    return out


class _TooLarge(ValueError):
    """A stream decodes to more bytes than its bound."""


class ValueTooLargeError(UnsupportedValueError):
    """A DCP value item larger than reshard reads into memory for one value: its key is
    refused (the other keys load) and verify lists it as not checked."""


# Non-tensor items


@dataclass(frozen=True, slots=True, kw_only=True)
class PickledValueEntry(ValueEntry):
    """A non-plain DCP value loaded with full pickle because the caller allowed it.

    In-memory only: it has no JSON form, so ``convert`` refuses it.
    """

    obj: Any = None

    def decoded(self) -> object:
        return self.obj


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedValueEntry(ValueEntry):
    """A DCP value that needs arbitrary pickle; loading its key raises."""

    reason: str = field(default="")

    def decoded(self) -> object:
        raise UnsupportedValueError(self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsupportedTensorEntry(RefusedValueEntry):
    """A DCP tensor reshard cannot hold (its dtype); loading or reading its key raises.

    ``dtype`` (the torch dtype DCP recorded) and ``shape`` describe it for inspection;
    ``items`` are its stored chunks (offsets in the tensor, where), which ``verify``
    checks without decoding them (``check_tensor_item``). Empty for a tensor held inside
    a value: its bytes are the value's.
    """

    dtype: Any = None
    shape: tuple[int, ...] = ()
    items: tuple[tuple[tuple[int, ...], StorageInfo], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DamagedValueEntry(RefusedValueEntry):
    """A DCP value item whose bytes are damaged or missing (``reason`` says how); only in
    the manifest ``verify`` builds (``keep_damaged``): loads refuse the whole checkpoint."""

    def decoded(self) -> object:
        raise CorruptCheckpointError(self.reason)


def check_tensor_item(store: Store, entry: UnsupportedTensorEntry, info: StorageInfo) -> str | None:
    """Why the bytes of one stored chunk of ``entry`` are damaged, or None when each zip
    record of its ``torch.save`` archive passes its CRC-32 check.

    The tensor's dtype is one reshard does not decode; the archive's CRC-32s (which
    ``torch.load`` never checks) cover every byte of its data and pickle all the same.
    The caller has checked that the item lies inside its file.
    """
    import math

    try:
        itemsize = max(int(entry.dtype.itemsize), 1)
    except (AttributeError, TypeError, ValueError):
        itemsize = 16
    raw = math.prod(entry.shape) * itemsize
    buf = bytearray(info.length)
    try:
        store.read_into(info.file, info.offset, memoryview(buf))
        # A chunk is a part of the tensor; the whole tensor bounds what one may decode to.
        _check_zip_crcs(untransform(buf, info.transforms, max_nbytes=raw + raw // 64 + _BLOB_OVERHEAD_NBYTES))
    except (ValueError, CheckpointError) as e:
        return str(e)
    return None


_NONE: dict[str, Any] = {"type": "none"}


def _value_entries(source: _ValueSource, *, allow_pickle: bool) -> list[Entry]:
    """The entries of one DCP value item (read and checked, ``_read_checked_item``): plain
    values flattened to keys, tensors inside it (a tuple of tensors) as tensor entries
    that read their bytes from the item, or one entry that refuses (or, with
    ``allow_pickle``, holds) the whole object."""
    import pickle

    import torch

    item, blob = source.item, source.blob
    key = entry_key(item.fqn, item.path)
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        state = bytesio_state(blob)
        if state is not None:  # an io.BytesIO, read without unpickling anything
            return [BytesIOValueEntry(key=key, value=_NONE, data=state.data, position=state.position)]
        if not allow_pickle:
            return [RefusedValueEntry(key=key, value=_NONE, reason=(
                f"DCP key {item.fqn!r} holds a Python object that only arbitrary pickle can load "
                f"({_first_line(e)}); load it with allow_pickle=True if you trust this checkpoint"
            ))]
        try:
            obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise CorruptCheckpointError(f"DCP key {item.fqn!r}: does not unpickle: {e2}") from None
        return [PickledValueEntry(key=key, value=_NONE, obj=obj)]
    except Exception as e:  # noqa: BLE001 - a broken blob
        raise CorruptCheckpointError(f"DCP key {item.fqn!r}: does not load: {e}") from None
    from ..adapters.tensors import MAX_KEY_DEPTH

    out: list[Entry] = []
    problems: list[str] = []
    _flatten_value(key, obj, out, problems, source=source, depth=len(key), max_depth=MAX_KEY_DEPTH)
    if problems and not allow_pickle:
        return [RefusedValueEntry(key=key, value=_NONE, reason=(
            f"DCP key {item.fqn!r}: {problems[0]}; load it with allow_pickle=True to get the object"
        ))]
    if problems:
        return [PickledValueEntry(key=key, value=_NONE, obj=obj)]
    return out


@dataclass(frozen=True, slots=True)
class _ValueSource:
    """A value item: where it is stored, its bytes (their zip CRC-32s checked), and where
    its zip records lie in them (start, length)."""

    item: DcpBytes
    blob: bytes
    records: list[tuple[int, int]]


def _flatten_value(
    key: Key, obj: object, out: list[Entry], problems: list[str], *, source: _ValueSource,
    depth: int, max_depth: int,
) -> None:
    """Flatten ``obj`` (loaded with weights_only=True) below ``key`` as reshard flattens a
    state dict; ``depth`` is the length of the item's own key (what lies past it is the
    path inside the value)."""
    import torch

    if len(key) > max_depth:
        # Unpickling builds nested tuples without recursing; walking them here does: a
        # value nested 50000 deep raised RecursionError out of open, load and verify.
        problems.append(f"it nests deeper than the {max_depth} levels a state dict may")
        return
    # Exact types: weights_only admits OrderedDict, and a tuple subclass it admitted
    # (torch.Size) must not come back as a plain tuple.
    if type(obj) in (dict, collections.OrderedDict) and obj:
        for k, v in obj.items():  # type: ignore[attr-defined]
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                problems.append(f"dict key {k!r} is not a str or int")
                return
            _flatten_value(key + (k,), v, out, problems, source=source, depth=depth, max_depth=max_depth)
    elif type(obj) in (list, tuple) and obj:
        for i, v in enumerate(obj):  # type: ignore[arg-type]
            _flatten_value(key + (i,), v, out, problems, source=source, depth=depth, max_depth=max_depth)
    elif isinstance(obj, torch.Tensor) and len(key) > depth:
        # A tensor inside a value: DCP keeps a tuple whole, tensors and all (its planner
        # walks dicts and lists only). It reads from the value's bytes, as a tensor item.
        if not _is_plain_tensor(obj, parameter=True):
            problems.append(f"a {type(obj).__module__}.{type(obj).__qualname__} "
                            f"({obj.layout}, on {obj.device.type}) has no plain-tensor form")
            return
        out.append(_element_entry(key, key[depth:], obj, source))
    else:
        try:
            out.append(ValueEntry(key=key, value=encode_value(obj, ".".join(map(str, key)))))
        except UnsupportedValueError:
            problems.append(f"a {type(obj).__module__}.{type(obj).__qualname__} has no plain-value form")


def _element_entry(key: Key, element: Key, tensor: Any, source: _ValueSource) -> Entry:
    """A tensor held at ``element`` inside the value ``source``: one chunk of its own
    bytes in the data file where they lie as they are, else the whole item, decoded at
    ``element`` on every read."""
    from ..adapters.tensors import dtype_name
    from ..codecs import crc32c

    name = ".".join(map(str, key))
    shape = tuple(int(s) for s in tensor.shape)
    try:
        dtype = dtype_name(tensor.dtype, name)
    except UnsupportedValueError as e:
        return UnsupportedTensorEntry(
            key=key, value=_NONE, dtype=tensor.dtype, shape=shape,
            reason=f"DCP {e}; the other keys of the checkpoint load")
    raw = tensor.numel() * tensor.element_size()
    s = source.item.storage
    box = Box((0,) * len(shape), shape)
    run = None if 0 in shape else _stored_run(tensor, source)
    if 0 in shape:
        chunks: tuple[Chunk, ...] = ()
    elif run is not None:
        # Read like a reshard chunk, a part at a time: each read of the whole item
        # decoded every tensor of a tuple of N (N reads of all of them). The CRC-32Cs
        # come from bytes that just passed the archive's CRC-32 checks.
        at, data = run
        step = _ELEMENT_FRAME_NBYTES
        chunks = (Chunk(
            box=box, file=s.file, offset=at, nbytes=raw, raw_nbytes=raw, codec=IDENTITY,
            frame_raw_nbytes=step, frames=tuple(
                Frame(nbytes=min(step, raw - i), crc32c=crc32c(data[i:i + step]))
                for i in range(0, raw, step)),
        ),)
    else:
        chunks = (Chunk(
            box=box, file=s.file, offset=s.offset, nbytes=s.length,
            raw_nbytes=raw, codec=codec_spec(dtype, shape, s.transforms, element),
            frame_raw_nbytes=max(raw, 1), frames=(Frame(nbytes=s.length, crc32c=None),),
        ),)
    return TensorEntry(key=key, dtype=dtype, shape=shape, container="torch", chunks=chunks)


def _read_checked_item(store: Store, item: DcpBytes) -> _ValueSource:
    """The bytes of value ``item``, its zip CRC-32s checked (CorruptCheckpointError)."""
    blob = _read_item(store, item.storage, item.fqn)
    try:
        records = _check_zip_crcs(blob)  # DCP writes every value with torch.save
    except ValueError as e:
        raise CorruptCheckpointError(f"DCP key {item.fqn!r} in {item.storage.file}: {e}") from None
    return _ValueSource(item=item, blob=blob, records=records)


def _stored_run(tensor: Any, source: _ValueSource) -> tuple[int, memoryview] | None:
    """Where in its data file the raw bytes of ``tensor`` (loaded from the value
    ``source``) lie as they are, with those bytes; None where they do not (a zstd
    stream, a view that is not one C-order run of its storage).

    torch.save writes each storage as one uncompressed zip record; the tensor's bytes are
    looked for in the record of its storage's size at its storage offset, and taken only
    where they are equal there, so a wrong guess costs a copy, never a wrong read.
    """
    from ..adapters.tensors import tensor_bytes

    storage = source.item.storage
    if storage.transforms or not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg():
        return None
    want = tensor_bytes(tensor)
    skip = tensor.storage_offset() * tensor.element_size()
    size = tensor.untyped_storage().nbytes()
    view = memoryview(source.blob)
    for lo, n in source.records:
        if n == size and skip + len(want) <= n and view[lo + skip:lo + skip + len(want)] == want:
            return storage.offset + lo + skip, view[lo + skip:lo + skip + len(want)]
    return None


def _read_item(store: Store, info: StorageInfo, fqn: str) -> bytes:
    # Every value is read (and unpickled) when the directory is opened: one too large to
    # hold is refused by key. It made the whole checkpoint unreadable, as "corrupt".
    too_large = (f"DCP key {fqn!r} holds a value of more than {_MAX_VALUE_NBYTES} bytes (the most "
                 "reshard reads into memory for one value); the other keys of the checkpoint load")
    if info.length > _MAX_VALUE_NBYTES:
        raise ValueTooLargeError(f"{too_large} ({info.length} bytes stored)")
    buf = bytearray(info.length)
    store.read_into(info.file, info.offset, memoryview(buf))
    try:
        return untransform(buf, info.transforms, max_nbytes=_MAX_VALUE_NBYTES)
    except _TooLarge:
        raise ValueTooLargeError(f"{too_large} (its zstd stream decodes to more)") from None
    except ValueError as e:
        raise CorruptCheckpointError(f"DCP key {fqn!r} in {info.file}: {e}") from None


def _first_line(e: BaseException) -> str:
    # torch's weights_only refusal starts with a generic line holding terminal escape
    # codes ("\x1b[1m"); the line naming the class that was refused is the useful one.
    lines = [ln.strip() for ln in str(e).strip().splitlines()]
    named = [ln for ln in lines if ln.startswith("WeightsUnpickler error:")]
    text = (named or lines or [type(e).__name__])[0]
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).split(" Please use ")[0]
    # It quotes names from the checkpoint's pickle: their control characters are shown
    # escaped, never sent to the terminal that prints this error.
    return printable(text[:300])
