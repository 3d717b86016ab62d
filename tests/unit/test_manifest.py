"""The manifest round-trips exactly, and the parser refuses what the format forbids."""

from __future__ import annotations

import copy
import json
import math
import zlib
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core.layout import Box
from reshard.errors import CheckpointError, CorruptCheckpointError, UnsupportedFormatError
from reshard.format import chunks as chunks_module
from reshard.format import manifest as manifest_module
from reshard.format.chunks import checked_columns
from reshard.format.dtypes import ITEMSIZE
from reshard.format.manifest import (
    CHECKSUM_FIELD,
    IDENTITY,
    Chunk,
    CodecSpec,
    Frame,
    Manifest,
    TensorEntry,
    ValueEntry,
    dotted,
)
from reshard.format.values import encode_value

from ._strategies import grid_tilings, shapes

key_parts = st.text(alphabet="abcxyz_.0123", min_size=1, max_size=5) | st.integers(0, 9)
plain_values = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
                | st.binary(max_size=10) | st.sampled_from([{}, [], ()]))


@st.composite
def tensor_entries(draw: st.DrawFn, key: tuple, files: list[str], *, min_dim: int = 0) -> TensorEntry:
    dtype = draw(st.sampled_from(sorted(ITEMSIZE)))
    shape = draw(shapes(max_dim=5, min_dim=min_dim))
    frame_raw = draw(st.integers(1, 64))
    codec = draw(st.sampled_from([IDENTITY, CodecSpec(name="zstd", configuration=(("level", 3),)),
                                  CodecSpec(name="mine", configuration=(("a", True), ("b", "x")))]))
    chunks = []
    offset = 0
    for box in draw(grid_tilings(shape)):
        raw = box.numel * ITEMSIZE[dtype]
        frames = []
        for s in range(0, raw, frame_raw):
            n = min(frame_raw, raw - s)
            frames.append(Frame(nbytes=n if codec == IDENTITY else draw(st.integers(1, 99)),
                                crc32c=draw(st.integers(0, 2**32 - 1))))
        nbytes = sum(f.nbytes for f in frames)
        chunks.append(Chunk(box=box, file=draw(st.sampled_from(files)), offset=offset, nbytes=nbytes,
                            raw_nbytes=raw, codec=codec, frame_raw_nbytes=frame_raw, frames=tuple(frames)))
        offset += nbytes
    container = draw(st.sampled_from(["torch", "numpy", "numpy_scalar"]))
    return TensorEntry(key=key, dtype=dtype, shape=shape, container=container, chunks=tuple(chunks))


@st.composite
def manifests(draw: st.DrawFn, *, parts: st.SearchStrategy[str | int] = key_parts) -> Manifest:
    keys = draw(st.lists(st.lists(parts, min_size=1, max_size=3).map(tuple), max_size=5,
                         unique_by=dotted))
    files = [f"data/s.{i}.bin" for i in range(draw(st.integers(1, 3)))]
    entries = []
    for k in keys:
        if draw(st.booleans()):
            entries.append(ValueEntry(key=k, value=encode_value(draw(plain_values), dotted(k))))
        else:
            entries.append(draw(tensor_entries(k, files)))
    return Manifest(save_id=draw(st.text(max_size=8)), world_size=draw(st.integers(1, 2**20)),
                    created_unix_s=draw(st.floats(0, 4e9)), library_version="0.1.0", entries=tuple(entries))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(m=manifests())
def test_round_trip(m: Manifest) -> None:
    data = m.to_json()
    back = Manifest.from_json(data)
    assert back == m
    assert back.to_json() == data
    doc = json.loads(data)
    assert isinstance(doc[CHECKSUM_FIELD], int)
    # Values decode to what was stored (NaN compares unequal to itself).
    for a, b in zip(m.entries, back.entries):
        if isinstance(a, ValueEntry):
            va, vb = a.decoded(), b.decoded()  # type: ignore[union-attr]
            assert va == vb or (isinstance(va, float) and math.isnan(va) and math.isnan(vb))


def _base() -> dict:
    return json.loads(Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x", entries=(
        TensorEntry(key=("t",), dtype="int8", shape=(4,), container="torch", chunks=(
            Chunk(box=__import__("reshard.core.layout", fromlist=["Box"]).Box((0,), (4,)), file="data/a.bin",
                  offset=0, nbytes=4, raw_nbytes=4, codec=IDENTITY, frame_raw_nbytes=2,
                  frames=(Frame(nbytes=2, crc32c=1), Frame(nbytes=2, crc32c=2))),)),
    )).to_json())


