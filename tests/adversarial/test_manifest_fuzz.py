"""Fuzzing the manifest parser and everything that trusts its result.

Whatever the manifest holds (random bytes, random JSON, or a real manifest with any node
replaced, deleted or set to a hostile number, its checksum recomputed as a hostile writer
would), parsing raises a CheckpointError or returns a manifest; loading, slicing and
verifying that manifest raise only CheckpointError, open no file outside the checkpoint and
allocate nothing the size of a hostile number.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reshard
from reshard.format.manifest import CHECKSUM_FIELD, Manifest, TensorEntry, _doc_crc32

from ._state import blank_state, make_state

SAFETY_NET = "malformed manifest ("
"""The wording of the parser's last-resort catch: a fuzz case reaching it is a parser bug."""

_stats = {"mutated": 0, "exercised": 0}
_opened: list[str] = []
_watching: list[bool] = [False]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)

json_scalars = (
    st.none() | st.booleans() | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-1, 0, 1, 2, 3, 7, 512, 2**31, 2**32, 2**48, 2**62, 2**63, 2**64, -(2**63), 10**30])
    | st.integers()
)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


def _parse(data: bytes) -> Manifest | None:
    try:
        return Manifest.from_json(data)
    except reshard.CheckpointError as e:
        assert SAFETY_NET not in str(e), f"parser bug reached the safety net: {e!r} <- {e.__cause__!r}"
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    ckpt = root / "ckpt"
    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "512"
    try:
        reshard.save(make_state(1), ckpt, codec="zstd")
        reshard.save(make_state(1), root / "ident")
    finally:
        del os.environ["RESHARD_FRAME_RAW_NBYTES"]
    (root / "secret.bin").write_bytes(b"s" * 100000)
    docs = [json.loads((root / n / "manifest.json").read_bytes()) for n in ("ckpt", "ident")]
    return {"root": root, "ckpt": ckpt, "docs": docs}


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


HOSTILE = st.sampled_from([
    -1, 0, 2**31, 2**48 + 1, 2**62, 2**63, 2**64, 10**30, -(2**63), 1e308, 0.5, True, None, "",
    "x", [], {}, [[]], "../secret.bin", "data/../../secret.bin", "float128", "bfloat16", "int8",
    [2**40], [0, 0], [1, 2, 3], [[2**40, 0]], [[2**62, 4294967295]],
])


@st.composite
def mutations(draw: st.DrawFn, docs: list[Any]) -> tuple[Any, bool]:
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["replace", "hostile", "delete", "duplicate", "swap"] + ["bump"] * 5))
        paths = _paths(doc)[1:]
        if op == "bump":
            paths = [p for p in paths if type(_at(doc, p)) is int] or paths
        path = draw(st.sampled_from(paths))
        parent = _at(doc, path[:-1])
        key, value = path[-1], parent[path[-1]]
        if op == "bump" and isinstance(value, int) and not isinstance(value, bool):
            parent[key] = draw(st.sampled_from([value + 1, value - 1, value * 2, value // 2, 0, -value]))
        elif op == "swap" and isinstance(parent, list) and len(parent) > 1:
            other = draw(st.integers(0, len(parent) - 1))
            parent[key], parent[other] = parent[other], parent[key]
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(value))
        elif op == "hostile":
            parent[key] = copy.deepcopy(draw(HOSTILE))  # sampled objects are shared
        else:
            parent[key] = draw(json_values)
    return doc, draw(st.sampled_from([True, True, True, False]))


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    assert _parse(data) is None


@FUZZ
@given(doc=json_values)
def test_random_json(doc: Any) -> None:
    assert _parse(json.dumps(doc).encode()) is None


@FUZZ
@given(entries=st.lists(json_values, max_size=3), files=json_values, codecs=json_values)
def test_random_json_with_a_valid_header(entries: Any, files: Any, codecs: Any) -> None:
    doc = {"format": "reshard", "format_version": [1, 0], "save_id": "x", "world_size": 1,
           "files": files, "codecs": codecs, "entries": entries}
    _parse(json.dumps(doc).encode())


def test_truncations_and_nesting(world: dict[str, Any]) -> None:
    good = json.dumps(world["docs"][0]).encode()
    for cut in range(0, len(good), 7):
        assert _parse(good[:cut]) is None
    for depth in (10, 100, 900, 5000, 100000):
        assert _parse(b"[" * depth + b"]" * depth) is None
        value = {"type": "int", "value": json.loads("[" * min(depth, 900) + "]" * min(depth, 900))}
        doc = copy.deepcopy(world["docs"][0])
        doc["entries"].append({"key": ["deep"], "kind": "value", "value": value})
        doc[CHECKSUM_FIELD] = 0
        assert _parse(json.dumps(doc).encode()) is None


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_manifests(world: dict[str, Any], data: st.DataObject) -> None:
    doc, fix_checksum = data.draw(mutations(world["docs"]))
    if fix_checksum and isinstance(doc, dict):
        doc.pop(CHECKSUM_FIELD, None)
        try:
            doc[CHECKSUM_FIELD] = _doc_crc32(doc)
        except ValueError:
            pass
    raw = json.dumps(doc).encode()
    _stats["mutated"] += 1
    manifest = _parse(raw)
    if manifest is None:
        return
    _stats["exercised"] += 1
    ckpt: Path = world["ckpt"]
    (ckpt / "manifest.json").write_bytes(raw)
    _exercise(ckpt, manifest)


def _exercise(ckpt: Path, manifest: Manifest) -> None:
    """Load, slice and verify a manifest that parsed: only CheckpointErrors, no file outside
    ``ckpt`` opened, no allocation driven by a hostile size."""
    _opened.clear()
    _watching[0] = True
    tracemalloc.start()
    try:
        for call in (
            lambda: reshard.load(blank_state(), ckpt),
            lambda: reshard.load(blank_state(), ckpt, strict=False),
            lambda: _slices(ckpt, manifest),
            lambda: reshard.verify(ckpt),
        ):
            try:
                call()
            except reshard.CheckpointError:
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        _watching[0] = False
    real = os.path.realpath(ckpt)
    outside = [p for p in _opened if not os.path.realpath(p).startswith(real + os.sep)
               and str(ckpt.parent) in os.path.realpath(p)]
    assert not outside, f"opened outside the checkpoint: {outside}"
    assert peak < 64 * 2**20, f"peak traced allocation {peak} bytes"


def _slices(ckpt: Path, manifest: Manifest) -> None:
    with reshard.open(ckpt) as ck:
        for e in manifest.entries:
            name = ".".join(map(str, e.key))
            index = tuple(slice(0, 2) for _ in e.shape) if isinstance(e, TensorEntry) else None
            try:
                ck.read(name, index)
            except reshard.CheckpointError:
                pass


def test_restore_template_still_loads(world: dict[str, Any]) -> None:
    """Sanity of the fuzz set-up: the unmutated manifest loads exactly, and the mutation test
    (run before this one) got many manifests past the parser into load, read and verify."""
    if _stats["mutated"]:
        assert _stats["exercised"] >= 20, _stats
        print(f"mutated manifests: {_stats}")
    ckpt: Path = world["ckpt"]
    (ckpt / "manifest.json").write_bytes(json.dumps(world["docs"][0]).encode())
    sd = blank_state()
    reshard.load(sd, ckpt)
    assert sd["step"] == 1001 and sd["w"].equal(make_state(1)["w"])
    assert shutil.disk_usage(ckpt).free > 0
