"""``reshard convert`` outside the happy path: sources whose names collide, targets that
already hold an earlier conversion. A conversion either writes a checkpoint that reads
back exactly or fails naming the key or file; it never reports success for output that
cannot be read or that silently mixes in an earlier conversion."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import reshard
from reshard.cli import main
from reshard.errors import CorruptCheckpointError, StorageError
from reshard.interop.convert import convert, open_source


def _write_raw(path: Path, header: dict[str, Any], data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _value_meta(values: dict[str, Any]) -> dict[str, str]:
    return {"reshard.values": json.dumps(values)}


def test_value_named_like_a_tensor_is_refused(tmp_path: Path) -> None:
    """A safetensors file whose reshard.values name a tensor of the file: converting it
    used to succeed and write a reshard checkpoint whose manifest then refused to parse
    (duplicate key); the source is refused instead, naming the key and the file."""
    src = tmp_path / "x.safetensors"
    _write_raw(src, {"__metadata__": _value_meta({"w": {"type": "int", "value": 5}}),
                     "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
               torch.arange(2.0).numpy().tobytes())
    with pytest.raises(CorruptCheckpointError, match="'w'.*x.safetensors|x.safetensors.*'w'"):
        open_source(str(src))
    assert main(["convert", str(src), str(tmp_path / "out"), "--quiet"]) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_index_value_named_like_a_tensor_or_a_shard_value_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    _write_raw(folder / "a.safetensors",
               {"__metadata__": _value_meta({"step": {"type": "int", "value": 1}}),
                "w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8))
    for clash in ("w", "step"):
        (folder / "model.safetensors.index.json").write_text(json.dumps({
            "metadata": {"reshard.values": {clash: {"type": "int", "value": 2}}},
            "weight_map": {"w": "a.safetensors"}}))
        with pytest.raises(CorruptCheckpointError, match=f"'{clash}'"):
            open_source(str(folder))
        assert main(["convert", str(folder), str(tmp_path / f"out-{clash}"), "--quiet"]) == 1
        assert not (tmp_path / f"out-{clash}" / "manifest.json").exists()


def _saved(path: Path, version: int) -> Path:
    reshard.save({"a": torch.arange(100.0) * version, "b": torch.arange(100.0) + version,
                  "c": torch.arange(100.0) - version, "step": version}, path)
    return path


def _read_back(folder: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    convert(str(folder), str(tmp_path / name))
    with reshard.open(tmp_path / name) as ck:
        return {k: ck.read(k) for k in ck.keys()}


def test_second_conversion_into_the_same_folder(tmp_path: Path) -> None:
    """Converting into a folder that holds an earlier conversion used to leave the earlier
    index (or shards) beside the new files: reading the folder back then returned the
    earlier checkpoint's values without a word. Now the stale files are refused by name;
    only a single file is replaced by a single file of the same name (a rename)."""
    v1, v2 = _saved(tmp_path / "v1", 1), _saved(tmp_path / "v2", 2)
    out = tmp_path / "out"
    convert(str(v1), str(out), max_shard_nbytes=500)  # 3 shards and an index
    with pytest.raises(StorageError, match="model.safetensors.index.json"):
        convert(str(v2), str(out), to="safetensors")  # one file: the old index would win
    assert main(["convert", str(v2), str(out), "--to", "safetensors", "--quiet"]) == 1
    assert _read_back(out, tmp_path, "back1")["step"] == 1  # the earlier output is untouched
    # Not even the same shards again: a failure half-way would leave old and new shards.
    with pytest.raises(StorageError, match="model-00001-of-00003.safetensors"):
        convert(str(v2), str(out), max_shard_nbytes=500)
    for name in os.listdir(out):
        os.unlink(out / name)
    convert(str(v2), str(out), max_shard_nbytes=500)  # an emptied folder is fine
    got = _read_back(out, tmp_path, "back2")
    assert got["step"] == 2 and torch.equal(got["a"], torch.arange(100.0) * 2)
    # A single file, then shards next to it: refused too (the single file is stale).
    single = tmp_path / "single"
    convert(str(v1), str(single), to="safetensors")
    with pytest.raises(StorageError, match="model.safetensors"):
        convert(str(v2), str(single), max_shard_nbytes=500)
    assert sorted(os.listdir(single)) == ["model.safetensors"]
    # Overwriting one named file with another conversion stays allowed (an atomic rename),
    # and files of other names in the folder are left alone.
    named = tmp_path / "named"
    named.mkdir()
    (named / "notes.txt").write_text("mine")
    convert(str(v1), str(named / "w.safetensors"))
    convert(str(v2), str(named / "w.safetensors"))
    assert torch.equal(load_file(str(named / "w.safetensors"))["a"], torch.arange(100.0) * 2)
    assert sorted(os.listdir(named)) == ["notes.txt", "w.safetensors"]


def test_failed_conversion_can_be_run_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A conversion that fails on a damaged source frame leaves DST as it found it (it
    used to leave DST/data/ behind, and the rerun then failed with 'exists and is not an
    empty directory'); once the source is repaired the same command succeeds."""
    src = _saved(tmp_path / "src", 3)
    (file,) = (src / "data").iterdir()
    good = file.read_bytes()
    damaged = bytearray(good)
    damaged[-10] ^= 1
    file.write_bytes(bytes(damaged))
    for dst, pre_made in ((tmp_path / "new", False), (tmp_path / "empty", True)):
        if pre_made:
            dst.mkdir()
        assert main(["convert", str(src), str(dst), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "CRC-32C" in err and "key 'c'" in err and err.count("\n") == 1
        assert (os.listdir(dst) == []) if pre_made else not dst.exists()
    file.write_bytes(good)
    assert main(["convert", str(src), str(tmp_path / "new"), "--quiet"]) == 0
    with reshard.open(tmp_path / "new") as ck:
        assert ck.read("step") == 3 and torch.equal(ck.read("c"), torch.arange(100.0) - 3)


def test_folder_missing_a_shard_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder of safetensors shards without an index and with shards missing (a
    download or a conversion cut short) was read as the smaller model its shards hold:
    converting it succeeded with a part of the keys. It is a damaged checkpoint now,
    naming the first missing shard; a complete set without its index still reads."""
    out = tmp_path / "shards"
    convert(str(_saved(tmp_path / "src", 4)), str(out), max_shard_nbytes=500)  # 3 shards
    os.unlink(out / "model.safetensors.index.json")
    back = _read_back(out, tmp_path, "whole")
    assert torch.equal(back["c"], torch.arange(100.0) - 4)
    os.unlink(out / "model-00002-of-00003.safetensors")
    with pytest.raises(CorruptCheckpointError,
                       match=r"holds only 2 of the 3 shards model-\*-of-00003\.safetensors "
                             r"\(model-00002-of-00003\.safetensors is missing\)"):
        open_source(str(out))
    assert main(["convert", str(out), str(tmp_path / "part"), "--quiet"]) == 1
    assert "model-00002-of-00003.safetensors is missing" in capsys.readouterr().err
    assert not (tmp_path / "part").exists()
    # Files that only look numbered, or one shard set whole beside another: read as before.
    os.rename(out / "model-00001-of-00003.safetensors", out / "model-1-of-1.safetensors")
    os.rename(out / "model-00003-of-00003.safetensors", out / "other.safetensors")
    got = _read_back(out, tmp_path, "renamed")
    assert got and set(got) < {"a", "b", "c", "step"}
    for key, value in got.items():
        assert torch.equal(value, back[key]) if isinstance(value, torch.Tensor) else value == back[key]


_F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
_DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize(("name", "header"), [
    ("deeply nested header", _DEEP.encode()),
    ("deeply nested object", b'{"a":' * 50000 + b"1" + b"}" * 50000),
    ("dtype a list", json.dumps({"a": dict(_F32, dtype=["F32"])}).encode()),
    ("dtype an object", json.dumps({"a": dict(_F32, dtype={})}).encode()),
    ("NaN offset", b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}'),
    ("deeply nested values", json.dumps({"__metadata__": {"reshard.values": _DEEP}}).encode()),
    ("NaN value", json.dumps({"__metadata__": {
        "reshard.values": '{"lr": {"type": "float", "value": NaN}}'}}).encode()),
])
def test_hostile_headers_are_checkpoint_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               name: str, header: bytes) -> None:
    """Headers that made the parser raise RecursionError or TypeError (a traceback from
    ``reshard convert``): CheckpointErrors naming the file, and exit 1 with one line."""
    src = tmp_path / "x.safetensors"
    src.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(reshard.CheckpointError, match="x.safetensors"):
        open_source(str(src))
    assert main(["convert", str(src), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "x.safetensors" in err and err.count("\n") == 1 and "Traceback" not in err


def test_hostile_index_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(_DEEP)
    with pytest.raises(CorruptCheckpointError, match="index.json is not JSON"):
        open_source(str(tmp_path))
    with pytest.raises(CorruptCheckpointError, match="index.json is not JSON"):
        open_source(str(tmp_path / "model.safetensors.index.json"))


def test_every_dtype_round_trips_through_every_format(tmp_path: Path) -> None:
    """Every dtype safetensors names (unsigned ints and float8 included), whole, 0-d and
    empty: reshard -> safetensors -> reshard and DCP -> reshard / safetensors, bit-exact.
    complex128, which safetensors lacks, is refused naming the key."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file as st_load

    from reshard.adapters.tensors import torch_dtype
    from reshard.interop.safetensors_io import TO_SAFETENSORS

    nested: dict[str, dict[str, torch.Tensor]] = {"m": {}, "z": {}, "e": {}}
    for i, name in enumerate(sorted(TO_SAFETENSORS)):
        dt = torch_dtype(name)
        base = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) + i
        if dt == torch.bool:
            t = base.long() % 3 == 0
        elif dt.is_complex:
            t = torch.complex(base, -base).to(dt)
        elif dt.is_floating_point:
            t = base.to(dt)
        else:
            t = (base.long() % 100).to(dt)
        nested["m"][name], nested["z"][name], nested["e"][name] = t, t[1, 2, 3].clone(), t[:, :0]
    flat = {f"{g}.{k}": v for g, d in nested.items() for k, v in d.items()}

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        def raw(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1).contiguous().view(torch.uint8) if x.numel() else x.reshape(-1)
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))

    def check_reshard(path: Path) -> None:
        with reshard.open(path) as ck:
            assert [k for k in flat if not same(ck.read(k), flat[k])] == []

    reshard.save(nested, tmp_path / "ck", codec="zstd")
    convert(str(tmp_path / "ck"), str(tmp_path / "a.safetensors"))
    got = st_load(str(tmp_path / "a.safetensors"))
    assert [k for k in flat if not same(got[k], flat[k])] == []
    convert(str(tmp_path / "a.safetensors"), str(tmp_path / "back"))
    check_reshard(tmp_path / "back")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(nested, checkpoint_id=str(tmp_path / "dcp"))
    convert(str(tmp_path / "dcp"), str(tmp_path / "from-dcp"), codec="zstd")
    check_reshard(tmp_path / "from-dcp")
    convert(str(tmp_path / "dcp"), str(tmp_path / "d.safetensors"))
    got = st_load(str(tmp_path / "d.safetensors"))
    assert [k for k in flat if not same(got[k], flat[k])] == []
    reshard.save({"c": torch.zeros(2, dtype=torch.complex128)}, tmp_path / "c128")
    with pytest.raises(reshard.UnsupportedValueError, match="'c'.*complex128"):
        convert(str(tmp_path / "c128"), str(tmp_path / "c.safetensors"))
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("url", ["s3://bucket/model.safetensors", "memory://bucket/m.safetensors",
                                 "simplecache::s3://bucket/ckpt/model.safetensors"])
