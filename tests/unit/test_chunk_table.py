"""Parsed chunk lists (format.chunk_table) and column-wise chunk texts (canonical.chunk_texts).

A parsed entry keeps its checked chunk columns and builds each Chunk on first use. These
tests pin down that this is only a change of when objects are built: every chunk is still
checked at parse time (a bad chunk nobody reads is refused, naming its JSON path), the
table equals the chunks the per-chunk parser builds, and ``touching`` finds exactly the
chunks a box intersects.
"""

from __future__ import annotations

import json
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core.layout import Box, intersect
from reshard.core.planner import plan_reads
from reshard.errors import CorruptCheckpointError
from reshard.format.canonical import CHECKSUM_FIELD, chunk_json, chunk_texts
from reshard.format.chunk_table import ChunkTable, codec_names, touching
from reshard.format.manifest import IDENTITY, Chunk, CodecSpec, Frame, Manifest, TensorEntry

from ._strategies import boxes_in, grid_tilings, shapes

FRAME = 8


def _entry(key: str, shape: tuple[int, ...], boxes: list[Box], *, codec: CodecSpec = IDENTITY,
           file: str = "data/s.0.bin") -> TensorEntry:
    chunks = []
    offset = 0
    for b in boxes:
        raw = b.numel * 4
        frames = tuple(Frame(nbytes=min(FRAME, raw - s), crc32c=(s * 7 + 1) & 0xFFFFFFFF)
                       for s in range(0, raw, FRAME))
        nbytes = sum(f.nbytes for f in frames)
        chunks.append(Chunk(box=b, file=file, offset=offset, nbytes=nbytes, raw_nbytes=raw,
                            codec=codec, frame_raw_nbytes=FRAME, frames=frames))
        offset += nbytes
    return TensorEntry(key=(key,), dtype="float32", shape=shape, container="torch",
                       chunks=tuple(chunks))


def _manifest(*entries: TensorEntry) -> Manifest:
    return Manifest(save_id="s", world_size=1, created_unix_s=0.0, library_version="x",
                    entries=entries)


def _grid(rows: int, cols: int, r: int, c: int) -> list[Box]:
    return [Box((i * r, j * c), (r, c)) for i in range(rows) for j in range(cols)]


def test_parsed_chunks_are_built_on_first_use_and_equal_the_tuple() -> None:
    m = _manifest(_entry("a", (8, 12), _grid(4, 3, 2, 4)), _entry("b", (6,), [Box((0,), (6,))]))
    parsed = Manifest.from_json(m.to_json())
    table = parsed.entries[0].chunks  # type: ignore[union-attr]
    assert isinstance(table, ChunkTable) and len(table) == 12
    assert sum(c is not None for c in table._built) == 0
    chunk = table[5]
    assert chunk == m.entries[0].chunks[5]  # type: ignore[union-attr]
    assert table[5] is chunk  # built once, then kept (read paths key caches on id(chunk))
    assert sum(c is not None for c in table._built) == 1
    assert table == m.entries[0].chunks and m.entries[0].chunks == table  # type: ignore[union-attr]
    assert parsed == m and hash(table) == hash(tuple(table))
    assert table[-1] == table[11] and table[2:4] == tuple(m.entries[0].chunks[2:4])  # type: ignore[union-attr]
    assert parsed.files() == ["data/s.0.bin"] and codec_names(table) == {"identity"}
    assert Manifest.from_json(parsed.to_json()) == m
    # Pickled (object collectives) as the plain tuple of chunks it stands for.
    copy = pickle.loads(pickle.dumps(parsed))
    assert copy == m and type(copy.entries[0].chunks) is tuple  # type: ignore[union-attr]


def test_touching_is_exactly_the_intersecting_chunks() -> None:
    rng = random.Random(3)
    boxes = _grid(5, 4, 3, 2)
    rng.shuffle(boxes)  # chunk order need not be the grid's
    table = Manifest.from_json(_manifest(_entry("a", (15, 8), boxes)).to_json()).entries[0].chunks
    assert isinstance(table, ChunkTable)
    for _ in range(300):
        lo = [rng.randrange(15), rng.randrange(8)]
        box = Box(tuple(lo), (rng.randrange(0, 16 - lo[0]), rng.randrange(0, 9 - lo[1])))
        expected = [i for i, b in enumerate(boxes) if intersect(b, box) is not None]
        assert table.touching(box) == expected, box


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_read_plans_from_a_table_equal_those_from_the_tuple(data: st.DataObject) -> None:
    shape = data.draw(shapes(max_ndim=3, max_dim=9, min_dim=1))
    boxes = data.draw(grid_tilings(shape))
    entry = _entry("t", shape, data.draw(st.permutations(boxes)))
    table = Manifest.from_json(_manifest(entry).to_json()).entries[0].chunks
    assert isinstance(table, ChunkTable)
    dest = data.draw(boxes_in(shape))
    assert list(touching(entry.chunks, dest)) == list(range(len(entry.chunks)))
    for cap in (4, 64):
        assert (plan_reads(table, dest, 4, max_piece_nbytes=cap)
                == plan_reads(entry.chunks, dest, 4, max_piece_nbytes=cap))


