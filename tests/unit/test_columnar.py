"""The columnar parse of chunk arrays (format.columnar) is only a fast path: with it and
without it, Manifest.from_json gives the same manifest or the same error."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard import fast_json
from reshard.core.layout import Box
from reshard.errors import CheckpointError
from reshard.format import columnar
from reshard.format import manifest as manifest_module
from reshard.format.chunks import checked_columns
from reshard.format.columnar import split_chunk_arrays
from reshard.format.dtypes import ITEMSIZE
from reshard.format.manifest import (
    CHECKSUM_FIELD,
    IDENTITY,
    Chunk,
    Frame,
    Manifest,
    TensorEntry,
    ValueEntry,
    json_document,
)
from reshard.format.values import encode_value

from .test_manifest import mutated_tensor_manifests, tensor_entries


@pytest.fixture(autouse=True)
def _every_array_columnar(monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifests here are small: cut out every chunk array, however short."""
    monkeypatch.setattr(columnar, "MIN_CHUNKS", 1)


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _outcome(data: bytes, *, loads: object = None) -> Manifest | str:
    try:
        return Manifest.from_json(data, loads=loads)  # type: ignore[arg-type]
    except CheckpointError as e:
        return f"{type(e).__name__}: {e}"


def _generic(data: bytes, *, loads: object = None) -> Manifest | str:
    with mock.patch.object(manifest_module, "split_chunk_arrays", lambda *a: None):
        return _outcome(data, loads=loads)


def _same_both_ways(data: bytes) -> Manifest | str:
    for loads in (None, fast_json.loads):
        fast, slow = _outcome(data, loads=loads), _generic(data, loads=loads)
        assert fast == slow
        if isinstance(fast, Manifest):
            assert isinstance(slow, Manifest)
            for a, b in zip(fast.entries, slow.entries):
                if isinstance(a, TensorEntry):
                    assert type(a.chunks) is type(b.chunks)
                    assert getattr(a.chunks, "_columns", None) == getattr(b.chunks, "_columns", None)
    return fast


def _grid_manifest(*, n_frames: tuple[int, ...] = (1,), value: object = 5) -> Manifest:
    """Two tensors on a 2 x 3 grid (frame counts cycling through ``n_frames``) and a value."""
    entries: list[object] = []
    for t, shape in enumerate([(4, 6), (2, 3)]):
        chunks, offset = [], 0
        rows, cols = shape[0] // 2, shape[1] // 3
        for k, (r, c) in enumerate((r, c) for r in range(2) for c in range(3)):
            raw = rows * cols * 4
            count = min(n_frames[k % len(n_frames)], raw)
            frame_raw = -(-raw // count)
            frames = tuple(Frame(nbytes=min(frame_raw, raw - s), crc32c=(s * 2654435761 + k) % 2**32)
                           for s in range(0, raw, frame_raw))
            chunks.append(Chunk(box=Box((r * rows, c * cols), (rows, cols)), file=f"data/s.{k % 2}.bin",
                                offset=offset, nbytes=raw, raw_nbytes=raw, codec=IDENTITY,
                                frame_raw_nbytes=frame_raw, frames=frames))
            offset += raw
        entries.append(TensorEntry(key=(f"t{t}",), dtype="float32", shape=shape, container="torch",
                                   chunks=tuple(chunks)))
    entries.append(ValueEntry(key=("v",), value=encode_value(value, "v")))
    return Manifest(save_id="s", world_size=2, created_unix_s=0.0, library_version="x",
                    entries=tuple(entries))  # type: ignore[arg-type]


@pytest.mark.parametrize("n_frames", [(1,), (2,), (1, 3), (4, 1, 2)])
def test_reshards_own_manifests_take_the_fast_path_and_parse_the_same(n_frames: tuple[int, ...]) -> None:
    m = _grid_manifest(n_frames=n_frames)
    data = m.to_json()
    split = split_chunk_arrays(data, json_document)
    assert split is not None and len(split[1]) == 2
    fast = manifest_module._from_columnar_json(data, json_document)
    assert fast == m
    assert _same_both_ways(data) == m


def test_the_columns_are_those_of_the_whole_entry_checks() -> None:
    m = _grid_manifest(n_frames=(1, 3))
    data = m.to_json()
    doc = json.loads(data)
    skeleton, arrays = split_chunk_arrays(data, json_document)  # type: ignore[misc]
    for entry, array in zip(doc["entries"], arrays.values()):
        shape = tuple(entry["shape"])
        assert array.items() == entry["chunks"]
        expected = checked_columns(entry["chunks"], shape, 4, 2, [True])
        assert expected is not None
        assert array.columns(shape, 4, 2, [True]) == expected
    assert json.loads(skeleton)["entries"][2] == doc["entries"][2]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=mutated_tensor_manifests())
