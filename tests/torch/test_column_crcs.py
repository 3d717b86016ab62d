"""Column checksums (docs/FORMAT.md, version 1.1): what a save writes, and reads that take
some columns of a chunk through them, in one process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import pytest
import torch

import reshard
from reshard.transfer import column_reads

MIB = 1 << 20


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def _chunks(path: Path, key: str) -> list[dict[str, Any]]:
    entry = next(e for e in _manifest(path)["entries"] if e["key"] == [key])
    return entry["chunks"]


def _expected_crcs(full: torch.Tensor, chunk: dict[str, Any]) -> list[int]:
    """The tile checksums, from torch.chunk's column parts and the tensor's own bytes."""
    cc = chunk["column_crcs"]
    (r0, c0, *rest), (nr, nc, *_) = chunk["offsets"], chunk["sizes"]
    assert all(o == 0 for o in rest)
    box = full[r0:r0 + nr, c0:c0 + nc]
    starts = np.cumsum([0] + [p.shape[1] for p in torch.chunk(full, cc["parts"], dim=1)])
    cuts = [int(s) - c0 for s in starts if c0 < s < c0 + nc]
    bounds = [0, *cuts, nc]
    out = []
    for a in range(0, nr, cc["rows"]):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            tile = box[a:a + cc["rows"], lo:hi].contiguous()
            out.append(crc32c.crc32c(tile.view(-1).view(torch.uint8).numpy().tobytes()))
    return out


def _values(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype in (torch.int8, torch.uint8, torch.int32, torch.int64):
        return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g, dtype=dtype)
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    return torch.randn(shape, generator=g).to(dtype)


CASES = [
    ("f32", (700, 1000), torch.float32, 2),
    ("bf16 odd width", (1001, 777), torch.bfloat16, 2),
    ("f64 3 parts", (300, 701), torch.float64, 3),
    ("3-D", (200, 33, 65), torch.float32, 2),
    ("4-D", (70, 9, 30, 31), torch.float16, 4),
    ("bool", (1100, 1000), torch.bool, 2),
    ("complex64 8 parts", (300, 513), torch.complex64, 8),
    ("int8 one wide row", (1, 3 * MIB), torch.int8, 2),
    ("width below parts", (300000, 3), torch.float32, 4),
]


@pytest.mark.parametrize(("name", "shape", "dtype", "parts"), CASES, ids=[c[0] for c in CASES])
def test_save_writes_the_tile_checksums_and_column_reads_are_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, shape: tuple[int, ...],
    dtype: torch.dtype, parts: int,
) -> None:
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", str(parts))
    full = _values(shape, dtype)
    assert full.nbytes > MIB
    reshard.save({"t": full}, tmp_path)
    assert _manifest(tmp_path)["format_version"] == [1, 1]
    (chunk,) = _chunks(tmp_path, "t")
    cc = chunk["column_crcs"]
    assert cc["parts"] == parts
    assert cc["crc32c"] == _expected_crcs(full, chunk)
    row_nbytes = full[0].nbytes
    widest = max(p.shape[1] for p in torch.chunk(full, parts, dim=1)) * row_nbytes // shape[1]
    assert cc["rows"] == max(1, (256 << 10) // widest)
    with reshard.open(tmp_path) as ck:
        assert ck.info("t").chunks[0].column_parts == parts
        width = shape[1]
        edges = np.cumsum([0] + [p.shape[1] for p in torch.chunk(full, parts, dim=1)]).tolist()
        for lo, hi in zip(edges[:-1], edges[1:]):
            before = ck._store.bytes_read  # type: ignore[attr-defined]
            got = ck.read("t", (slice(None), slice(lo, hi)))
            assert torch.equal(got, full[:, lo:hi]), (lo, hi)
            # Exactly the bytes of that part's tiles.
            assert ck._store.bytes_read - before == full[:, lo:hi].nbytes  # type: ignore[attr-defined]
        # Rows and columns both partial, columns inside one part, across a cut, reversed
        # cases of every edge: the values are exact whatever path reads them.
        n = shape[0]
        for rows in (slice(None), slice(n // 3, n // 3 + 1), slice(1, max(2, n - 1))):
            for cols in (slice(0, max(1, width // (2 * parts))), slice(width // 3, width - width // 3 or 1),
                         slice(width - 1, width), slice(0, width)):
                if cols.start >= cols.stop or rows.start is not None and rows.start >= n:
                    continue
                assert torch.equal(ck.read("t", (rows, cols)), full[rows, cols]), (rows, cols)
    assert reshard.verify(tmp_path).ok


def test_which_chunks_carry_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = torch.arange(600 * 1000, dtype=torch.float32).reshape(600, 1000)
    state = {
        "big": big,
        "small": torch.ones(100, 100),  # 40 KB: read whole anyway
        "at limit": torch.ones(256, 1024),  # exactly 1 MiB
        "flat": torch.ones(2 * MIB),  # one dim: no columns
        "narrow": torch.ones(MIB, 1),  # one column: nothing to cut
        "numpy": np.ones((700, 600), dtype=np.float32),
    }
    reshard.save(state, tmp_path / "plain")
    has = {e["key"][0]: "column_crcs" in e["chunks"][0] for e in _manifest(tmp_path / "plain")["entries"]}
    assert has == {"big": True, "small": False, "at limit": False, "flat": False, "narrow": False,
                   "numpy": True}
    reshard.save({"big": big}, tmp_path / "zstd", codec="zstd")
    assert "column_crcs" not in _chunks(tmp_path / "zstd", "big")[0]
    # Column blocks store each part as chunks of its own: no chunk crosses a cut.
    reshard.save({"big": big}, tmp_path / "blocks", column_blocks=2)
    assert all("column_crcs" not in c for c in _chunks(tmp_path / "blocks", "big"))
    for off in ("0", "1"):
        monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", off)
        reshard.save({"big": big}, tmp_path / f"off{off}")
        assert "column_crcs" not in _chunks(tmp_path / f"off{off}", "big")[0]
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", "x")
    with pytest.raises(reshard.CheckpointError, match="RESHARD_COLUMN_CHECKSUMS"):
        reshard.save({"big": big}, tmp_path / "bad")


def _tile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    run = column_reads.run_tile_job

    def counted(store: Any, job: column_reads.TileJob) -> None:
        calls.append(job.nbytes)
        run(store, job)

    monkeypatch.setattr(column_reads, "run_tile_job", counted)
    return calls


def _flip(path: Path, chunk: dict[str, Any], row: int, col: int, itemsize: int, row_elems: int) -> None:
    data = path / _manifest(path)["files"][chunk["file"]]
    pos = chunk["offset"] + (row * row_elems + col) * itemsize
    with open(data, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))


def test_a_damaged_tile_fails_only_the_reads_that_take_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = torch.randn(800, 1000)
    reshard.save({"t": full}, tmp_path)
    (chunk,) = _chunks(tmp_path, "t")
    _flip(tmp_path, chunk, 500, 700, 4, 1000)
    calls = _tile_calls(monkeypatch)
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("t", (slice(None), slice(0, 500))), full[:, :500])
        with pytest.raises(reshard.CorruptCheckpointError,
                           match=r"key 't'.*column tile of rows \d+\.\.\d+ and columns 500\.\.1000.*CRC-32C"):
            ck.read("t", (slice(None), slice(500, 1000)))
        with pytest.raises(reshard.CorruptCheckpointError, match="frame .* CRC-32C"):
            ck.read("t")  # whole rows: the frames' checksums find it
    assert calls
    report = reshard.verify(tmp_path)
    assert not report.ok
    assert any("column tile" in str(d) for d in report.damaged)
    assert any("frame" in str(d) for d in report.damaged)


def test_verify_checks_the_column_checksums_themselves(tmp_path: Path) -> None:
    """A column checksum that disagrees with good bytes is damage a column reader would
    hit: verify reports it although every frame is sound."""
    from tests.adversarial._state import rewrite_manifest

    full = torch.randn(800, 1000)
    reshard.save({"t": full}, tmp_path)

    def bump(doc: dict[str, Any]) -> None:
        crcs = doc["entries"][0]["chunks"][0]["column_crcs"]["crc32c"]
        crcs[3] ^= 1

    rewrite_manifest(tmp_path, bump)
    report = reshard.verify(tmp_path)
    assert not report.ok and len(report.damaged) == 1
    assert "column tile" in str(report.damaged[0]) and "columns 500..1000" in str(report.damaged[0])
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("t", (slice(None), slice(0, 500))), full[:, :500])
        with pytest.raises(reshard.CorruptCheckpointError, match="column tile"):
            ck.read("t", (slice(None), slice(500, 1000)))
        assert torch.equal(ck.read("t"), full)  # frames are right


BAD_FIELDS = [
    ("not an object", [1, 2], "expected an object"),
    ("extra member", {"crc32c": [], "parts": 2, "rows": 1, "x": 1}, "expected an object"),
    ("parts 1", {"crc32c": [], "parts": 1, "rows": 400}, r"parts: expected an int from 2"),
    ("parts bool", {"crc32c": [], "parts": True, "rows": 400}, r"parts: expected an int"),
    ("rows 0", {"crc32c": [], "parts": 2, "rows": 0}, r"rows: expected a positive int"),
    ("too few", {"crc32c": [1], "parts": 2, "rows": 400}, r"crc32c: expected a list of 4 checksums"),
    ("too big", None, r"crc32c: expected unsigned 32-bit ints"),
    ("negative", None, r"crc32c: expected unsigned 32-bit ints"),
]


@pytest.mark.parametrize(("name", "field", "message"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_a_malformed_field_is_refused_naming_its_path(
    tmp_path: Path, name: str, field: Any, message: str
) -> None:
    from tests.adversarial._state import rewrite_manifest

    reshard.save({"t": torch.ones(800, 1000)}, tmp_path)

    def edit(doc: dict[str, Any]) -> None:
        chunk = doc["entries"][0]["chunks"][0]
        assert chunk["column_crcs"]["rows"] == 131 and len(chunk["column_crcs"]["crc32c"]) == 14
        if name == "too big":
            chunk["column_crcs"]["crc32c"][0] = 2**32
        elif name == "negative":
            chunk["column_crcs"]["crc32c"][5] = -1
        else:
            chunk["column_crcs"] = field

    rewrite_manifest(tmp_path, edit)
    where = r"entries\[0\]\.chunks\[0\]\.column_crcs.*"
    with pytest.raises(reshard.CorruptCheckpointError, match=where + message):
        reshard.load({"t": torch.zeros(800, 1000)}, tmp_path)


@pytest.mark.parametrize("where", ["zstd chunk", "1-D chunk"])
def test_the_field_is_refused_where_it_cannot_apply(tmp_path: Path, where: str) -> None:
    from tests.adversarial._state import rewrite_manifest

    if where == "zstd chunk":
        reshard.save({"t": torch.ones(800, 1000)}, tmp_path, codec="zstd")
        expect = "only chunks stored raw"
    else:
        reshard.save({"t": torch.ones(800 * 1000)}, tmp_path)
        expect = "a chunk of 1 dims has no columns"
    rewrite_manifest(tmp_path, lambda doc: doc["entries"][0]["chunks"][0].update(
        column_crcs={"crc32c": [0, 0], "parts": 2, "rows": 800}))
    with pytest.raises(reshard.CorruptCheckpointError, match=expect):
        reshard.open(tmp_path)


def test_readers_without_mappings_or_with_other_dtypes_read_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = torch.randn(900, 1000)
    reshard.save({"t": full}, tmp_path)
    calls = _tile_calls(monkeypatch)
    monkeypatch.setenv("RESHARD_MAP_READS", "0")
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("t", (slice(None), slice(500, 1000))), full[:, 500:])
    assert not calls  # no mapping: whole frames, as before
    monkeypatch.delenv("RESHARD_MAP_READS")
    # A destination of another dtype, and one that is not contiguous (staged), both
    # through the tiles.
    out = {"t": torch.zeros(900, 1000, dtype=torch.float64)}
    reshard.load(out, tmp_path)
    assert torch.equal(out["t"], full.double())
    with reshard.open(tmp_path) as ck:
        got = ck.read("t", (slice(None), slice(0, 500)))
        assert torch.equal(got, full[:, :500])
    assert calls


def test_checkpoints_without_the_field_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What earlier versions wrote (format 1.0, no column checksums) reads as before."""
    from tests.adversarial._state import rewrite_manifest

    full = torch.randn(900, 1000)
    reshard.save({"t": full}, tmp_path)

    def as_v10(doc: dict[str, Any]) -> None:
        doc["format_version"] = [1, 0]
        del doc["entries"][0]["chunks"][0]["column_crcs"]

    rewrite_manifest(tmp_path, as_v10)
    calls = _tile_calls(monkeypatch)
    with reshard.open(tmp_path) as ck:
        assert ck.manifest.format_version == (1, 0)
        assert torch.equal(ck.read("t", (slice(None), slice(500, 1000))), full[:, 500:])
    assert not calls and reshard.verify(tmp_path).ok


