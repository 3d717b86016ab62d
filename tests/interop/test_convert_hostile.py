"""``reshard convert`` outside the happy path: sources whose names collide, targets that
already hold an earlier conversion. A conversion either writes a checkpoint that reads
back exactly or fails naming the key or file; it never reports success for output that
cannot be read or that silently mixes in an earlier conversion."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

import reshard
import torch
from reshard.cli import main
from reshard.errors import CorruptCheckpointError
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
