"""fast_json.loads gives exactly what the standard parser gives, with or without orjson."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest

import reshard
from reshard import fast_json
from reshard.errors import CorruptCheckpointError
from reshard.format.manifest import Manifest, json_document

DOCS = [
    b'{"a":1,"b":[1,2.5,-0.0,-0,"x"],"c":{"d":null,"e":true}}',
    b'{"a":1,"a":2}',  # duplicate keys: the last wins in both
    b'{"big":123456789012345678901234567890}',  # beyond 64 bits: orjson would give a float
    b'{"neg":-9223372036854775809}',
    b'{"u64":18446744073709551615}',
    b'{"f":1e400}',  # the standard parser gives inf
    b'{"s":"\\ud800"}',  # a lone surrogate
    b'{"s":"caf\\u00e9 \xc3\xa9"}',
    b'{"f":0.1,"g":1.0000000000000002,"h":5e-324,"i":1.7976931348623157e308}',
    b" [1] ",
]
BAD = [
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1', b"\xff{}", b'{"a":"\x01"}',
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@pytest.fixture(params=["orjson", "no orjson", "RESHARD_FAST_JSON=0"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "orjson":
        assert fast_json.orjson is not None, "orjson is a declared dependency"
    elif request.param == "no orjson":
        monkeypatch.setattr(fast_json, "orjson", None)
    else:
        monkeypatch.setenv("RESHARD_FAST_JSON", "0")
    return str(request.param)


def test_fast_json_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_FAST_JSON", "fast")
    with pytest.raises(ValueError, match="RESHARD_FAST_JSON"):
        fast_json.loads(b"{}")


@pytest.mark.parametrize("doc", DOCS)
def test_same_document(parser: str, doc: bytes) -> None:
    assert _same(fast_json.loads(doc), json_document(doc))


@pytest.mark.parametrize("doc", BAD)
def test_same_refusals(parser: str, doc: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json_document(doc)
    with pytest.raises((ValueError, RecursionError)):
        fast_json.loads(doc)


def _outcome(parse: Any, doc: bytes) -> object:
    try:
        return parse(doc)
    except (ValueError, RecursionError) as e:
        return type(e)


@pytest.mark.parametrize("depth", [900, 5000, 100_000])
def test_deep_nesting_same_outcome(parser: str, depth: int) -> None:
    # How deep the standard parser goes depends on the Python version (3.11 refuses
    # 5,000 levels, 3.12 reads them); fast_json must follow it either way.
    doc = b"[" * depth + b"]" * depth
    want = _outcome(json_document, doc)
    got = _outcome(fast_json.loads, doc)
    assert (want is RecursionError or want is ValueError) == (got is RecursionError or got is ValueError)
    if not isinstance(want, type):
        assert _depth(got) == _depth(want) == depth


def _depth(doc: object) -> int:
    n = 0
    while isinstance(doc, list):
        n += 1
        doc = doc[0] if doc else None
    return n


def test_random_floats_bit_for_bit(parser: str) -> None:
    import random

    rng = random.Random(7)
    values = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    values = [v for v in values if math.isfinite(v)] + [rng.uniform(-1e3, 1e3) for _ in range(20000)]
    doc = json.dumps(values).encode()
    assert _same(fast_json.loads(doc), json_document(doc))


def test_manifest_parses_the_same(tmp_path: Any) -> None:
    import torch

    path = str(tmp_path / "ck")
    reshard.save({"w": torch.arange(60.0).reshape(6, 10), "step": 7, "name": "run"}, path)
    data = (tmp_path / "ck" / "manifest.json").read_bytes()
    assert Manifest.from_json(data, loads=fast_json.loads) == Manifest.from_json(data)
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        Manifest.from_json(data[:-5], loads=fast_json.loads)


def test_plain_ints_beyond_64_bits_load_exactly(tmp_path: Any) -> None:
    import torch

    path = str(tmp_path / "ck")
    big, small = 2**70 + 1, -(2**64) - 3
    reshard.save({"big": big, "small": small, "w": torch.ones(3)}, path)
    sd: dict[str, Any] = {"big": 0, "small": 0, "w": torch.zeros(3)}
    reshard.load(sd, path)
    assert sd["big"] == big and type(sd["big"]) is int
    assert sd["small"] == small and type(sd["small"]) is int
    with reshard.open(path) as ck:
        assert ck.read("big") == big
