"""reshard convert --column-blocks from a DCP checkpoint and from a column-blocked reshard
checkpoint: every element comes through, the chunks are the column tiles of each source
chunk, and a DCP blob (decoded whole on every read) is decoded once, not once per tile:
a 1 GiB tensor cut into 64 tiles decoded 64 GiB."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.core.layout import Box, column_tiles
from reshard.interop import convert as cv
from reshard.interop import dcp as rdcp

TILE, TILE_MIN = 20_000, 4096


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(300 * 70, dtype=torch.float32).reshape(300, 70),
            "c": torch.complex(torch.arange(40 * 9 * 5.0), -torch.arange(40 * 9 * 5.0))
            .to(torch.complex64).reshape(40, 9, 5),
            "b": (torch.arange(500 * 33) % 251).to(torch.bfloat16).reshape(500, 33),
            "small": torch.arange(6.0).reshape(2, 3), "v": torch.arange(5000.0)}


def _tiles(path: Path, key: str) -> list[Box]:
    with reshard.open(path) as ck:
        return sorted((Box(c.offsets, c.sizes) for c in ck.info(key).chunks),
                      key=lambda b: (b.offsets, b.sizes))


def _expected(boxes: list[Box], itemsize: int, blocks: int) -> list[Box]:
    out = [t for b in boxes for t in ([b] if b.numel * itemsize < TILE_MIN
                                      else column_tiles(b, itemsize, blocks, TILE))]
    return sorted(out, key=lambda b: (b.offsets, b.sizes))


def _load(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in like.items()}
    reshard.load(out, path)
    return out


@pytest.fixture()
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv.config, "COLUMN_TILE_MIN_NBYTES", TILE_MIN)
    monkeypatch.setattr(cv.config, "COLUMN_TILE_NBYTES", TILE)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("zstd", [False, True])
def test_dcp_source_decoded_once_per_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           zstd: bool) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    sd = _state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "dcp"),
                                                     _extensions=[ZStandard()] if zstd else None))
    decoded: list[int] = []
    real = rdcp.DcpTorchSaveCodec.decode

    def counted(self: Any, data: memoryview) -> memoryview:
        decoded.append(len(data))
        return real(self, data)

    monkeypatch.setattr(rdcp.DcpTorchSaveCodec, "decode", counted)
    for blocks in (2, 4):
        decoded.clear()
        out = tmp_path / f"k{blocks}"
        cv.convert(str(tmp_path / "dcp"), str(out), column_blocks=blocks)
        # One decode per DCP blob (one per tensor here), whatever the number of tiles.
        assert len(decoded) == len(sd), (blocks, len(decoded))
        got = _load(out, sd)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        for key, t in sd.items():
            want = _expected([Box((0,) * t.dim(), tuple(t.shape))], t.element_size(), blocks)
            assert _tiles(out, key) == want, key
        assert len(_tiles(out, "w")) > blocks  # cut in row runs too


@pytest.mark.usefixtures("small_tiles")
def test_column_blocked_source_recut(tmp_path: Path) -> None:
    """A checkpoint saved with 3 blocks, converted with 2: each source tile is cut again."""
    sd = _state()
    reshard.save(sd, tmp_path / "k3", column_blocks=3)
    cv.convert(str(tmp_path / "k3"), str(tmp_path / "k2"), column_blocks=2, codec="zstd")
    got = _load(tmp_path / "k2", sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    for key, t in sd.items():
        assert _tiles(tmp_path / "k2", key) == _expected(
            _tiles(tmp_path / "k3", key), t.element_size(), 2), key
    assert reshard.verify(tmp_path / "k2").ok


@pytest.mark.usefixtures("small_tiles")
def test_safetensors_source(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = _state()
    save_file(sd, str(tmp_path / "m.safetensors"))
    cv.convert(str(tmp_path / "m.safetensors"), str(tmp_path / "k3"), column_blocks=3)
    got = _load(tmp_path / "k3", sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    for key, t in sd.items():
        want = _expected([Box((0,) * t.dim(), tuple(t.shape))], t.element_size(), 3)
        assert _tiles(tmp_path / "k3", key) == want, key


def test_out_of_range_column_blocks_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value exits 2 (usage) before anything is read or written, like argparse's."""
    from reshard.cli import main

    reshard.save({"w": torch.ones(4, 4)}, tmp_path / "src")
    for bad in ("0", "2000", "-3"):
        assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out"),
                     "--column-blocks", bad]) == 2
        err = capsys.readouterr().err
        assert "--column-blocks" in err and bad in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
