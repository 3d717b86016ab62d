"""A folder holding both a reshard manifest and a DCP .metadata is refused, naming both:
which one is current cannot be told, and loading either silently could give stale values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import reshard
from reshard.cli import main
from reshard.errors import UnsupportedFormatError


def _both(tmp_path: Path) -> str:
    path = str(tmp_path / "ckpt")
    reshard.save({"w": torch.zeros(3)}, path)
    dcp.save({"w": torch.ones(3)}, checkpoint_id=path)  # a newer DCP save into the same folder
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_load_open_verify_convert_refuse_a_folder_with_both(tmp_path: Path) -> None:
    path = _both(tmp_path)
    attempts = {
        "load": lambda: reshard.load({"w": torch.empty(3)}, path),
        "open": lambda: reshard.open(path),
    }
    for name, attempt in attempts.items():
        with pytest.raises(UnsupportedFormatError, match=r"\.metadata.*manifest\.json") as e:
            attempt()
        assert path in str(e.value), name
    report = reshard.verify(path)  # reports damage instead of raising
    assert not report.ok and ".metadata" in str(report.damaged[0].message)
    assert main(["verify", path]) != 0
    assert main(["convert", path, str(tmp_path / "out")]) != 0
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_save_into_a_dcp_folder_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "ckpt")
    dcp.save({"w": torch.ones(3)}, checkpoint_id=path)
    before = sorted(os.listdir(path))
    with pytest.raises(UnsupportedFormatError, match="save to another path"):
        reshard.save({"w": torch.zeros(3)}, path)
    assert sorted(os.listdir(path)) == before
    loaded = {"w": torch.empty(3)}
    reshard.load(loaded, path)  # the DCP checkpoint is untouched
    assert torch.equal(loaded["w"], torch.ones(3))
