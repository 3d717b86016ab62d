"""save's manifest, built straight from the ranks' write records, is the manifest the
records describe: chunks in offset order whatever order the ranks come in, one file per
rank that wrote, values inline, canonical JSON with the checksum last."""

from __future__ import annotations

import json
import sys
import zlib

import pytest

from reshard.core.layout import Box
from reshard.core.planner import TensorDesc, ValueDesc, plan_save
from reshard.format.manifest import CHECKSUM_FIELD, IDENTITY, CodecSpec, Manifest, TensorEntry
from reshard.save import manifest_json
from reshard.transfer.write import WrittenColumns, WrittenFile


def _records(plan, per_rank, frame_raw):  # type: ignore[no-untyped-def]
    written = []
    for rank, tasks in enumerate(plan.tasks):
        cols = WrittenColumns(end=1000 * rank)
        for t in tasks:
            raw = per_rank[rank][t.item_index].boxes[t.box_index].numel * 4
            cols.add(t.item_index, t.box_index, raw,
                     [(min(frame_raw, raw - s), rank * 7 + s) for s in range(0, raw, frame_raw)])
        written.append(cols.done(f"data/x.{rank}.bin", frame_raw))
    return written


@pytest.mark.parametrize("numpy_order_min", [1, 64])  # offsets compared in numpy, or as tuples
def test_manifest_from_records_with_ranks_out_of_offset_order(
    numpy_order_min: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["reshard.save"], "_NUMPY_ORDER_MIN", numpy_order_min)
    # Rank r holds row 3 - r of a (4, 6) matrix (ranks in reverse offset order) and half
    # of a vector, each half held by two ranks (written once).
    world = 4
    per_rank = []
    for r in range(world):
        per_rank.append([
            TensorDesc(key=("m",), dtype="float32", shape=(4, 6), container="torch",
                       boxes=(Box((3 - r, 0), (1, 6)),)),
            ValueDesc(key=("step",), value={"type": "int", "value": 7}),
            TensorDesc(key=("v",), dtype="float32", shape=(6,), container="numpy",
                       boxes=(Box((3 * (r // 2),), (3,)),)),
        ])
    plan = plan_save(per_rank)
    written = _records(plan, per_rank, frame_raw=8)
    zstd = CodecSpec(name="zstd", configuration=(("level", 3),))
    data, files = manifest_json(plan, per_rank, written, save_id="x", world_size=world,
                                codec_spec=zstd, created_unix_s=1.5)
    assert files == [f"data/x.{r}.bin" for r in range(world) if len(written[r])]
    m = Manifest.from_json(data)
    assert [e.key for e in m.entries] == [("m",), ("step",), ("v",)]
    matrix, vector = m.entries[0], m.entries[2]
    assert isinstance(matrix, TensorEntry) and isinstance(vector, TensorEntry)
    assert [c.box.offsets for c in matrix.chunks] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert [c.file for c in matrix.chunks] == ["data/x.3.bin", "data/x.2.bin", "data/x.1.bin", "data/x.0.bin"]
    assert all(c.codec == zstd and len(c.frames) == 3 for c in matrix.chunks)
    assert [c.box for c in vector.chunks] == [Box((0,), (3,)), Box((3,), (3,))]
    assert vector.container == "numpy" and m.created_unix_s == 1.5
    doc = json.loads(data)
    crc = doc.pop(CHECKSUM_FIELD)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert data == body[:-1] + b',"manifest_crc32":%d}' % crc and crc == zlib.crc32(body)
    # The same manifest through Manifest.to_json: byte for byte (files in first-use order
    # there, so compare parsed).
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_of_values_only() -> None:
    per_rank = [[ValueDesc(key=("a",), value={"type": "str", "value": "\u00e9\u4e2d"})]] * 2
    plan = plan_save(per_rank)
    empty = [WrittenFile(name=f"data/x.{r}.bin", frame_raw_nbytes=8) for r in range(2)]
    data, files = manifest_json(plan, per_rank, empty,
                                save_id="x", world_size=2, codec_spec=IDENTITY, created_unix_s=0.0)
    assert files == [] and json.loads(data)["codecs"] == []
    assert Manifest.from_json(data).entries[0].decoded() == "\u00e9\u4e2d"  # type: ignore[union-attr]


def test_start_order_agrees_with_tuple_comparison() -> None:
    """save._StartOrder.ascending says what comparing the offset tuples says, or None
    where its numbers cannot tell (negative numbers, dims other than the entry's)."""
    from array import array
    from itertools import chain
    from operator import lt

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from reshard.save import _StartOrder

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        ndim = data.draw(st.integers(0, 3))
        tuples = data.draw(st.lists(
            st.lists(st.integers(-2, 3) | st.sampled_from([2**62, 2**63 - 1]),
                     min_size=ndim, max_size=ndim).map(tuple)
            | st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple), max_size=8))
        order = _StartOrder(array("q", chain.from_iterable(tuples)), array("q", map(len, tuples)))
        chunks = data.draw(st.lists(st.integers(0, max(0, len(tuples) - 1)), max_size=6)) \
            if tuples else []
        import numpy as np

        got = order.ascending(np.array(chunks, dtype=np.int64), ndim)
        at = [tuples[i] for i in chunks]
        if got is None:
            assert any(min(t, default=0) < 0 for t in tuples) or ndim == 0 or \
                any(len(t) != ndim for t in at)
        else:
            assert got == all(map(lt, at, at[1:]))

    check()
