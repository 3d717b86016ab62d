"""safetensors files, read and written without the safetensors package and without pickle.

The format (huggingface/safetensors README): an 8-byte little-endian header length N,
N bytes of UTF-8 JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets relative to the byte after the header) plus an optional
``"__metadata__"`` str->str map, then the raw C-order little-endian tensor bytes.

Reading builds an in-memory reshard manifest (one identity chunk per tensor, frames
without checksums) so reshard's read path serves it piece by piece. Writing streams each
tensor in pieces: the header is computed first from shapes alone, then bytes follow.
Non-tensor values travel as JSON under ``__metadata__["reshard.values"]`` (single file)
or ``metadata["reshard.values"]`` of ``model.safetensors.index.json`` (sharded).
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from ..core.layout import Box, full_box
from ..errors import (
    CheckpointError,
    CorruptCheckpointError,
    StorageError,
    UnsupportedFormatError,
    UnsupportedValueError,
)
from ..format.dtypes import ITEMSIZE
from ..format.manifest import IDENTITY, Chunk, Entry, Frame, Manifest, TensorEntry, ValueEntry
from ..format.values import JsonValue, decode_value
from ..storage.base import Store

VALUES_KEY = "reshard.values"
INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER_NBYTES = 100 * 1024 * 1024

TO_SAFETENSORS: dict[str, str] = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "int32": "I32", "uint32": "U32", "int64": "I64", "uint64": "U64", "float16": "F16",
    "bfloat16": "BF16", "float32": "F32", "float64": "F64", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
FROM_SAFETENSORS: dict[str, str] = {v: k for k, v in TO_SAFETENSORS.items()}


# Reading


def read_header(store: Store, name: str) -> tuple[dict[str, object], int]:
    """The parsed JSON header of ``name`` and the file offset where its data starts."""
    where = os.path.join(store.location, name)
    size = store.size(name)
    if size < 8:
        raise CorruptCheckpointError(f"{where}: {size} bytes is too short for a safetensors file")
    head = bytearray(8)
    store.read_into(name, 0, memoryview(head))
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_NBYTES or 8 + n > size:
        raise CorruptCheckpointError(f"{where}: header length {n} does not fit the {size}-byte file")
    raw = bytearray(n)
    store.read_into(name, 8, memoryview(raw))
    header = _json(raw, f"{where}: header")
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{where}: header is not a JSON object")
    return header, 8 + n


def _json(data: bytes | bytearray | str, what: str) -> object:
    """The JSON document in ``data``; CorruptCheckpointError naming ``what`` when it is not
    JSON, nests too deeply for the parser, or holds NaN or Infinity (not JSON)."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptCheckpointError(f"{what} is not JSON ({type(e).__name__}: {str(e)[:200]})") from None


def _refuse_constant(word: str) -> None:
    raise ValueError(f"{word} is not allowed")


def safetensors_manifest(
    store: Store, names: list[str], *, frame_raw_nbytes: int,
    values: Sequence[ValueEntry] = (), values_from: str = "",
) -> Manifest:
    """An in-memory manifest over the safetensors files ``names`` of ``store``, plus
    ``values`` (those of an index file, ``values_from``)."""
    entries: list[Entry] = []
    # Every name once, tensors and values alike: a value named like a tensor made convert
    # write a manifest with a duplicate key, which no reader accepts.
    seen: dict[str, str] = {}

    def claim(key: str, where: str, what: str) -> None:
        if key in seen:
            raise CorruptCheckpointError(
                f"{where}: {what} {key!r} is named twice (also a {seen[key]})"
            )
        seen[key] = f"{what} in {where}"

    for name in names:
        header, data_start = read_header(store, name)
        where = os.path.join(store.location, name)
        data_nbytes = store.size(name) - data_start
        for key, spec in header.items():
            if key == "__metadata__":
                for v in _values_from_metadata(spec, where):
                    claim(str(v.key[0]), where, "value")
                    entries.append(v)
                continue
            claim(key, where, "tensor")
            entries.append(_tensor_entry(key, spec, name, data_start, data_nbytes, where,
                                         frame_raw_nbytes))
    for v in values:
        claim(str(v.key[0]), values_from, "value")
        entries.append(v)
    return Manifest(save_id=f"safetensors-{uuid.uuid4().hex[:12]}", world_size=1,
                    created_unix_s=time.time(), library_version="safetensors",
                    entries=tuple(entries))