def _parse(doc: dict) -> Manifest:
    doc.pop(CHECKSUM_FIELD, None)
    return Manifest.from_json(json.dumps(doc).encode())


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(format_version=[2, 0]), "upgrade"),
    (lambda d: d["entries"][0].update(dtype="float128"), "unknown dtype"),
    (lambda d: d["entries"][0].update(shape=[5]), "tile"),
    (lambda d: d["entries"][0]["chunks"][0].update(offsets=[-1]), "out of range"),
    (lambda d: d["entries"][0]["chunks"][0].update(offset=2**62), "beyond"),
    (lambda d: d["entries"][0]["chunks"][0].update(
        frames=[[3, 1]], frame_raw_nbytes=4, nbytes=3), "identity"),
    (lambda d: d["entries"][0]["chunks"][0].update(frames=[[2, 1]]), "frames"),
    (lambda d: d["entries"][0]["chunks"][0].update(nbytes=5), "nbytes"),
    (lambda d: d["entries"][0]["chunks"][0].update(raw_nbytes=8), "raw_nbytes"),
    (lambda d: d["entries"][0]["chunks"][0].update(file=1), "file"),
    (lambda d: d["entries"][0]["chunks"][0].update(codec=-1), "codec"),
    (lambda d: d["entries"][0]["chunks"][0]["frames"][0].__setitem__(1, 2**32), "out of range"),
    (lambda d: d["entries"].append(d["entries"][0]), "duplicate"),
    (lambda d: d["entries"][0]["chunks"].append(d["entries"][0]["chunks"][0]), "overlap|duplicate"),
    (lambda d: d.update(files=["data/../x"]), "inside data"),
    (lambda d: d.update(created_unix_s=10**400), "number"),
    (lambda d: d["codecs"][0].update(name="identity", configuration={"x": 1}) or
        d["entries"][0]["chunks"][0].update(frames=[[3, 1]], frame_raw_nbytes=4, nbytes=3), "identity"),
])
def test_parser_refuses(edit, match) -> None:  # type: ignore[no-untyped-def]
    doc = _base()
    _parse(dict(doc))  # the base is valid
    edit(doc)
    with pytest.raises(CheckpointError, match=match) as err:
        _parse(doc)
    assert isinstance(err.value, (CorruptCheckpointError, UnsupportedFormatError))
    assert "manifest.json" in str(err.value)


def test_checksum_catches_a_changed_value() -> None:
    m = Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x",
                 entries=(ValueEntry(key=("step",), value={"type": "int", "value": 1000}),))
    data = m.to_json()
    assert Manifest.from_json(data) == m
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        Manifest.from_json(data.replace(b"1000", b"1008"))
    # Re-indenting keeps it valid; without the field (another writer) it is not checked.
    assert Manifest.from_json(json.dumps(json.loads(data), indent=2).encode()) == m
    doc = json.loads(data)
    del doc[CHECKSUM_FIELD]
    assert Manifest.from_json(json.dumps(doc).encode()) == m


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(m=manifests(parts=st.text(min_size=1, max_size=4) | st.integers()))
def test_written_manifest_is_the_canonical_text_with_the_checksum_last(m: Manifest) -> None:
    """What a 1.0 reader checks (the CRC of the canonical JSON) holds, and the file is that
    very text, so the CRC also covers the file's bytes (non-ASCII keys, floats, big ints)."""
    data = m.to_json()
    doc = json.loads(data)
    crc = doc.pop(CHECKSUM_FIELD)
    body = _canonical(doc)
    assert crc == zlib.crc32(body)
    assert data == body[:-1] + b',"manifest_crc32":%d}' % crc
    assert Manifest.from_json(data) == m


def test_manifests_in_the_earlier_layout_still_verify() -> None:
    """reshard 0.1 wrote members in insertion order with the checksum among them; the CRC
    is then checked over the canonical text rebuilt from the parsed document."""
    m = Manifest(save_id="s", world_size=1, created_unix_s=12.5, library_version="x", entries=(
        ValueEntry(key=("step",), value={"type": "int", "value": 1000}),
        *Manifest.from_json(json.dumps(_base()).encode()).entries,
    ))
    doc = json.loads(m.to_json())
    crc = doc.pop(CHECKSUM_FIELD)
    earlier = {k: doc[k] for k in ("format", "format_version", "save_id", "world_size",
                                   "created_unix_s", "library_version", "files", "codecs", "entries")}
    earlier[CHECKSUM_FIELD] = crc
    data = json.dumps(earlier, separators=(",", ":")).encode()
    assert Manifest.from_json(data) == m
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        Manifest.from_json(data.replace(b'"value":1000', b'"value":1008'))
    # Damage after the checksum field is written last: both checks fail.
    data = m.to_json()
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        Manifest.from_json(data.replace(b'"value":1000', b'"value":1008'))


HOSTILE_VALUES = [-1, 0, 1, 2, 3, 2**30 + 1, 2**32, 2**48 + 1, 2**62 + 1, True, 1.0, "1", None, [], [1],
                  [0, 0], [[1, 2]], {}]