def test_mutated_chunks_give_the_same_outcome(data: bytes) -> None:
    """Chunk-level mutations (bumped, hostile, missing, duplicated, dropped fields and
    chunks) of canonical text: the same manifest or the same error either way."""
    _same_both_ways(_canonical(json.loads(data)))


@st.composite
def text_mutations(draw: st.DrawFn) -> bytes:
    """A valid canonical manifest (no checksum: any edit would fail it) with up to three
    edits of its text inside the chunk arrays."""
    files = ["data/s.0.bin", "data/s.1.bin"]
    entry = draw(tensor_entries(("t",), files, min_dim=1))
    m = Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x", entries=(entry,))
    doc = json.loads(m.to_json())
    doc.pop(CHECKSUM_FIELD)
    text = bytearray(_canonical(doc))
    lo = text.find(b'"chunks":[') + 10
    hi = text.find(b'],"container"')
    for _ in range(draw(st.integers(0, 3))):
        if hi <= lo:
            break
        at = draw(st.integers(lo, hi - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        byte = draw(st.sampled_from(list(b'0123456789-. e,[]{}":#x')))
        if op == "set":
            text[at] = byte
        elif op == "insert":
            text[at:at] = bytes([byte])
            hi += 1
        else:
            del text[at]
            hi -= 1
    return bytes(text)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=text_mutations())
def test_edited_chunk_text_gives_the_same_outcome(data: bytes) -> None:
    """Leading zeros, signs, fractions, spaces, broken brackets and quotes: whatever the
    edit, the same manifest or the same error either way."""
    _same_both_ways(data)


@pytest.mark.parametrize("old,new", [
    (b'"offset":0,', b'"offset":00,'),  # a leading zero: not JSON
    (b'"offset":0,', b'"offset":-0,'),
    (b'"offset":0,', b'"offset":0.0,'),
    (b'"offset":0,', b'"offset":9999999999999999999,'),  # 19 digits, beyond 2**62
    (b'"offset":0,', b'"offset":999999999999999999,'),  # 18 digits, valid
    (b'"offset":0,', b'"offset": 0,'),
    (b'"nbytes":', b'"nbytes":1'),
    (b'"sizes":[2,2]', b'"sizes":[2,2,1]'),
    (b'"frames":[[', b'"frames":[[1],['),
])
def test_single_edits_give_the_same_outcome(old: bytes, new: bytes) -> None:
    m = _grid_manifest(n_frames=(1, 2))
    doc = json.loads(m.to_json())
    doc.pop(CHECKSUM_FIELD)
    data = _canonical(doc)
    assert old in data
    edited = data.replace(old, new, 1)
    assert edited != data
    outcome = _same_both_ways(edited)
    # A space and "-0" are valid JSON for 0, and an offset of 18 digits is in bounds.
    valid = (b'"offset": 0,', b'"offset":-0,', b'"offset":999999999999999999,')
    assert isinstance(outcome, str) == (new not in valid)


def test_a_checksum_that_fails_goes_the_ordinary_way() -> None:
    m = _grid_manifest()
    data = bytearray(m.to_json())
    at = data.find(b'"offset":') + 9
    data[at:at + 1] = b"7" if data[at:at + 1] != b"7" else b"8"
    assert manifest_module._from_columnar_json(bytes(data), json_document) is None
    assert "CRC-32" in _same_both_ways(bytes(data))  # type: ignore[operator]


def test_chunk_like_text_outside_tensor_entries_keeps_its_meaning() -> None:
    """A plain value that holds a chunk array's text, or a tensor entry whose chunks key
    comes twice: the markers are not all taken as tensor chunks, so the ordinary parse
    decides."""
    m = _grid_manifest()
    doc = json.loads(m.to_json())
    doc.pop(CHECKSUM_FIELD)
    chunk = doc["entries"][1]["chunks"][0]
    doc["entries"][2]["value"] = {"chunks": [chunk], "z": 1}
    data = _canonical(doc)
    assert len(split_chunk_arrays(data, json_document)[1]) == 3  # type: ignore[index]
    assert manifest_module._from_columnar_json(data, json_document) is None
    _same_both_ways(data)
    # A second "chunks" key, which JSON parsers let win.
    text = _canonical(json.loads(m.to_json()))
    second = text.replace(b'],"container":"torch"', b'],"chunks":[],"container":"torch"', 1)
    assert second != text
    outcome = _same_both_ways(second)
    assert isinstance(outcome, str)


def test_entries_whose_columns_are_refused_are_checked_the_ordinary_way() -> None:
    """A tiling that is not a grid is valid: the columns refuse it, the per-chunk checks
    accept it, and the rest of the manifest still goes the fast way."""
    chunks = []
    for box in [Box((0, 0), (2, 4)), Box((2, 0), (2, 1)), Box((2, 1), (2, 3))]:
        raw = box.numel * 8
        chunks.append(Chunk(box=box, file="data/a.bin", offset=0, nbytes=raw, raw_nbytes=raw,
                            codec=IDENTITY, frame_raw_nbytes=raw, frames=(Frame(nbytes=raw, crc32c=1),)))
    odd = TensorEntry(key=("odd",), dtype="float64", shape=(4, 4), container="torch", chunks=tuple(chunks))
    m = _grid_manifest()
    m = Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x",
                 entries=(odd, *m.entries))
    data = m.to_json()
    fast = manifest_module._from_columnar_json(data, json_document)
    assert fast == m
    assert isinstance(fast.entries[0].chunks, tuple)  # type: ignore[union-attr]
    assert _same_both_ways(data) == m