def _tensor_entry(
    key: str, spec: object, file: str, data_start: int, data_nbytes: int, where: str,
    frame_raw_nbytes: int,
) -> TensorEntry:
    what = f"{where}: tensor {key!r}"
    if not isinstance(spec, dict):
        raise CorruptCheckpointError(f"{what}: expected an object")
    name = spec.get("dtype")
    dtype = FROM_SAFETENSORS.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise UnsupportedFormatError(f"{what}: dtype {spec.get('dtype')!r} is not supported")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:  # type: ignore[arg-type]
        raise CorruptCheckpointError(f"{what}: bad shape {shape!r} or data_offsets {offsets!r}")
    begin, end = offsets  # type: ignore[misc]
    nbytes = math.prod(shape) * ITEMSIZE[dtype]  # type: ignore[arg-type]
    if end - begin != nbytes or not 0 <= begin <= end <= data_nbytes:
        raise CorruptCheckpointError(
            f"{what}: data_offsets [{begin}, {end}] do not hold {shape} x {dtype} ({nbytes} bytes) "
            f"inside the {data_nbytes} data bytes"
        )
    box = full_box(tuple(shape))  # type: ignore[arg-type]
    chunks: tuple[Chunk, ...] = ()
    if nbytes:
        frames = tuple(Frame(nbytes=min(frame_raw_nbytes, nbytes - s), crc32c=None)
                       for s in range(0, nbytes, frame_raw_nbytes))
        chunks = (Chunk(box=box, file=file, offset=data_start + begin, nbytes=nbytes,
                        raw_nbytes=nbytes, codec=IDENTITY, frame_raw_nbytes=frame_raw_nbytes,
                        frames=frames),)
    return TensorEntry(key=(key,), dtype=dtype, shape=box.sizes, container="torch", chunks=chunks)


def _int_list(value: object) -> bool:
    return isinstance(value, list) and len(value) <= 64 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**48 for v in value
    )


def _values_from_metadata(meta: object, where: str) -> list[ValueEntry]:
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{where}: __metadata__ is not an object")
    text = meta.get(VALUES_KEY)
    if text is None:
        return []
    if not isinstance(text, str):
        raise CorruptCheckpointError(f"{where}: __metadata__[{VALUES_KEY!r}] is not a string")
    doc = _json(text, f"{where}: __metadata__[{VALUES_KEY!r}]")
    return values_from_json(doc, f"{where}: __metadata__[{VALUES_KEY!r}]")


def values_from_json(doc: object, where: str) -> list[ValueEntry]:
    """Value entries from ``{"dotted.key": {"type": ..., "value": ...}}``."""
    if not isinstance(doc, dict):
        raise CorruptCheckpointError(f"{where}: expected an object of values")
    out = []
    for key, value in doc.items():
        decode_value(value, f"{where}.{key}")
        out.append(ValueEntry(key=(key,), value=value))
    return out


def index_files(store: Store, index_name: str) -> tuple[list[str], list[ValueEntry]]:
    """The shard files an HF ``*.safetensors.index.json`` names, and its reshard values."""
    where = os.path.join(store.location, index_name)
    doc = _json(store.read_bytes(index_name), where)
    if not isinstance(doc, dict):
        raise CorruptCheckpointError(f"{where}: no weight_map of tensor name -> file")
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpointError(f"{where}: no weight_map of tensor name -> file")
    files = list(dict.fromkeys(weight_map.values()))
    for f in files:
        if "/" in f or "\\" in f or f.startswith(".") or not f:
            raise CorruptCheckpointError(f"{where}: refusing shard file name {f!r}")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{where}: metadata is not an object")
    values = values_from_json(meta.get(VALUES_KEY, {}), f"{where}: metadata")
    return files, values


