"""save(..., column_blocks=k) in one process, at the real tile sizes: every tensor comes
back exactly (dtypes, 2-D to 4-D, boxes just under and at 1 MiB, boxes over 16 MiB cut
into row runs, non-contiguous and conjugate views, numpy arrays), the manifest holds
exactly layout.column_tiles of each box, the option and RESHARD_COLUMN_BLOCKS are
validated naming themselves, and verify / inspect / convert handle such checkpoints."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from reshard import config
from reshard.cli import main as cli_main
from reshard.core.layout import Box, column_tiles, full_box
from reshard.errors import ConfigError
from tests.helpers.files import xor_byte

MIB = 1 << 20


def pattern(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Values that make any misplaced element visible (exact in the dtype)."""
    n = math.prod(shape)
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype in (torch.bfloat16, torch.float16):
        # Random 8-bit integers times random powers of two: exact, and not periodic.
        mant = torch.randint(-128, 128, (n,), generator=g).double()
        scale = torch.pow(2.0, torch.randint(-8, 8, (n,), generator=g).double())
        return (mant * scale).to(dtype).reshape(shape)
    if dtype.is_complex:
        re = torch.arange(n, dtype=torch.float32) + seed
        return torch.complex(re, -re - 0.5).to(dtype).reshape(shape)
    return (torch.arange(n, dtype=torch.int64) + seed).to(dtype).reshape(shape)


def bits_equal(a: Any, b: Any) -> bool:
    a, b = torch.as_tensor(a).resolve_conj(), torch.as_tensor(b).resolve_conj()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                            b.contiguous().reshape(-1).view(torch.uint8)))


def expected_chunks(box: Box, itemsize: int, blocks: int) -> list[Box]:
    if box.numel * itemsize < config.COLUMN_TILE_MIN_NBYTES or blocks == 1:
        return [box]
    return column_tiles(box, itemsize, blocks, config.COLUMN_TILE_NBYTES)


def chunk_boxes(path: Path, key: str) -> list[Box]:
    with reshard.open(path) as ck:
        return sorted((Box(c.offsets, c.sizes) for c in ck.info(key).chunks),
                      key=lambda b: (b.offsets, b.sizes))


# (key, shape, dtype): sizes chosen around the 1 MiB and 16 MiB thresholds.
CASES = [
    ("f32_below_1mib", (255, 1024), torch.float32),  # 1020 KiB: stays one chunk
    ("f32_at_1mib", (256, 1024), torch.float32),  # exactly 1 MiB: cut
    ("f32_1001_cols", (300, 1001), torch.float32),
    ("bf16_2d", (700, 1000), torch.bfloat16),
    ("i64_2d", (400, 333), torch.int64),
    ("bool_2d", (1100, 1000), torch.bool),
    ("c64_2d", (170, 777), torch.complex64),
    ("f32_3d", (64, 17, 260), torch.float32),
    ("i64_4d", (8, 9, 10, 200), torch.int64),
    ("f32_one_col_rows_over_16mib", (4200, 1, 1024), torch.float32),  # one part, 16.4 MiB
    ("f32_over_32mib", (2100, 4096), torch.float32),  # blocks of 16.4 MiB: row runs
    ("f32_1d", (300_000,), torch.float32),  # one dim: never cut
    ("f32_empty", (0, 1 << 20), torch.float32),
]


@pytest.fixture(scope="module")
def sources() -> dict[str, torch.Tensor]:
    return {key: pattern(shape, dtype, seed=i) for i, (key, shape, dtype) in enumerate(CASES)}


