"""A folder that held a reshard checkpoint and then got a torch.distributed.checkpoint
saved into it: DCP leaves manifest.json behind, and reshard read that older checkpoint
without a word. Such a folder is now refused; removing the stale checkpoint resolves it.
(A reshard save into a DCP folder is refused: test_dcp_and_reshard_in_one_folder.py.)"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

import reshard
from reshard.cli import main


def _dcp_save(state: dict[str, torch.Tensor], path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=str(path))


def test_dcp_saved_over_a_reshard_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reshard.save({"w": torch.arange(4.0)}, tmp_path)
    _dcp_save({"w": torch.arange(4.0) + 100}, tmp_path)
    manifest, metadata = tmp_path / "manifest.json", tmp_path / ".metadata"
    os.utime(manifest, ns=(1, os.stat(metadata).st_mtime_ns - 10**9))  # a second older
    want = r"torch\.distributed\.checkpoint \(\.metadata\).*remove the stale"
    with pytest.raises(reshard.CheckpointError, match=want):
        reshard.load({"w": torch.zeros(4)}, tmp_path)
    with pytest.raises(reshard.CheckpointError, match=want):
        reshard.open(tmp_path)
    report = reshard.verify(tmp_path)
    assert not report.ok and ".metadata" in report.damaged[0].message
    assert main(["inspect", str(tmp_path)]) == 1
    assert "torch.distributed.checkpoint (.metadata)" in capsys.readouterr().err

    # Removing the stale manifest resolves it: the DCP checkpoint is read.
    manifest.rename(tmp_path / "old-manifest.json")
    got = {"w": torch.zeros(4)}
    reshard.load(got, tmp_path)
    assert torch.equal(got["w"], torch.arange(4.0) + 100)