def test_a_chunk_with_a_field_of_a_later_minor_version_still_reads(tmp_path: Path) -> None:
    from tests.adversarial._state import rewrite_manifest

    full = torch.randn(900, 1000)
    reshard.save({"t": full}, tmp_path)
    rewrite_manifest(tmp_path, lambda doc: doc["entries"][0]["chunks"][0].update(future={"x": 1}))
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("t", (slice(None), slice(500, 1000))), full[:, 500:])
        assert ck.info("t").chunks[0].column_parts == 2


def test_async_save_writes_them_too(tmp_path: Path) -> None:
    full = torch.randn(700, 1000)
    handle = reshard.async_save({"t": full}, tmp_path)
    handle.result()
    (chunk,) = _chunks(tmp_path, "t")
    assert chunk["column_crcs"]["crc32c"] == _expected_crcs(full, chunk)
    assert os.path.exists(tmp_path / "manifest.json")


def _fill_box(path: Path, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...],
              dtype: torch.dtype, *, transposed: bool = False) -> torch.Tensor:
    """Fill one destination box of ``key`` the way a rank's load does (transfer.read.fill)."""
    from reshard.core.layout import Box
    from reshard.manifest_io import load_manifest
    from reshard.storage import open_store
    from reshard.transfer.read import Target, fill

    store = open_store(str(path))
    try:
        entry = next(e for e in load_manifest(store).entries if e.key == (key,))
        if transposed:  # not contiguous: filled through a staging tensor
            tensor = torch.zeros(tuple(reversed(sizes)), dtype=dtype).transpose(0, -1)
        else:
            tensor = torch.zeros(sizes, dtype=dtype)
        fill(store, [Target(entry=entry, box=Box(offsets, sizes), tensor=tensor)], threads=2,
             max_piece_nbytes=16 << 20)
        return tensor
    finally:
        store.close()