@st.composite
def mutated_tensor_manifests(draw: st.DrawFn) -> bytes:
    """A valid one-tensor manifest with up to three chunk-level mutations."""
    files = ["data/s.0.bin", "data/s.1.bin"]
    entry = draw(tensor_entries(("t",), files, min_dim=1))
    doc = json.loads(Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x",
                              entries=(entry,)).to_json())
    doc.pop(CHECKSUM_FIELD)
    chunks = doc["entries"][0]["chunks"]
    for _ in range(draw(st.integers(0, 3))):
        if not chunks:
            break
        i = draw(st.integers(0, len(chunks) - 1))
        chunk = chunks[i]
        op = draw(st.sampled_from(["bump", "hostile", "delete", "duplicate", "drop", "copy", "nested"]))
        field = draw(st.sampled_from(sorted(chunk)))
        if op == "bump" and type(chunk.get(field)) is int:
            chunk[field] += draw(st.sampled_from([-1, 1, 7, -chunk[field]]))
        elif op == "hostile":
            chunk[field] = copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES)))
        elif op == "delete":
            chunk.pop(field, None)
        elif op == "duplicate":
            chunks.insert(i, copy.deepcopy(chunk))
        elif op == "drop":
            chunks.pop(i)
        elif op == "copy":
            other = chunks[draw(st.integers(0, len(chunks) - 1))]
            chunk[field] = copy.deepcopy(other.get(field))
        elif op == "nested" and isinstance(chunk.get(field), list) and chunk[field]:
            j = draw(st.integers(0, len(chunk[field]) - 1))
            inner = chunk[field][j]
            if isinstance(inner, list) and inner:
                inner[draw(st.integers(0, len(inner) - 1))] = draw(st.sampled_from(HOSTILE_VALUES[:9]))
            else:
                chunk[field][j] = draw(st.sampled_from(HOSTILE_VALUES))
    return json.dumps(doc).encode()


def _outcome(data: bytes) -> Manifest | str:
    try:
        return Manifest.from_json(data)
    except CheckpointError as e:
        return f"{type(e).__name__}: {e}"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=mutated_tensor_manifests())
def test_whole_entry_chunk_checks_agree_with_the_per_chunk_checks(data: bytes) -> None:
    """The fast path (chunks.checked_columns) never accepts what the per-chunk checks
    refuse, and builds the same chunks: parsing with and without it gives the same result
    or the same error, with its JSON path."""
    fast = _outcome(data)
    with mock.patch.object(manifest_module, "checked_columns", lambda *a, **k: None):
        slow = _outcome(data)
    assert fast == slow


@settings(max_examples=600, deadline=None, derandomize=True)
@given(data=mutated_tensor_manifests(), small=st.integers(0, 9))
def test_small_entry_checks_agree_with_the_column_checks(data: bytes, small: int) -> None:
    """Entries of a few chunks are checked in plain loops (chunks._small_columns): on valid
    and mutated chunk lists they accept exactly what the column checks accept and build
    the same columns."""
    doc = json.loads(data)
    e = doc["entries"][0]
    shape = e["shape"]
    if type(shape) is not list or not all(type(d) is int for d in shape):
        return
    identity = [c["name"] == "identity" for c in doc["codecs"]]
    args = (e["chunks"], tuple(shape), ITEMSIZE[e["dtype"]], len(doc["files"]), identity)
    with mock.patch.object(chunks_module, "SMALL_ENTRY_CHUNKS", 0):
        columns = checked_columns(*args)
    with mock.patch.object(chunks_module, "SMALL_ENTRY_CHUNKS", small):
        assert checked_columns(*args) == columns
    if e["chunks"]:
        assert chunks_module._small_columns(*args) == columns


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.data())
def test_whole_entry_checks_take_every_grid_tiling(data: st.DataObject) -> None:
    entry = data.draw(tensor_entries(("t",), ["data/s.0.bin"]))
    doc = json.loads(Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x",
                              entries=(entry,)).to_json())
    e = doc["entries"][0]
    identity = [c["name"] == "identity" for c in doc["codecs"]]
    columns = checked_columns(e["chunks"], tuple(e["shape"]), ITEMSIZE[e["dtype"]], 1, identity)
    assert (columns is not None) == bool(entry.chunks)


def test_zero_dim_tensor_and_a_lone_frame() -> None:
    m = Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x", entries=(
        TensorEntry(key=("x",), dtype="float64", shape=(), container="torch", chunks=(
            Chunk(box=Box((), ()), file="data/a.bin", offset=3, nbytes=8, raw_nbytes=8,
                  codec=IDENTITY, frame_raw_nbytes=8, frames=(Frame(nbytes=8, crc32c=7),)),)),))
    data = m.to_json()
    assert Manifest.from_json(data) == m
    doc = json.loads(data)
    e = doc["entries"][0]
    assert checked_columns(e["chunks"], (), 8, 1, [True]) is not None
    e["chunks"].append(copy.deepcopy(e["chunks"][0]))
    doc.pop(CHECKSUM_FIELD)
    with pytest.raises(CorruptCheckpointError, match=r"entries\[0\]\.chunks"):
        Manifest.from_json(json.dumps(doc).encode())
