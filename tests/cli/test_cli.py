"""The command line as a user meets it: inspect, demo, usage errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reshard
from reshard.cli import main


def test_inspect_lists_keys_shapes_and_totals(tmp_path, capsys):
    path = tmp_path / "ckpt"
    reshard.save({"w": torch.arange(12.0).reshape(3, 4), "opt": {"step": 3},
                  "arr": np.arange(5, dtype=np.int8)}, path)
    assert main(["inspect", str(path), "--chunks"]) == 0
    out = capsys.readouterr().out
    assert "w" in out and "float32" in out and "[3, 4]" in out
    assert "opt.step" in out and "arr" in out and "int8" in out
    assert "3 keys, 2 chunks" in out
    assert "offsets=[0, 0] sizes=[3, 4]" in out


def test_inspect_missing_checkpoint_exits_3_naming_path(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("reshard inspect: no reshard checkpoint at") and "nothing" in err


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_is_a_usage_error():
    assert main(["frobnicate"]) == 2


@pytest.mark.dist
def test_demo_passes_end_to_end(tmp_path, capsys):
    # A --workdir checkpoint is kept without --keep (--help says so), and the demo says
    # where: it used to print the 'reshard inspect' hint only with --keep.
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "demo passed" in out and f"reshard inspect {tmp_path / 'checkpoint'}" in out
    assert out.count("every value matches") == 2
    with reshard.open(tmp_path / "checkpoint") as ckpt:
        assert ckpt.manifest.world_size == 4
        assert "tensors.model.embed.weight" in ckpt.keys()


def test_inspect_escapes_unprintable_key_names(tmp_path, capsys):
    reshard.save({"a\x1b[2Jb": torch.ones(2), "line\nbreak": 3, "café": torch.zeros(1)}, tmp_path)
    assert main(["inspect", str(tmp_path), "--chunks"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "line\nbreak" not in out
    assert "a\\x1b[2Jb" in out and "line\\nbreak" in out and "café" in out