def test_every_itemsize() -> None:
    for dtype in sorted(ITEMSIZE):
        m = _grid_manifest()
        e = m.entries[0]
        assert isinstance(e, TensorEntry)
        size = ITEMSIZE[dtype]
        chunks = tuple(Chunk(box=c.box, file=c.file, offset=c.offset, nbytes=c.box.numel * size,
                             raw_nbytes=c.box.numel * size, codec=IDENTITY,
                             frame_raw_nbytes=c.box.numel * size,
                             frames=(Frame(nbytes=c.box.numel * size, crc32c=3),)) for c in e.chunks)
        m2 = Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x", entries=(
            TensorEntry(key=e.key, dtype=dtype, shape=e.shape, container="torch", chunks=chunks),))
        assert manifest_module._from_columnar_json(m2.to_json(), json_document) == m2


def test_short_arrays_stay_with_the_json_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _grid_manifest().to_json()  # two arrays of 6 chunks
    monkeypatch.setattr(columnar, "MIN_CHUNKS", 7)
    assert split_chunk_arrays(data, json_document) is None
    monkeypatch.setattr(columnar, "MIN_CHUNKS", 6)
    split = split_chunk_arrays(data, json_document)
    assert split is not None and len(split[1]) == 2
    assert _same_both_ways(data) == _grid_manifest()
