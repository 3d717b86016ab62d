"""Column checksums (docs/FORMAT.md 1.1), one process: hostile ``column_crcs`` fields on
entries of few and of many chunks (the parser's per-chunk and columnar paths must refuse
the same fields, naming the JSON path), and settings of RESHARD_COLUMN_CHECKSUMS."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard import config
from reshard.errors import ConfigError
from tests.adversarial._state import rewrite_manifest
from tests.helpers.column_checks import column_checksums_on_small_boxes


def _many_chunks(tmp_path: Path, rows: int) -> tuple[Path, torch.Tensor, list[dict[str, Any]]]:
    """A checkpoint of one (rows, 64) tensor cut in column blocks and row runs, every
    chunk with column checksums in 64 parts."""
    full = torch.arange(rows * 64, dtype=torch.float32).reshape(rows, 64)
    saved = config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES
    config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = 2048, 256
    try:
        with column_checksums_on_small_boxes(64):
            reshard.save({"t": full}, tmp_path, column_blocks=4)
    finally:
        config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = saved
    chunks = json.loads((tmp_path / "manifest.json").read_text())["entries"][0]["chunks"]
    assert all("column_crcs" in c for c in chunks)
    return tmp_path, full, chunks


def _mutations(cc: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(name, new field, the JSON path suffix the refusal names)."""
    n = len(cc["crc32c"])
    out: list[tuple[str, Any, str]] = []

    def with_(**kw: Any) -> dict[str, Any]:
        d = copy.deepcopy(cc)
        d.update(kw)
        return d

    for bad in (True, 1, 0, 65537, "64", 64.0, None):
        out.append((f"parts={bad!r}", with_(parts=bad), "column_crcs.parts"))
    for bad in (0, -1, True, 2.0, "4", 2**70):
        out.append((f"rows={bad!r}", with_(rows=bad), "column_crcs.rows"))
    for name, crcs in (("one more", [*cc["crc32c"], 0]), ("one less", cc["crc32c"][:-1]),
                       ("empty", []), ("negative", [-1] * n), ("2**32", [2**32] * n),
                       ("bool", [True] * n), ("float", [1.5] * n), ("str", ["0"] * n),
                       ("not a list", {"0": 1}), ("null", None)):
        out.append((f"crc32c {name}", with_(crc32c=crcs), "column_crcs.crc32c"))
    out.append(("extra key", with_(extra=1), "column_crcs"))
    out.append(("missing rows", {"crc32c": cc["crc32c"], "parts": cc["parts"]}, "column_crcs"))
    for bad in (None, [], "x", 3):
        out.append((f"field {bad!r}", bad, "column_crcs"))
    return out