def _doc(m: Manifest) -> dict:
    doc = json.loads(m.to_json())
    doc.pop(CHECKSUM_FIELD)
    return doc


@pytest.mark.parametrize(("field", "value", "error"), [
    ("raw_nbytes", 44, r"entries\[1\]\.chunks\[7\]\.raw_nbytes"),
    ("frames", [[8, 1]], r"entries\[1\]\.chunks\[7\]\.frames"),
    ("offsets", [0, -1], r"entries\[1\]\.chunks\[7\]\.offsets\[1\]"),
    ("file", 3, r"entries\[1\]\.chunks\[7\]\.file"),
])
def test_a_bad_chunk_that_no_read_touches_is_refused_at_parse(field: str, value: object, error: str) -> None:
    """Laziness builds objects late, it does not check late: the whole manifest is
    refused at parse time, whichever chunks a rank would go on to read."""
    m = _manifest(_entry("a", (4,), [Box((0,), (4,))]), _entry("b", (8, 12), _grid(4, 3, 2, 4)))
    doc = _doc(m)
    doc["entries"][1]["chunks"][7][field] = value
    with pytest.raises(CorruptCheckpointError, match=error):
        Manifest.from_json(json.dumps(doc).encode(), source="/ckpt/manifest.json")


def test_verify_and_inspect_refuse_a_manifest_with_a_bad_chunk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import reshard
    from reshard.cli import main

    m = _manifest(_entry("a", (8, 12), _grid(4, 3, 2, 4)))
    doc = _doc(m)
    doc["entries"][0]["chunks"][10]["nbytes"] += 1  # no longer the sum of its frames
    (tmp_path / "data").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    report = reshard.verify(tmp_path)
    assert not report.ok
    assert any("entries[0].chunks[10].nbytes" in d.message for d in report.damaged)
    assert main(["inspect", str(tmp_path)]) != 0


def _columns_case(rng: random.Random, ndim: int, n: int, max_frames: int) -> dict:
    counts = [rng.randint(1, max_frames) for _ in range(n)]
    total = sum(counts)
    return dict(
        codec=[rng.randrange(3) for _ in range(n)], file=rng.randrange(5000),
        frame_raw_nbytes=rng.choice([1, 262144, 16 << 20]), frame_count=counts,
        frame_nbytes=[rng.randrange(1 << 40) for _ in range(total)],
        frame_crc32c=[rng.randrange(1 << 32) for _ in range(total)],
        nbytes=[rng.randrange(1 << 50) for _ in range(n)],
        offset=[rng.randrange(1 << 50) for _ in range(n)],
        offsets=[tuple(rng.choice([0, 7, 8192, rng.randrange(1 << 40)]) for _ in range(ndim))
                 for _ in range(n)],
        raw_nbytes=[rng.randrange(1 << 50) for _ in range(n)],
        sizes=[tuple(rng.choice([1, 32, 1024]) for _ in range(ndim)) for _ in range(n)],
    )


@pytest.mark.parametrize(("ndim", "max_frames"), [(0, 1), (1, 1), (2, 1), (2, 4), (3, 40), (5, 17)])
def test_chunk_texts_equal_chunk_json_per_chunk(ndim: int, max_frames: int) -> None:
    rng = random.Random(ndim * 100 + max_frames)
    case = _columns_case(rng, ndim, 200, max_frames)
    # Repeated boxes (as across tensors of one shape) go through the per-box memo.
    case["offsets"][100:] = case["offsets"][:100]
    case["sizes"][100:] = case["sizes"][:100]
    expected = []
    first = 0
    for i, count in enumerate(case["frame_count"]):
        frames = [Frame(nbytes=n, crc32c=c) for n, c in zip(
            case["frame_nbytes"][first:first + count], case["frame_crc32c"][first:first + count])]
        first += count
        expected.append(chunk_json(case["offsets"][i], case["sizes"][i], case["file"],
                                   case["offset"][i], case["nbytes"][i], case["raw_nbytes"][i],
                                   case["codec"][i], case["frame_raw_nbytes"], frames))
    assert chunk_texts(**case) == expected
    for text in expected:
        json.loads(text)
    assert chunk_texts(**_columns_case(rng, ndim, 0, 1)) == []
