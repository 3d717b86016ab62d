"""A RESHARD_* variable reshard cannot use is a ConfigError (a CheckpointError and a
ValueError) naming it, from every entry point: ``reshard.open(...).read`` and a load
or save with RESHARD_MAP_READS raised a bare ValueError, and ``reshard verify`` printed a
traceback, while other variables came out of load and save as CheckpointError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reshard
from reshard.errors import ConfigError

BAD = [("RESHARD_IO_THREADS", "abc"), ("RESHARD_FRAME_RAW_NBYTES", "0"),
       ("RESHARD_MAP_READS", "yes"), ("RESHARD_MAX_PIECE_NBYTES", "-5")]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_every_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    reshard.save({"w": torch.arange(10.0)}, tmp_path / "ck")
    monkeypatch.setenv(name, value)
    calls = {
        "save": lambda: reshard.save({"w": torch.zeros(10)}, tmp_path / "other"),
        "load": lambda: reshard.load({"w": torch.zeros(10)}, tmp_path / "ck"),
        "read": lambda: reshard.open(tmp_path / "ck").read("w"),
    }
    raised = 0
    for what, call in calls.items():
        try:
            call()
        except reshard.CheckpointError as e:
            assert isinstance(e, ValueError) and name in str(e), (what, e)
            raised += 1
    assert raised >= 1  # each variable is read by at least one of them
    with pytest.raises(ConfigError, match=name):
        from reshard import config

        {"RESHARD_IO_THREADS": config.io_threads, "RESHARD_FRAME_RAW_NBYTES": config.frame_raw_nbytes,
         "RESHARD_MAP_READS": config.map_reads, "RESHARD_MAX_PIECE_NBYTES": config.max_piece_nbytes}[name]()


def test_cli_prints_one_line(tmp_path: Path) -> None:
    reshard.save({"w": torch.arange(10.0)}, tmp_path / "ck")
    for command in ("verify", "inspect"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), RESHARD_MAP_READS="yes")
        run = subprocess.run([sys.executable, "-m", "reshard.cli", command, str(tmp_path / "ck")],
                             capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 1, (command, run.stdout, run.stderr)
        text = run.stdout + run.stderr
        assert "RESHARD_MAP_READS='yes' must be 0 or 1" in text and "Traceback" not in text