@pytest.mark.parametrize("rows", [40, 100, 1100], ids=["8 chunks", "over 8", "over 128"])
def test_every_path_refuses_a_malformed_field_naming_it(tmp_path: Path, rows: int) -> None:
    path, full, chunks = _many_chunks(tmp_path, rows)
    n = len(chunks)
    assert (n <= 8) if rows == 40 else (n > 128) if rows == 1100 else (8 < n < 128)
    original = (path / "manifest.json").read_bytes()
    failures = []
    for at in sorted({0, n // 2, n - 1}):
        for name, field, where in _mutations(chunks[at]["column_crcs"]):
            (path / "manifest.json").write_bytes(original)
            rewrite_manifest(path, lambda doc, at=at, field=field: doc["entries"][0]["chunks"][at]
                             .update(column_crcs=field))
            try:
                reshard.open(path).close()
                failures.append(f"chunk {at}: {name}: accepted")
            except reshard.CorruptCheckpointError as e:
                if f"entries[0].chunks[{at}].{where}" not in str(e):
                    failures.append(f"chunk {at}: {name}: {e}")
    (path / "manifest.json").write_bytes(original)
    assert not failures, "\n".join(failures)
    with reshard.open(path) as ck:
        assert torch.equal(ck.read("t", (slice(None), slice(3, 61))), full[:, 3:61])


@pytest.mark.parametrize("rows", [40, 100, 1100], ids=["8 chunks", "over 8", "over 128"])
def test_a_well_formed_but_wrong_field_fails_the_reads_of_its_tiles(tmp_path: Path, rows: int) -> None:
    """Checksums that parse but do not match the bytes (one changed): a read of that
    tile fails naming it; reads of other chunks, and of whole rows (frames), still
    succeed; verify reports it."""
    path, full, chunks = _many_chunks(tmp_path, rows)
    n = len(chunks)
    at = n // 2
    cc = chunks[at]["column_crcs"]
    (r0, c0), (nr, nc) = chunks[at]["offsets"], chunks[at]["sizes"]
    changed = dict(cc, crc32c=[cc["crc32c"][0] ^ 1, *cc["crc32c"][1:]])
    rewrite_manifest(path, lambda doc: doc["entries"][0]["chunks"][at].update(column_crcs=changed))
    with reshard.open(path) as ck:
        with pytest.raises(reshard.CorruptCheckpointError,
                           match=rf"'t'.*rows {r0}\.\.{r0 + cc['rows']} and columns {c0}\.\.{c0 + 1}\b"):
            ck.read("t", (slice(r0, r0 + 1), slice(c0, c0 + 1)))
        # The other tiles of that chunk, and whole rows, read exactly.
        assert torch.equal(ck.read("t", (slice(r0, r0 + nr), slice(c0 + 1, c0 + nc))),
                           full[r0:r0 + nr, c0 + 1:c0 + nc])
        assert torch.equal(ck.read("t", (slice(r0, r0 + nr),)), full[r0:r0 + nr])
        others = [c for i, c in enumerate(chunks) if i != at]
        o = others[-1]
        (a, b), (h, _) = o["offsets"], o["sizes"]
        assert torch.equal(ck.read("t", (slice(a, a + h), slice(b, b + 1))), full[a:a + h, b:b + 1])
    report = reshard.verify(path)
    assert not report.ok and [d.chunk_offsets for d in report.damaged] == [(r0, c0)]


@pytest.mark.parametrize("value", ["65537", "-1", "x", "", "2.0"])
def test_invalid_settings_are_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    full = torch.arange(300 * 1000, dtype=torch.float32).reshape(300, 1000)
    reshard.save({"t": full}, tmp_path)
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", value)
    with pytest.raises(ConfigError, match="RESHARD_COLUMN_CHECKSUMS"):
        reshard.save({"t": full + 1}, tmp_path)
    with pytest.raises(ConfigError, match="RESHARD_COLUMN_CHECKSUMS"):
        reshard.async_save({"t": full + 1}, tmp_path).result()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before
    monkeypatch.delenv("RESHARD_COLUMN_CHECKSUMS")
    got = {"t": torch.zeros(300, 1000)}
    reshard.load(got, tmp_path)
    assert torch.equal(got["t"], full)


@pytest.mark.parametrize("parts", [0, 1, 2, 64, 65536])
def test_every_valid_setting_reads_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: int
) -> None:
    full = torch.randn(300, 1000, generator=torch.Generator().manual_seed(parts))
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", str(parts))
    reshard.save({"t": full}, tmp_path)
    monkeypatch.delenv("RESHARD_COLUMN_CHECKSUMS")
    with reshard.open(tmp_path) as ck:
        (info,) = ck.info("t").chunks
        assert info.column_parts == (parts if parts > 1 else 0)
        for rows in (slice(None), slice(7, 8), slice(299, 300)):
            for lo, hi in ((0, 1), (999, 1000), (0, 500), (123, 877), (16, 32), (0, 1000)):
                assert torch.equal(ck.read("t", (rows, slice(lo, hi))), full[rows, lo:hi]), (rows, lo, hi)
        assert torch.equal(ck.read("t", (5, 17)), full[5, 17])
    assert reshard.verify(tmp_path).ok


def _largest_reads(monkeypatch: pytest.MonkeyPatch, under: list[str]) -> list[int]:
    """The sizes of the reads from local checkpoints whose folder ends with ``under[0]``."""
    from reshard.storage.local import LocalStore

    sizes: list[int] = []
    real = LocalStore.read_into

    def read_into(self: Any, name: str, offset: int, out: Any) -> Any:
        if str(self.location).endswith(under[0]):
            sizes.append(memoryview(out).nbytes)
        return real(self, name, offset, out)

    monkeypatch.setattr(LocalStore, "read_into", read_into)
    return sizes


BATCH = 64 * 1024


@pytest.mark.parametrize(("name", "shape", "parts"), [
    ("many parts: runs of 1.2 MB", (300, 1000), 65536),
    ("rows wider than a batch", (3, 300_000), 2),
    ("3-D, 64 parts", (64, 320, 17), 64),
])
def test_verify_and_convert_check_tiles_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, shape: tuple[int, ...], parts: int
) -> None:
    """Column checksums are checked (verify) and computed (convert) reading about a batch
    at a time, however long a run of rows is, and still find a damaged byte."""
    import importlib

    from reshard.interop.convert import convert
    from reshard.transfer import column_reads

    full = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", str(parts))
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(BATCH // 4))
    src = tmp_path / "src"
    reshard.save({"t": full}, src)
    saved = json.loads((src / "manifest.json").read_text())["entries"][0]["chunks"][0]["column_crcs"]
    assert saved["parts"] == parts
    monkeypatch.setattr(importlib.import_module("reshard.verify"), "READ_BATCH_NBYTES", BATCH)
    monkeypatch.setattr(column_reads, "READ_NBYTES", BATCH)
    under = ["src"]
    sizes = _largest_reads(monkeypatch, under)
    assert reshard.verify(src).ok
    assert max(sizes) <= BATCH, max(sizes)
    # convert computes the same checksums from the bytes it wrote, as boundedly.
    sizes.clear()
    under[0] = "dst"
    convert(str(src), str(tmp_path / "dst"))
    assert max(sizes) <= BATCH, max(sizes)
    again = json.loads((tmp_path / "dst" / "manifest.json").read_text())["entries"][0]["chunks"][0]
    assert again["column_crcs"] == saved
    # A byte flipped in the last row's last column: verify names that tile.
    chunk = json.loads((src / "manifest.json").read_text())["entries"][0]["chunks"][0]
    data = src / "data" / Path(json.loads((src / "manifest.json").read_text())["files"][0]).name
    at = chunk["offset"] + chunk["raw_nbytes"] - 1
    with open(data, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    report = reshard.verify(src)
    width = shape[1]
    assert any(f"columns {width - len(torch.chunk(full, parts, dim=1)[-1][0])}..{width}" in d.message
               for d in report.damaged), report.damaged
    with reshard.open(src) as ck:
        assert torch.equal(ck.read("t", (slice(None), slice(0, 1))), full[:, :1])
        with pytest.raises(reshard.CorruptCheckpointError, match="column tile"):
            ck.read("t", (slice(None), slice(width - 1, width)))


def test_a_manifest_naming_runs_of_any_length_is_checked_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rows`` far beyond the chunk (one run, well formed) with wrong checksums: verify
    reports the tiles reading about a batch at a time; reads of them fail."""
    import importlib

    full = torch.randn(300, 1000, generator=torch.Generator().manual_seed(2))
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(BATCH // 4))
    reshard.save({"t": full}, tmp_path)
    rewrite_manifest(tmp_path, lambda doc: doc["entries"][0]["chunks"][0].update(
        column_crcs={"crc32c": [0, 0], "parts": 2, "rows": 10**12}))
    monkeypatch.setattr(importlib.import_module("reshard.verify"), "READ_BATCH_NBYTES", BATCH)
    sizes = _largest_reads(monkeypatch, [str(tmp_path)])
    report = reshard.verify(tmp_path)
    assert [d.chunk_offsets for d in report.damaged] == [(0, 0)]
    assert "rows 0..300 and columns 0..500" in report.damaged[0].message
    assert max(sizes) <= BATCH, max(sizes)
    with reshard.open(tmp_path) as ck:
        with pytest.raises(reshard.CorruptCheckpointError, match="rows 0..300 and columns 500..1000"):
            ck.read("t", (slice(None), slice(600, 700)))
        assert torch.equal(ck.read("t", (slice(5, 9),)), full[5:9])  # frames: whole rows


def _fill_columns(path: Path, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
    """Columns ``[lo, hi)`` of "t" read into a destination of ``dtype`` (what a load into
    a converted Shard(1) does), through the read path directly."""
    from reshard.core.layout import Box
    from reshard.transfer.read import Target, fill

    with reshard.open(path) as ck:
        entry = ck._entry("t")  # type: ignore[attr-defined]
        shape = entry.shape
        box = Box((0, lo, *[0] * (len(shape) - 2)), (shape[0], hi - lo, *shape[2:]))
        dest = torch.zeros(box.sizes, dtype=dtype)
        fill(ck._store, [Target(entry=entry, box=box, tensor=dest)], threads=2,  # type: ignore[attr-defined]
             max_piece_nbytes=1 << 20)
    return dest


@pytest.mark.parametrize(("name", "shape", "parts"), [
    ("rows wider than the stage", (3, 300_000), 2),
    ("tiles of many rows", (700, 1000), 2),
    ("3-D", (64, 320, 17), 3),
])
def test_tiles_converted_on_the_way_are_staged_in_bounded_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, shape: tuple[int, ...], parts: int
) -> None:
    """A column read into a destination of another dtype stages a tile at most
    STAGE_NBYTES at a time, exactly, and still fails on a damaged byte of the tile."""
    from reshard.transfer import column_reads

    full = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", str(parts))
    reshard.save({"t": full}, tmp_path)
    monkeypatch.delenv("RESHARD_COLUMN_CHECKSUMS")
    limit = 16 * 1024
    monkeypatch.setattr(column_reads, "STAGE_NBYTES", limit)
    staged: list[int] = []
    real = column_reads._scratch

    def scratch(slot: int, nbytes: int) -> Any:
        staged.append(nbytes)
        return real(slot, nbytes)

    monkeypatch.setattr(column_reads, "_scratch", scratch)
    width = shape[1]
    first = len(torch.chunk(full, parts, dim=1)[0][0])
    for lo, hi in ((0, first), (first, width), (1, 2), (first - 1, first + 1)):
        got = _fill_columns(tmp_path, lo, hi, torch.float64)
        assert torch.equal(got, full[:, lo:hi].double()), (lo, hi)
    assert staged and max(staged) <= limit, max(staged)
    # The last byte of the chunk (last row, last column) damaged: its tile fails.
    doc = json.loads((tmp_path / "manifest.json").read_text())
    chunk = doc["entries"][0]["chunks"][0]
    with open(tmp_path / doc["files"][chunk["file"]], "r+b") as f:
        f.seek(chunk["offset"] + chunk["raw_nbytes"] - 1)
        byte = f.read(1)
        f.seek(chunk["offset"] + chunk["raw_nbytes"] - 1)
        f.write(bytes([byte[0] ^ 4]))
    last = width - len(torch.chunk(full, parts, dim=1)[-1][0])
    with pytest.raises(reshard.CorruptCheckpointError, match=rf"'t'.*columns {last}\.\.{width} "):
        _fill_columns(tmp_path, first, width, torch.float64)
    assert torch.equal(_fill_columns(tmp_path, 0, first, torch.float64), full[:, :first].double())


def _tile_crcs_of(full: torch.Tensor, chunk: dict[str, Any]) -> list[int]:
    """The tile checksums of ``chunk`` of ``full``, from torch.chunk and the values."""
    import crc32c
    import numpy as np

    cc = chunk["column_crcs"]
    box = full[tuple(slice(o, o + s) for o, s in zip(chunk["offsets"], chunk["sizes"]))]
    (c0, nc) = chunk["offsets"][1], chunk["sizes"][1]
    starts = np.cumsum([0] + [p.shape[1] for p in torch.chunk(full, cc["parts"], dim=1)])
    bounds = [0, *[int(s) - c0 for s in starts if c0 < s < c0 + nc], nc]
    return [crc32c.crc32c(box[a:a + cc["rows"], lo:hi].contiguous().view(-1).view(torch.uint8)
                          .numpy().tobytes())
            for a in range(0, chunk["sizes"][0], cc["rows"]) for lo, hi in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_convert_from_dcp_and_from_reshard_writes_exact_tile_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: int
) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    from reshard.cli import main

    g = torch.Generator().manual_seed(blocks)
    state = {"w": torch.randn(700, 1001, generator=g),
             "c": torch.randn(500, 301, generator=g, dtype=torch.complex64),
             "e": torch.randint(0, 1000, (300, 7, 130), generator=g)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"))
    monkeypatch.setenv("RESHARD_COLUMN_CHECKSUMS", "3")
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "r1"), "--quiet",
                 "--column-blocks", str(blocks)]) == 0
    assert main(["convert", str(tmp_path / "r1"), str(tmp_path / "r2"), "--quiet"]) == 0
    for out in ("r1", "r2"):
        doc = json.loads((tmp_path / out / "manifest.json").read_text())
        checked = 0
        for e in doc["entries"]:
            for c in e.get("chunks", []):
                if "column_crcs" in c:
                    checked += 1
                    assert c["column_crcs"]["parts"] == 3
                    assert c["column_crcs"]["crc32c"] == _tile_crcs_of(state[e["key"][0]], c), (out, e["key"])
        # Blocks cut where the 3 parts are cut: no chunk crosses a cut, none carries them.
        assert bool(checked) == (blocks != 3), out
        with reshard.open(tmp_path / out) as ck:
            for k, v in state.items():
                w = v.shape[1]
                for lo, hi in ((0, w // 3), (w // 3, w), (w - 1, w), (1, w - 1)):
                    got = ck.read(k, (slice(None), slice(lo, hi)))
                    assert torch.equal(got, v[:, lo:hi]), (out, k, lo, hi)
        assert reshard.verify(tmp_path / out).ok


@pytest.mark.parametrize("rows", [40, 100, 1100], ids=["8 chunks", "over 8", "over 128"])
def test_the_field_on_a_compressed_chunk_is_refused_on_every_path(tmp_path: Path, rows: int) -> None:
    full = torch.arange(rows * 64, dtype=torch.float32).reshape(rows, 64)
    saved = config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES
    config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = 2048, 256
    try:
        reshard.save({"t": full}, tmp_path, column_blocks=4, codec="zstd")
    finally:
        config.COLUMN_TILE_NBYTES, config.COLUMN_TILE_MIN_NBYTES = saved
    chunks = json.loads((tmp_path / "manifest.json").read_text())["entries"][0]["chunks"]
    at = len(chunks) - 1
    (nr, nc) = chunks[at]["sizes"]
    # A field that would be well formed on a raw chunk crossing the cut at column 32.
    c0 = chunks[at]["offsets"][1]
    segs = 2 if c0 < 32 < c0 + nc else 1
    field = {"crc32c": [0] * nr * segs, "parts": 2, "rows": 1}
    rewrite_manifest(tmp_path, lambda doc: doc["entries"][0]["chunks"][at].update(column_crcs=field))
    with pytest.raises(reshard.CorruptCheckpointError,
                       match=rf"entries\[0\]\.chunks\[{at}\]\.column_crcs: only chunks stored raw"):
        reshard.open(tmp_path)


def test_random_boxes_of_random_layouts_read_exactly_and_never_pass_a_damaged_element(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random shapes (2-D to 4-D), parts, dtypes, destination boxes and dtypes, staging
    limits down to one byte (pieces of one column), tiles of a few bytes: every read is
    exact; then one stored byte is flipped and every read whose box holds that element
    fails (through tiles or frames); the others read exactly or fail."""
    import random

    from reshard.core.layout import Box
    from reshard.transfer import column_reads
    from reshard.transfer.read import Target, fill

    rng = random.Random(11)
    problems = []
    for it in range(60):
        ndim = rng.choice([2, 2, 3, 4])
        shape = tuple(rng.randint(1, 9) for _ in range(ndim))
        parts = rng.choice([2, 3, 4, 5, 16])
        dtype = rng.choice([torch.float32, torch.int16, torch.bool, torch.float64, torch.bfloat16])
        full = torch.arange(torch.Size(shape).numel()).reshape(shape)
        full = (full % 2 == 0) if dtype == torch.bool else (full % 200).to(dtype)
        path = tmp_path / str(it)
        monkeypatch.setattr(column_reads, "STAGE_NBYTES", rng.choice([1, 7, 64, 4 << 20]))
        with column_checksums_on_small_boxes(parts):
            reshard.save({"t": full}, path)
        boxes = []
        for _ in range(12):
            lo = [rng.randint(0, s - 1) for s in shape]
            boxes.append(Box(tuple(lo), tuple(rng.randint(1, s - a) for a, s in zip(lo, shape))))
        doc = json.loads((path / "manifest.json").read_text())
        chunk = doc["entries"][0]["chunks"][0]
        element = [rng.randrange(s) for s in shape]
        for damaged in (False, True):
            if damaged:
                # The chunk is the whole tensor (one process): flip one byte of one element.
                flat = 0
                for i, s in zip(element, shape):
                    flat = flat * s + i
                at = chunk["offset"] + flat * full.element_size()
                with open(path / doc["files"][chunk["file"]], "r+b") as f:
                    f.seek(at)
                    byte = f.read(1)
                    f.seek(at)
                    f.write(bytes([byte[0] ^ 1]))
            with reshard.open(path) as ck:
                entry = ck._entry("t")  # type: ignore[attr-defined]
                for box in boxes:
                    holds = all(o <= e < o + s for e, o, s in zip(element, box.offsets, box.sizes))
                    for ddt in (full.dtype, torch.float64):
                        dest = torch.zeros(box.sizes, dtype=ddt)
                        tag = (shape, parts, dtype, ddt, box, damaged)
                        try:
                            fill(ck._store, [Target(entry=entry, box=box, tensor=dest)],  # type: ignore[attr-defined]
                                 threads=rng.choice([1, 3]), max_piece_nbytes=1 << 20)
                        except reshard.CorruptCheckpointError:
                            # A read of other elements of the damaged tile or frame
                            # fails too: checks cover whole tiles and frames.
                            if not damaged:
                                problems.append((tag, "refused"))
                            continue
                        if damaged and holds:
                            problems.append((tag, "a damaged element passed"))
                        elif not torch.equal(dest, full[box.slices()].to(ddt)):
                            problems.append((tag, "values differ"))
    assert not problems, "\n".join(map(str, problems[:20]))


def test_segments_are_counted_without_walking_every_cut() -> None:
    """segments/segment_count agree with cutting at every cut of the width, and a chunk
    claiming 65,536 parts of a huge width parses in constant time (each walked all
    65,535 cuts: a manifest of 100k such chunks took ~8 minutes to parse)."""
    import random
    import time

    from reshard.core.column_checks import cuts, segment_count, segments
    from reshard.format.column_crcs import parse_column_crcs

    rng = random.Random(5)
    for _ in range(3000):
        width = rng.randint(1, 400)
        parts = rng.randint(2, 500)
        lo = rng.randrange(width)
        size = rng.randint(1, width - lo)
        inner = [c - lo for c in cuts(width, parts) if lo < c < lo + size]
        bounds = [0, *inner, size]
        want = list(zip(bounds[:-1], bounds[1:]))
        assert segments(lo, size, width, parts) == want, (lo, size, width, parts)
        assert segment_count(lo, size, width, parts) == len(want)
    t0 = time.perf_counter()
    for i in range(3000):
        with pytest.raises(reshard.CorruptCheckpointError, match="expected a list of 1 checksums"):
            parse_column_crcs({"crc32c": [], "parts": 65536, "rows": 1}, shape=(1, 10**12),
                              offsets=(0, 7 * i), sizes=(1, 1), identity=True, path="x")
    assert time.perf_counter() - t0 < 2.0  # walking every cut: ~15 s