def test_every_placement_of_a_tile_part_reads_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Destination boxes that take whole tiles, parts of tiles (fewer columns, fewer rows,
    part of a later dim), in the saved dtype or another one, contiguous or not: each read
    through the tiles, each exact."""
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", "3")
    g = torch.Generator().manual_seed(3)
    full2 = torch.randn(700, 1001, generator=g)
    full3 = torch.randn(400, 301, 5, generator=g).to(torch.bfloat16)  # over 1 MiB
    reshard.save({"m": full2, "c": full3}, tmp_path)
    calls = _tile_calls(monkeypatch)
    boxes2 = [((0, 0), (700, 334)), ((0, 334), (700, 334)), ((0, 668), (700, 333)),  # the parts
              ((0, 0), (700, 167)), ((0, 500), (700, 168)), ((13, 10), (600, 300)),  # inside parts
              ((350, 334), (1, 334)), ((699, 0), (1, 700)), ((5, 100), (90, 600))]  # rows, spans
    for (offsets, sizes) in boxes2:
        want = full2[offsets[0]:offsets[0] + sizes[0], offsets[1]:offsets[1] + sizes[1]]
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for transposed in (False, True):
                got = _fill_box(tmp_path, "m", offsets, sizes, dtype, transposed=transposed)
                assert torch.equal(got, want.to(dtype)), (offsets, sizes, dtype, transposed)
    for offsets, sizes in [((0, 0, 0), (400, 101, 5)), ((0, 101, 0), (300, 100, 5)),
                           ((0, 0, 1), (300, 101, 3)), ((7, 50, 4), (200, 200, 1)),
                           ((0, 201, 0), (300, 100, 2))]:
        want = full3[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))]
        for dtype in (torch.bfloat16, torch.float32):
            got = _fill_box(tmp_path, "c", offsets, sizes, dtype)
            assert torch.equal(got, want.to(dtype)), (offsets, sizes, dtype)
    assert len(calls) >= 40


@pytest.mark.parametrize("piece_nbytes", [300 << 10, 1 << 20, 3 << 20])
def test_tensors_streamed_piece_by_piece_get_them_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece_nbytes: int
) -> None:
    """CUDA tensors reach the writer in pieces of a reused buffer (transfer.device_copy),
    cut wherever a piece ends, not where a run of rows does. Here CPU tensors take that
    path, through one buffer that is scribbled over as soon as the next piece is asked for."""
    from reshard.transfer import device_copy

    def pieces(tensor: torch.Tensor, piece: int) -> Any:
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        buf = torch.empty(piece, dtype=torch.uint8)
        for at in range(0, flat.numel(), piece):
            part = buf[:min(piece, flat.numel() - at)]
            part.copy_(flat[at:at + piece])
            yield part.numpy().data.cast("B")
            buf.fill_(0xA5)

    from reshard.transfer import write

    streamed: list[int] = []

    def streamable(t: torch.Tensor) -> bool:
        if t.numel() * t.element_size() <= MIB:
            return False
        streamed.append(t.numel())
        return True

    # Large CPU tensors skip the host paths and take the device path.
    monkeypatch.setattr(write, "_is_plain_contiguous", lambda t: t.numel() * t.element_size() <= MIB)
    monkeypatch.setattr(write._CopyRing, "takes", lambda self, t: False)
    monkeypatch.setattr(device_copy, "streamable", streamable)
    monkeypatch.setattr(device_copy, "pieces", pieces)
    monkeypatch.setattr(device_copy, "PIECE_NBYTES", piece_nbytes)
    checksum = write.tile_crcs

    def late(*args: Any) -> list[int]:  # a writer that moved on would see the scribbles
        time.sleep(0.005)
        return checksum(*args)

    monkeypatch.setattr(write, "tile_crcs", late)
    g = torch.Generator().manual_seed(5)
    state = {"a": torch.randn(777, 1001, generator=g), "b": torch.randn(50, 30001, generator=g),
             "c": torch.randn(1, 3 * MIB // 4 + 5, generator=g), "d": torch.randn(4000, 3, 33, generator=g)}
    reshard.save(state, tmp_path)
    assert len(streamed) == len(state)
    for key, full in state.items():
        (chunk,) = _chunks(tmp_path, key)
        assert chunk["column_crcs"]["crc32c"] == _expected_crcs(full, chunk), key
    with reshard.open(tmp_path) as ck:
        for key, full in state.items():
            half = -(-full.shape[1] // 2)
            assert torch.equal(ck.read(key, (slice(None), slice(half, None))), full[:, half:]), key
            assert torch.equal(ck.read(key), full), key
    assert reshard.verify(tmp_path).ok