# Writing


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardPlan:
    """One output file: its name and the tensor entries it holds, in data order."""

    name: str
    entries: tuple[TensorEntry, ...]


def plan_shards(
    entries: list[TensorEntry], *, stem: str, max_shard_nbytes: int | None
) -> list[ShardPlan]:
    """Group tensors into files of at most ``max_shard_nbytes`` (a larger tensor gets its own
    file), in order; one file ``<stem>.safetensors`` when they fit, as Hugging Face does."""
    groups: list[list[TensorEntry]] = [[]]
    size = 0
    for e in entries:
        if max_shard_nbytes is not None and groups[-1] and size + e.nbytes > max_shard_nbytes:
            groups.append([])
            size = 0
        groups[-1].append(e)
        size += e.nbytes
    if len(groups) == 1:
        return [ShardPlan(name=f"{stem}.safetensors", entries=tuple(groups[0]))]
    n = len(groups)
    return [ShardPlan(name=f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors", entries=tuple(g))
            for i, g in enumerate(groups)]


def encode_header(
    entries: tuple[TensorEntry, ...], metadata: dict[str, str]
) -> tuple[bytes, list[TensorEntry]]:
    """The 8-byte length + JSON header for ``entries``, and the order their bytes follow.

    Larger element types come first so every tensor starts aligned to its element size;
    the header is padded with spaces to a multiple of 8 bytes (as safetensors does).
    """
    order = sorted(entries, key=lambda e: -e.itemsize)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    pos = 0
    for e in order:
        name = ".".join(str(p) for p in e.key)
        if e.dtype not in TO_SAFETENSORS:
            raise UnsupportedValueError(f"key {name!r}: dtype {e.dtype} has no safetensors name")
        header[name] = {"dtype": TO_SAFETENSORS[e.dtype], "shape": list(e.shape),
                        "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def pieces(shape: tuple[int, ...], box: Box, max_elements: int) -> Iterator[Box]:
    """Sub-boxes of ``box`` whose bytes, in order, are ``box``'s C-order bytes; each spans at
    most ``max_elements`` (one element per row at least)."""
    from ..core.layout import split_for_span

    local = Box(tuple(0 for _ in box.sizes), box.sizes)
    for sub in split_for_span(box.sizes, local, max(1, max_elements)):
        yield sub.shifted(box.offsets)


def write_file(
    path: str, plan: ShardPlan, metadata: dict[str, str],
    read: Callable[[TensorEntry, Box], memoryview], piece_nbytes: Callable[[TensorEntry], int],
    progress: Callable[[int], None],
) -> None:
    """Write one safetensors file, streaming each tensor piece by piece; atomic rename."""
    head, order = encode_header(plan.entries, metadata)
    with _atomic_file(path) as f:
        f.write(head)
        for e in order:
            if e.nbytes == 0:
                continue
            for box in pieces(e.shape, full_box(e.shape), piece_nbytes(e) // e.itemsize):
                data = read(e, box)
                f.write(data)
                progress(len(data))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all (a crash never leaves half an index)."""
    with _atomic_file(path) as f:
        f.write(data)


@contextmanager
def _atomic_file(path: str) -> Iterator[BinaryIO]:
    """A file written to a temporary name, fsynced and renamed over ``path`` when the
    block ends, or removed if it raises."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, CheckpointError):
            # Named by the file asked for: the message named the temporary file, or
            # (a folder named like the output) said only "Is a directory".
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def index_document(plans: list[ShardPlan], values: dict[str, dict[str, JsonValue]]) -> bytes:
    """The Hugging Face ``model.safetensors.index.json`` for ``plans``."""
    meta: dict[str, JsonValue] = {"total_size": sum(e.nbytes for p in plans for e in p.entries)}
    if values:
        meta[VALUES_KEY] = dict(values)
    weight_map = {".".join(str(k) for k in e.key): p.name for p in plans for e in p.entries}
    return json.dumps({"metadata": meta, "weight_map": weight_map}, indent=2).encode("utf-8")