@pytest.mark.parametrize("blocks", [2, 3])
def test_round_trip_and_manifest_tiles(tmp_path: Path, sources: dict[str, torch.Tensor],
                                       blocks: int) -> None:
    state: dict[str, Any] = dict(sources)
    # Non-contiguous sources: a column-major copy, a strided slice, a conjugate view.
    g = sources["f32_1001_cols"]
    state["f32_colmajor"] = g.t().contiguous().t()
    state["f32_strided"] = torch.stack([g, g], dim=-1)[..., 1]
    c = sources["c64_2d"]
    state["c64_conj_view"] = torch.conj(c.conj().resolve_conj())
    assert state["c64_conj_view"].is_conj() and not state["f32_colmajor"].is_contiguous()
    state["np_f32"] = sources["f32_at_1mib"].numpy().copy()
    state["np_fortran_i64"] = np.asfortranarray(sources["i64_2d"].numpy())
    state["np_bool"] = sources["bool_2d"].numpy().copy()
    reshard.save(state, tmp_path / "ck", column_blocks=blocks)

    want = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in state.items()}
    row_runs = 0
    for key, w in want.items():
        got = chunk_boxes(tmp_path / "ck", key)
        itemsize = w.element_size()
        assert got == sorted(expected_chunks(full_box(tuple(w.shape)), itemsize, blocks),
                             key=lambda b: (b.offsets, b.sizes)) or w.numel() == 0, key
        if w.dim() >= 2 and w.numel():
            parts = torch.chunk(torch.arange(w.shape[1]), blocks)
            if w.numel() * itemsize // w.shape[1] * len(parts[0]) > config.COLUMN_TILE_NBYTES:
                assert len(got) > len(parts), (key, got)  # row runs happened
                row_runs += 1
    assert row_runs >= 1
    assert len(chunk_boxes(tmp_path / "ck", "f32_below_1mib")) == 1
    assert len(chunk_boxes(tmp_path / "ck", "f32_at_1mib")) == blocks
    assert len(chunk_boxes(tmp_path / "ck", "f32_1d")) == 1

    out = {k: (np.zeros_like(v) if isinstance(v, np.ndarray) else torch.zeros(v.shape, dtype=v.dtype))
           for k, v in state.items()}
    reshard.load(out, tmp_path / "ck")
    bad = [k for k in state if not bits_equal(out[k], want[k])]
    assert not bad, bad
    # Partial reads through reshard.open: a column range across the blocks and a row range.
    with reshard.open(tmp_path / "ck") as ck:
        for key in ("f32_1001_cols", "bf16_2d", "f32_over_32mib", "i64_4d"):
            w = want[key]
            n1 = w.shape[1]
            assert bits_equal(ck.read(key, (slice(None), slice(n1 // 3, n1 - 1))),
                              w[:, n1 // 3:n1 - 1]), key
            assert bits_equal(ck.read(key, (slice(3, 5),)), w[3:5]), key


def test_env_variable_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = pattern((512, 1024), torch.float32)  # 2 MiB
    monkeypatch.setenv("RESHARD_COLUMN_BLOCKS", "4")
    reshard.save({"x": x}, tmp_path / "env")
    assert [b.sizes for b in chunk_boxes(tmp_path / "env", "x")] == [(512, 256)] * 4
    reshard.save({"x": x}, tmp_path / "arg1", column_blocks=1)  # the argument wins
    assert len(chunk_boxes(tmp_path / "arg1", "x")) == 1
    reshard.async_save({"x": x}, tmp_path / "async").result()
    assert len(chunk_boxes(tmp_path / "async", "x")) == 4
    monkeypatch.delenv("RESHARD_COLUMN_BLOCKS")
    reshard.save({"x": x}, tmp_path / "default")
    assert len(chunk_boxes(tmp_path / "default", "x")) == 1
    for name in ("env", "arg1", "async", "default"):
        out = {"x": torch.zeros_like(x)}
        reshard.load(out, tmp_path / name)
        assert torch.equal(out["x"], x), name


@pytest.mark.parametrize("value", [0, -1, 1025, 2.0, True, False, "2", np.int64(2) * 0.5])
def test_invalid_argument(tmp_path: Path, value: Any) -> None:
    reshard.save({"x": torch.arange(4.0)}, tmp_path / "ck")  # a previous checkpoint stays whole
    for call in (reshard.save, lambda *a, **k: reshard.async_save(*a, **k).result()):
        with pytest.raises(ConfigError, match="column_blocks") as e:
            call({"x": torch.zeros(4)}, tmp_path / "ck", column_blocks=value)
        assert isinstance(e.value, ValueError) and repr(value) in str(e.value)
    out = {"x": torch.zeros(4)}
    reshard.load(out, tmp_path / "ck")
    assert torch.equal(out["x"], torch.arange(4.0))


@pytest.mark.parametrize("raw", ["0", "-3", "1025", "two", "2.0", ""])
def test_invalid_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RESHARD_COLUMN_BLOCKS", raw)
    for call in (reshard.save, lambda *a, **k: reshard.async_save(*a, **k).result()):
        with pytest.raises(ConfigError, match="RESHARD_COLUMN_BLOCKS"):
            call({"x": torch.zeros(4)}, tmp_path / "ck")
    assert not (tmp_path / "ck" / "manifest.json").exists()
    # An explicit valid argument does not read the variable.
    reshard.save({"x": torch.zeros(4)}, tmp_path / "ck", column_blocks=2)


def test_limits_accepted(tmp_path: Path) -> None:
    x = pattern((64, 4096), torch.float32)  # 1 MiB
    for k in (1, 1024):
        reshard.save({"x": x}, tmp_path / f"k{k}", column_blocks=k)
        out = {"x": torch.zeros_like(x)}
        reshard.load(out, tmp_path / f"k{k}")
        assert torch.equal(out["x"], x)
    assert len(chunk_boxes(tmp_path / "k1024", "x")) == 1024


def test_cli_verify_inspect_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = pytest.importorskip("safetensors.torch")
    state = {"w": pattern((300, 1001), torch.float32), "b": pattern((700, 1000), torch.bfloat16),
             "v": pattern((100,), torch.int64), "step": 7}
    ck = tmp_path / "ck"
    reshard.save(state, ck, column_blocks=3)
    assert cli_main(["verify", str(ck)]) == 0
    assert cli_main(["inspect", str(ck), "--chunks"]) == 0
    text = capsys.readouterr().out
    assert "offsets=[0, 334] sizes=[300, 334]" in text and "offsets=[0, 668] sizes=[300, 333]" in text
    # Convert to safetensors and to a reshard checkpoint: every element comes through.
    assert cli_main(["convert", str(ck), str(tmp_path / "out.safetensors"), "--quiet"]) == 0
    loaded = st.load_file(str(tmp_path / "out.safetensors"))
    for key in ("w", "b", "v"):
        assert bits_equal(loaded[key], state[key]), key
    assert cli_main(["convert", str(ck), str(tmp_path / "copy"), "--quiet", "--codec", "zstd"]) == 0
    out: dict[str, Any] = {"w": torch.zeros(300, 1001), "b": torch.zeros(700, 1000, dtype=torch.bfloat16),
                           "v": torch.zeros(100, dtype=torch.int64), "step": None}
    reshard.load(out, tmp_path / "copy")
    assert out["step"] == 7 and all(bits_equal(out[k], state[k]) for k in ("w", "b", "v"))
    capsys.readouterr()

    # A flipped byte in the last tile of "w": verify names it; a load of those columns
    # raises naming the key, one of the first columns still reads.
    with reshard.open(ck) as opened:
        last = max(opened.info("w").chunks, key=lambda c: c.offsets[1])
        manifest = json.loads((ck / "manifest.json").read_text())
    entry = next(e for e in manifest["entries"] if e["key"] == ["w"] or e["key"] == "w")
    assert len(entry["chunks"]) == 3
    raw = next(c for c in entry["chunks"] if list(c["offsets"]) == list(last.offsets))
    xor_byte(str(ck / last.file), int(raw["offset"]) + 5, 0x10)
    assert cli_main(["verify", str(ck)]) == 1
    report = capsys.readouterr().out
    assert "damaged" in report and os.path.basename(last.file) in report
    with reshard.open(ck) as opened:
        with pytest.raises(reshard.CorruptCheckpointError, match="'w'"):
            opened.read("w", (slice(None), slice(700, 1001)))
        assert torch.equal(opened.read("w", (slice(None), slice(0, 600))), state["w"][:, :600])


@pytest.mark.parametrize("codec", ["zstd", "shuffle", "planes"])
def test_codecs(tmp_path: Path, codec: str) -> None:
    """Each tile is its own chunk, its codec bound to the element size: compressed tiles
    come back exactly, whole and as column ranges that cross the blocks."""
    from reshard.codecs import PlanesZstdCodec, ShuffleZstdCodec

    arg: Any = {"zstd": "zstd", "shuffle": ShuffleZstdCodec(), "planes": PlanesZstdCodec()}[codec]
    state = {"f32": pattern((300, 1001), torch.float32, 1), "bf16": pattern((700, 1000), torch.bfloat16, 2),
             "c64": pattern((170, 777), torch.complex64, 3), "bool": pattern((1100, 1000), torch.bool, 4),
             "i64_3d": pattern((20, 33, 260), torch.int64, 5)}
    reshard.save(state, tmp_path / "ck", column_blocks=3, codec=arg)
    out = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}
    reshard.load(out, tmp_path / "ck")
    assert all(bits_equal(out[k], state[k]) for k in state)
    with reshard.open(tmp_path / "ck") as ck:
        for key, want in state.items():
            assert len(ck.info(key).chunks) == 3, key
            n1 = want.shape[1]
            got = ck.read(key, (slice(1, None), slice(n1 // 4, n1 - n1 // 5)))
            assert bits_equal(got, want[1:, n1 // 4:n1 - n1 // 5]), key
    assert cli_main(["verify", str(tmp_path / "ck")]) == 0


@pytest.mark.parametrize("threads", ["1", "4"])
def test_many_strided_views_through_the_reused_copy_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    # Strided views over 1 MiB are copied into a ring of reused buffers on the pool while
    # the previous one is written: a buffer reused too early would show as wrong values.
    from reshard.transfer import write

    monkeypatch.setenv("RESHARD_IO_THREADS", threads)
    monkeypatch.setattr(write._CopyRing, "MAX_NBYTES", 3 * MIB)
    sd: dict[str, Any] = {}
    for i in range(14):
        rows = 600 + 37 * i  # sizes differ, so the buffers are grown and reused
        base = pattern((rows, 520), torch.float32, seed=i)
        sd[f"v{i}"] = base.t() if i % 3 else base[:, 1:513]
    sd["big"] = pattern((1200, 700), torch.float32, seed=99).t()  # over MAX_NBYTES: copied whole
    sd["conj"] = pattern((700, 300), torch.complex64, seed=7).conj()
    reshard.save(sd, tmp_path / "ck")
    out = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}
    reshard.load(out, tmp_path / "ck")
    for k, v in sd.items():
        assert torch.equal(out[k], v.resolve_conj()), k
