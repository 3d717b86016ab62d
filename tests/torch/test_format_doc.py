"""A fresh save's files read by the rules of docs/FORMAT.md alone, without reshard's reader.

The manifest's top-level fields, entry and chunk fields, value types, file names, frame
layout, CRC-32C of every stored frame, ``manifest_crc32`` (both the byte rule and the
canonical rule), column checksum tiles and the planes-zstd frame layout are each checked
against what the page says, so that the page and the writer cannot drift apart silently.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import pytest
import torch
import zstandard

import reshard

TOP = {"format", "format_version", "save_id", "world_size", "created_unix_s", "library_version",
       "files", "codecs", "entries"}
TENSOR = {"key", "kind", "dtype", "shape", "container", "chunks"}
CHUNK = {"offsets", "sizes", "file", "offset", "nbytes", "raw_nbytes", "codec", "frame_raw_nbytes",
         "frames"}
DTYPES = {"bool": 1, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
          "int64": 8, "uint64": 8, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
          "complex64": 8, "complex128": 16, "float8_e4m3fn": 1, "float8_e5m2": 1}
FILE_NAME = re.compile(r"data/(\d{8}T\d{6}-[0-9a-f]{12})\.(\d+)\.bin")
BIG = torch.arange(600 * 512, dtype=torch.float32).reshape(600, 512)  # 1.2 MiB: column crcs


def _state() -> dict[Any, Any]:
    return {
        "big": BIG, "half": torch.arange(5 * 3, dtype=torch.bfloat16).reshape(5, 3),
        "bytes8": torch.arange(10, dtype=torch.uint8), "zero_d": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 4), "np": np.arange(6, dtype=np.int16).reshape(2, 3),
        "np_scalar": np.float64(2.5),
        "v": {"none": None, "t": True, "i": -(2**70), "f": 0.25, "nan": float("nan"),
              "inf": float("-inf"), "s": "é", "b": b"\x00\xff", "d": {}, "l": [], "tu": ()},
        3: {"x": 1},
    }


@pytest.fixture(scope="module", params=["identity", "zstd"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("fmt") / "ckpt"
    reshard.save(_state(), path, codec=request.param)
    return path, json.loads((path / "manifest.json").read_bytes())


def test_top_level_fields(saved: tuple[Path, dict]) -> None:
    path, doc = saved
    assert set(doc) == TOP | {"manifest_crc32"}
    assert doc["format"] == "reshard" and doc["format_version"] == [1, 1]
    assert isinstance(doc["save_id"], str) and doc["world_size"] == 1
    assert isinstance(doc["created_unix_s"], (int, float)) and doc["library_version"] == reshard.__version__
    assert [type(c) for c in doc["codecs"]] == [dict] * len(doc["codecs"])
    for c in doc["codecs"]:
        assert set(c) <= {"name", "configuration"} and isinstance(c["name"], str)
        assert all(isinstance(v, (bool, int, float, str)) for v in c.get("configuration", {}).values())
    # data/<save_id>.<rank>.bin, names as the commit rule describes them, and nothing else in data/.
    assert len(doc["files"]) == 1
    m = FILE_NAME.fullmatch(doc["files"][0])
    assert m and m.group(1) == doc["save_id"] and m.group(2) == "0"
    assert sorted(p.name for p in (path / "data").iterdir()) == [doc["files"][0][5:]]
    assert sorted(p.name for p in path.iterdir()) == ["data", "manifest.json"]


def test_manifest_crc32_both_rules(saved: tuple[Path, dict]) -> None:
    path, doc = saved
    text = (path / "manifest.json").read_bytes()
    head, sep, tail = text.rpartition(b',"manifest_crc32":')
    assert sep and tail == f"{doc['manifest_crc32']}}}".encode()
    assert zlib.crc32(head + b"}") == doc["manifest_crc32"]
    body = {k: v for k, v in doc.items() if k != "manifest_crc32"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical.encode() == head + b"}"  # the file is the canonical text
    assert zlib.crc32(canonical.encode("ascii")) == doc["manifest_crc32"]


def test_entries_in_state_dict_order_with_documented_fields(saved: tuple[Path, dict]) -> None:
    _, doc = saved
    keys = [e["key"] for e in doc["entries"]]
    assert keys == [["big"], ["half"], ["bytes8"], ["zero_d"], ["empty"], ["np"], ["np_scalar"],
                    *[["v", k] for k in _state()["v"]], [3, "x"]]
    kinds = {json.dumps(e["key"]): e for e in doc["entries"]}
    for e in doc["entries"]:
        if e["kind"] == "value":
            assert set(e) == {"key", "kind", "value"}
            continue
        assert set(e) == TENSOR and e["kind"] == "tensor" and e["dtype"] in DTYPES
    containers = {e["key"][0]: e.get("container") for e in doc["entries"] if e["kind"] == "tensor"}
    assert containers == {"big": "torch", "half": "torch", "bytes8": "torch", "zero_d": "torch",
                          "empty": "torch", "np": "numpy", "np_scalar": "numpy_scalar"}
    assert kinds['["zero_d"]']["shape"] == [] and kinds['["empty"]']["chunks"] == []
    assert kinds['["zero_d"]']["chunks"][0]["offsets"] == [] == kinds['["zero_d"]']["chunks"][0]["sizes"]
    values = {e["key"][-1]: e["value"] for e in doc["entries"] if e["kind"] == "value"}
    assert values == {
        "none": {"type": "none"}, "t": {"type": "bool", "value": True},
        "i": {"type": "int", "value": -(2**70)}, "f": {"type": "float", "value": 0.25},
        "nan": {"type": "float", "value": "nan"}, "inf": {"type": "float", "value": "-inf"},
        "s": {"type": "str", "value": "é"},
        "b": {"type": "bytes", "value": base64.b64encode(b"\x00\xff").decode()},
        "d": {"type": "empty", "value": "dict"}, "l": {"type": "empty", "value": "list"},
        "tu": {"type": "empty", "value": "tuple"}, "x": {"type": "int", "value": 1},
    }


def test_chunks_frames_and_bytes(saved: tuple[Path, dict]) -> None:
    """Every chunk's frames lie back to back from ``offset``, carry the CRC-32C of their
    stored bytes, and decode (by the codec table) to the C-order little-endian box."""
    path, doc = saved
    data = (path / doc["files"][0]).read_bytes()
    state = _state()
    ends = []
    for e in doc["entries"]:
        if e["kind"] != "tensor":
            continue
        full = _as_numpy(state[e["key"][0]])
        for c in e["chunks"]:
            assert set(c) in (CHUNK, CHUNK | {"column_crcs"}), set(c)
            box = tuple(slice(o, o + s) for o, s in zip(c["offsets"], c["sizes"]))
            raw_nbytes = math.prod(c["sizes"]) * DTYPES[e["dtype"]]
            assert c["raw_nbytes"] == raw_nbytes
            assert len(c["frames"]) == math.ceil(raw_nbytes / c["frame_raw_nbytes"])
            assert c["nbytes"] == sum(f[0] for f in c["frames"])
            codec = doc["codecs"][c["codec"]]
            raw, at = bytearray(), c["offset"]
            for i, (stored, crc) in enumerate(c["frames"]):
                frame = data[at:at + stored]
                assert crc32c.crc32c(frame) == crc
                want = min(c["frame_raw_nbytes"], raw_nbytes - i * c["frame_raw_nbytes"])
                raw += _decode(codec, frame, want)
                at += stored
            ends.append((c["offset"], at))
            want_raw = np.ascontiguousarray(full[box]).astype(full.dtype.newbyteorder("<"))
            assert bytes(raw) == want_raw.tobytes()
            if "column_crcs" in c:
                _check_column_crcs(c, e["shape"], full[box], parts=2)
    # No header, no padding: the chunks' stored bytes are the whole file.
    ends.sort()
    assert ends[0][0] == 0 and ends[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))


def test_column_crcs_where_documented(saved: tuple[Path, dict]) -> None:
    """Only raw chunks over 1 MiB of 2+ dims whose columns cross a cut carry them."""
    _, doc = saved
    have = {e["key"][0] for e in doc["entries"] if e["kind"] == "tensor"
            for c in e["chunks"] if "column_crcs" in c}
    identity = doc["codecs"] == [] or all(c["name"] == "identity" for c in doc["codecs"])
    assert have == ({"big"} if identity else set())


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy()  # the same bytes
        return value.numpy()
    return np.asarray(value)


def _decode(codec: dict, frame: bytes, raw_nbytes: int) -> bytes:
    name, conf = codec["name"], codec.get("configuration", {})
    if name == "identity":
        assert len(frame) == raw_nbytes
        return frame
    if name == "zstd":
        return _zstd(frame, raw_nbytes)
    if name == "shuffle-zstd":
        return _unshuffle(_zstd(frame, raw_nbytes), conf["elementsize"])
    assert name == "planes-zstd", name
    return _planes(frame, conf["elementsize"], raw_nbytes)


def _zstd(frame: bytes, n: int) -> bytes:
    assert zstandard.frame_content_size(frame) == n  # frames declare their content size
    return zstandard.ZstdDecompressor().decompress(frame)


def _unshuffle(shuffled: bytes, e: int) -> bytes:
    n = len(shuffled) // e
    raw = bytearray(shuffled)
    for k in range(e):
        raw[k:n * e:e] = shuffled[k * n:(k + 1) * n]
    return bytes(raw)


def _planes(frame: bytes, e: int, raw_nbytes: int) -> bytes:
    """The planes-zstd table of docs/FORMAT.md, byte by byte."""
    (length,) = struct.unpack_from("<I", frame, 0)
    assert length == raw_nbytes
    n, pos = length // e, 4 + 5 * e
    raw = bytearray(length)
    for k in range(e):
        mode, arg = struct.unpack_from("<BI", frame, 4 + 5 * k)
        if mode == 0:
            assert arg == n
            plane, pos = frame[pos:pos + n], pos + n
        elif mode == 1:
            plane, pos = _zstd(frame[pos:pos + arg], n), pos + arg
        else:
            assert mode == 2 and arg <= 255
            plane = bytes([arg]) * n
        raw[k:n * e:e] = plane
    assert len(frame) - pos == length - n * e  # then exactly the tail
    raw[n * e:] = frame[pos:]
    return bytes(raw)


def _check_column_crcs(c: dict, shape: list[int], box: np.ndarray, *, parts: int) -> None:
    cc = c["column_crcs"]
    assert set(cc) == {"crc32c", "parts", "rows"} and cc["parts"] == parts
    w, parts = shape[1], cc["parts"]
    q = math.ceil(w / parts)
    o, s = c["offsets"][1], c["sizes"][1]
    cuts = [o] + [x for x in range(q, w, q) if o < x < o + s] + [o + s]
    segments = list(zip(cuts, cuts[1:]))
    rows = c["sizes"][0]
    runs = [(r, min(r + cc["rows"], rows)) for r in range(0, rows, cc["rows"])]
    assert len(cc["crc32c"]) == len(runs) * len(segments)
    for r, (r0, r1) in enumerate(runs):
        for m, (c0, c1) in enumerate(segments):
            tile = np.ascontiguousarray(box[r0:r1, c0 - o:c1 - o]).tobytes()
            assert crc32c.crc32c(tile) == cc["crc32c"][r * len(segments) + m], (r, m)
    # About 256 KiB per tile, as the page says reshard chooses.
    tile_nbytes = cc["rows"] * min(q, s) * box.itemsize
    assert 128 * 1024 <= tile_nbytes <= 512 * 1024, tile_nbytes


def test_codec_per_dtype(saved: tuple[Path, dict]) -> None:
    """codec="zstd": planes-zstd with elementsize = the item size, plain zstd for 1-byte elements."""
    _, doc = saved
    for e in doc["entries"]:
        for c in e.get("chunks", ()):
            codec = doc["codecs"][c["codec"]]
            if codec["name"] == "identity":
                continue
            size = DTYPES[e["dtype"]]
            assert codec == ({"name": "zstd", "configuration": {"level": 3}} if size == 1 else
                             {"name": "planes-zstd", "configuration": {"elementsize": size, "level": 3}})
            assert c["frame_raw_nbytes"] == 1024 * 1024
    if all(c["name"] == "identity" for c in doc["codecs"]):
        assert {c["frame_raw_nbytes"] for e in doc["entries"] for c in e.get("chunks", ())} == {256 * 1024}


def test_optional_fields_may_be_absent(saved: tuple[Path, dict], tmp_path: Path) -> None:
    """The fields docs/FORMAT.md marks optional, left out by another writer, read with
    the defaults it gives."""
    path, doc = saved
    doc = json.loads(json.dumps(doc))
    for name in ("manifest_crc32", "created_unix_s", "library_version"):
        del doc[name]
    for e in doc["entries"]:
        if e.get("container") == "torch":
            del e["container"]
    for c in doc["codecs"]:
        if c["name"] == "identity":
            c.pop("configuration", None)
    copy = tmp_path / "copy"
    (copy / "data").mkdir(parents=True)
    (copy / doc["files"][0]).write_bytes((path / doc["files"][0]).read_bytes())
    (copy / "manifest.json").write_text(json.dumps(doc, indent=1))
    with reshard.open(copy) as ck:
        assert ck.manifest.created_unix_s == 0 and ck.manifest.library_version == ""
        assert torch.equal(ck.read("big"), BIG) and type(ck.read("np")) is np.ndarray
        assert ck.read("v.b") == b"\x00\xff"
    value_only = {**doc, "entries": [e for e in doc["entries"] if e["kind"] == "value"]}
    del value_only["codecs"]
    (copy / "manifest.json").write_text(json.dumps(value_only))
    with reshard.open(copy) as ck:
        assert ck.read(("v", "i")) == -(2**70)


def test_column_crcs_uneven_parts_of_chunks_off_dim1_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RESHARD_COLUMN_CHECKSUMS=3 on a width of 513 (cuts at 171 and 342) over chunks that
    start inside dim 1 (column_blocks=2: columns 0-256 and 257-512): the tiles are those
    the page's segment rule gives, cut at the cuts strictly inside each chunk."""
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", "3")
    full = torch.arange(1200 * 513, dtype=torch.float32).reshape(1200, 513)
    reshard.save({"b": full}, tmp_path, column_blocks=2)
    doc = json.loads((tmp_path / "manifest.json").read_bytes())
    chunks = doc["entries"][0]["chunks"]
    assert [(c["offsets"], c["sizes"]) for c in chunks] == [([0, 0], [1200, 257]), ([0, 257], [1200, 256])]
    for c in chunks:
        box = full.numpy()[:, c["offsets"][1]:c["offsets"][1] + c["sizes"][1]]
        _check_column_crcs(c, [1200, 513], box, parts=3)