def test_safetensors_urls_are_refused_not_written_as_local_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        url: str) -> None:
    """safetensors output is written to local paths only. An fsspec URL as DST used to
    become a local folder named after it (./s3:/bucket/...) and the command exited 0, as
    if the file had been uploaded. It is refused, naming the URL, before anything is
    opened (no network), and nothing is written."""
    monkeypatch.chdir(tmp_path)
    reshard.save({"x": torch.arange(4)}, "src")
    assert main(["convert", "src", url, "--quiet"]) == 1
    assert url in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["src"]
    with pytest.raises(reshard.CheckpointError, match=r"local paths only.*" + url.replace("::", ".*")
                       .replace(".", r"\.").replace(r"\.*", ".*")):
        convert("src", url)


def test_urls_are_not_local_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A reshard DST URL is written through fsspec (here memory://), not as a local folder
    named after it; and a local folder named like a URL (./memory:/...) does not make the
    URL a source: SRC is read through fsspec, where nothing is stored (exit 3)."""
    import uuid

    pytest.importorskip("fsspec")
    monkeypatch.chdir(tmp_path)
    url = f"memory://convert-hostile-{uuid.uuid4().hex[:8]}/ckpt"
    reshard.save({"x": torch.arange(4)}, "src")
    assert main(["convert", "src", url, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == url
    assert sorted(os.listdir(tmp_path)) == ["src"]
    with reshard.open(url) as ck:
        assert torch.equal(ck.read("x"), torch.arange(4))
    lookalike = url.replace("://", ":/") + "-local"
    reshard.save({"x": torch.arange(4)}, lookalike)
    assert main(["convert", url + "-local", "out", "--quiet"]) == 3
    assert url + "-local" in capsys.readouterr().err and not os.path.exists("out")


def test_file_urls_are_local_paths(tmp_path: Path) -> None:
    reshard.save({"x": torch.arange(4)}, tmp_path / "src")
    convert(f"file://{tmp_path / 'src'}", f"file://{tmp_path / 'out'}")
    convert(f"file://{tmp_path / 'out'}", f"file://{tmp_path / 'm.safetensors'}")
    assert torch.equal(load_file(str(tmp_path / "m.safetensors"))["x"], torch.arange(4))
    with reshard.open(tmp_path / "out") as ck:
        assert torch.equal(ck.read("x"), torch.arange(4))
