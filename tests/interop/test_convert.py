"""reshard convert: safetensors export/import in bounded pieces, round trips, CLI."""

from __future__ import annotations

import argparse
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import reshard
from reshard.cli import main
from reshard.errors import CheckpointError, CorruptCheckpointError, UnsupportedFormatError
from reshard.interop import convert as cv
from reshard.interop.convert import convert, open_source, parse_size

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]


def _tensor(i: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    base = torch.arange(n, dtype=torch.float64) + 7 * i
    if dtype == torch.bool:
        return (base.to(torch.int64) % 3 == 0).reshape(shape)
    if dtype.is_complex:
        return torch.complex(base, -base).to(dtype).reshape(shape)
    if dtype in (torch.uint8, torch.int8):
        return (base.to(torch.int64) % 100).to(dtype).reshape(shape)
    return base.to(dtype).reshape(shape)


def _state() -> dict[str, Any]:
    shapes = [(3, 5), (17,), (), (2, 3, 4), (0, 4), (64, 33)]
    tensors = {f"t{i}_{str(d)[6:]}": _tensor(i, d, shapes[i % len(shapes)]) for i, d in enumerate(DTYPES)}
    return {"model": tensors, "opt": {"step": 12, "lr": 1e-3, "name": "sgd", "none": None,
                                      "blob": b"\xff\x00"}}


def _flat_tensors(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in sd["model"].items()}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, t in want.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape and torch.equal(got[k], t), k


@pytest.fixture()
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many pieces and frames per tensor so streaming boundaries are exercised."""
    monkeypatch.setenv("RESHARD_MAX_PIECE_NBYTES", "136")
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "48")


def test_reshard_to_safetensors_single_file(tmp_path: Path, small_pieces: None) -> None:
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    out = tmp_path / "model.safetensors"
    assert convert(str(tmp_path / "ck"), str(out)) == [str(out)]
    _assert_same(load_file(str(out)), _flat_tensors(sd))
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        values = json.loads(f.metadata()["reshard.values"])
    assert values["opt.step"] == {"type": "int", "value": 12}


def test_reshard_to_sharded_safetensors(tmp_path: Path) -> None:
    sd = _state()
    reshard.save(sd, tmp_path / "ck")
    written = convert(str(tmp_path / "ck"), str(tmp_path / "hf"), max_shard_nbytes=1000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(written) == len(set(index["weight_map"].values())) + 1 > 3
    got: dict[str, torch.Tensor] = {}
    for name in set(index["weight_map"].values()):
        part = load_file(str(tmp_path / "hf" / name))
        assert all(index["weight_map"][k] == name for k in part)
        got.update(part)
    _assert_same(got, _flat_tensors(sd))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in _flat_tensors(sd).values())
    # And back: the index (or its folder) converts to reshard with values intact.
    convert(str(tmp_path / "hf" / "model.safetensors.index.json"), str(tmp_path / "back"))
    _check_reshard(tmp_path / "back", sd)


def _check_reshard(path: Path, sd: dict[str, Any]) -> None:
    with reshard.open(path) as ck:
        _assert_same({k: ck.read(k) for k in ck.keys() if k.startswith("model.")}, _flat_tensors(sd))
        assert {k: ck.read(k) for k in ck.keys() if k.startswith("opt.")} == {
            f"opt.{k}": v for k, v in sd["opt"].items()}
    target = {"model": {k: torch.empty_like(v) for k, v in sd["model"].items()},
              "opt": {k: None for k in sd["opt"]}}
    reshard.load(target, path)
    _assert_same(_flat_tensors(target), _flat_tensors(sd))
    assert target["opt"] == sd["opt"]


def test_safetensors_from_hf_writer_to_reshard(tmp_path: Path, small_pieces: None) -> None:
    tensors = {k: v for k, v in _flat_tensors(_state()).items()}
    save_file(tensors, str(tmp_path / "in.safetensors"), metadata={"format": "pt"})
    assert main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "ck"), "--quiet",
                 "--codec", "zstd"]) == 0
    with reshard.open(tmp_path / "ck") as ck:
        got = {k: ck.read(k) for k in ck.keys()}
        # zstd shuffles elements wider than a byte (docs/FORMAT.md, codec shuffle-zstd).
        for k in ck.keys():
            info = ck.info(k)
            wide = info.dtype.itemsize > 1
            assert {c.codec for c in info.chunks} <= {"planes-zstd" if wide else "zstd"}, k
    _assert_same(got, tensors)


def test_dcp_round_trip_through_cli(tmp_path: Path, small_pieces: None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    sd = _state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "dcp"), _extensions=[ZStandard()]))
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "r1"), "--quiet"]) == 0
    assert main(["convert", str(tmp_path / "r1"), str(tmp_path / "m.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "r2"), "--to", "reshard"]) == 0
    _assert_same(load_file(str(tmp_path / "m.safetensors")), _flat_tensors(sd))
    for r in ("r1", "r2"):
        _check_reshard(tmp_path / r, sd)
    # DCP straight to safetensors works too (any readable source).
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "d.safetensors"), "--quiet"]) == 0
    _assert_same(load_file(str(tmp_path / "d.safetensors")), _flat_tensors(sd))


def test_reads_are_bounded_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_MAX_PIECE_NBYTES", "4096")
    big = torch.arange(64 * 1000, dtype=torch.float32).reshape(64, 1000)
    reshard.save({"big": big}, tmp_path / "ck")
    seen: list[int] = []
    real = cv.Source.read

    def spy(self: cv.Source, entry: Any, box: Any) -> memoryview:
        data = real(self, entry, box)
        seen.append(len(data))
        return data

    monkeypatch.setattr(cv.Source, "read", spy)
    convert(str(tmp_path / "ck"), str(tmp_path / "out.safetensors"))
    assert max(seen) <= 4096 and sum(seen) == big.nbytes and len(seen) >= 60
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["big"], big)
    seen.clear()
    convert(str(tmp_path / "out.safetensors"), str(tmp_path / "back"))
    assert max(seen) <= 4096 and sum(seen) == big.nbytes


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reshard.save({"w": torch.arange(3)}, tmp_path / "ck")
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 3
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "ck")]) == 1
    assert "SRC and DST are the same path" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "full")]) == 1
    assert "is a directory that is not empty" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ck")]) == 2
    assert main(["convert", "a", "b", "--to", "onnx"]) == 2
    assert main(["convert", "a", "b", "--max-shard-size", "lots"]) == 2
    assert main(["convert", "a", "b", "--to", "reshard", "--max-shard-size", "1GB"]) == 2
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "o.safetensors")]) == 0


def test_unpicklable_dcp_value_is_refused(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.arange(3), "odd": {1, 2}}, checkpoint_id=str(tmp_path / "dcp"))
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "r")]) == 1
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "r"), "--allow-pickle"]) == 1
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("1024") == 1024
    assert parse_size("1.5K") == 1500
    for bad in ("", "-1", "5XB", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def _write_raw(path: Path, header: dict[str, Any] | bytes, data: bytes = b"") -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "error"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, CorruptCheckpointError),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, CorruptCheckpointError),
        ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, UnsupportedFormatError),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, CorruptCheckpointError),
        ({"a": [1, 2]}, b"", CorruptCheckpointError),
        (b"{not json", b"", CorruptCheckpointError),
        (b"[]", b"", CorruptCheckpointError),
        ({"__metadata__": {"reshard.values": '{"k": {"type": "pickle"}}'}}, b"", CorruptCheckpointError),
    ],
)
def test_hostile_safetensors_headers(tmp_path: Path, header: Any, data: bytes, error: type) -> None:
    _write_raw(tmp_path / "x.safetensors", header, data)
    with pytest.raises(error):
        open_source(str(tmp_path / "x.safetensors"))


def test_header_length_beyond_file(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CorruptCheckpointError, match="header length"):
        open_source(str(tmp_path / "x.safetensors"))
    (tmp_path / "y.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError):
        open_source(str(tmp_path / "y.safetensors"))


def test_convert_cuts_column_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cv.config, "COLUMN_TILE_MIN_NBYTES", 4096)
    monkeypatch.setattr(cv.config, "COLUMN_TILE_NBYTES", 20_000)
    sd = {"w": torch.arange(300 * 70, dtype=torch.float32).reshape(300, 70),
          "c": _tensor(3, torch.complex64, (40, 9, 5)),
          "small": torch.arange(6.0).reshape(2, 3), "v": torch.arange(5000.0), "step": 3}
    reshard.save(sd, tmp_path / "ck")
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "cb"), "--column-blocks", "4",
                 "--quiet"]) == 0
    ck = reshard.open(tmp_path / "cb")
    # w: 4 parts of 18/18/18/16 columns, each cut into row runs of at most 20,000 bytes.
    w = ck.info("w").chunks
    assert sorted({(c.offsets[1], c.sizes[1]) for c in w}) == [(0, 18), (18, 18), (36, 18), (54, 16)]
    assert all(c.raw_nbytes <= 20_000 for c in w) and len(w) > 4
    assert sorted({(c.offsets[1], c.sizes[1]) for c in ck.info("c").chunks}) == [(0, 3), (3, 3), (6, 3)]
    assert len(ck.info("small").chunks) == len(ck.info("v").chunks) == 1
    ck.close()
    out = {"w": torch.zeros(300, 70), "c": torch.zeros(40, 9, 5, dtype=torch.complex64),
           "small": torch.zeros(2, 3), "v": torch.zeros(5000), "step": None}
    reshard.load(out, tmp_path / "cb")
    for k in ("w", "c", "small", "v"):
        assert torch.equal(out[k], sd[k]), k
    assert out["step"] == 3
    assert main(["verify", str(tmp_path / "cb")]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "o.safetensors"),
                 "--column-blocks", "2"]) == 1
    assert "apply only to reshard output" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "x"), "--to", "safetensors",
                 "--column-blocks", "2"]) == 2
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "y"), "--column-blocks", "0"]) == 2
    assert "column_blocks=0" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
