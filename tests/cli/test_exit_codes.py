"""One meaning per exit status across subcommands: 3 "no checkpoint at PATH" from inspect,
verify and convert alike (one line on stderr naming the path, no traceback), 1 a command
that failed (damaged input, a DST convert may not write), 2 usage errors (an empty path
included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reshard
from reshard.cli import EXIT_NOT_FOUND, main


def _no_checkpoints(root: Path) -> dict[str, Path]:
    (root / "empty").mkdir()
    (root / "uncommitted" / "data").mkdir(parents=True)
    (root / "uncommitted" / "data" / "20260101T000000-0123456789ab.0.bin").write_bytes(b"x")
    (root / "plain.txt").write_text("not a checkpoint")
    return {"missing": root / "missing", "empty": root / "empty",
            "uncommitted": root / "uncommitted", "file": root / "plain.txt"}


def test_no_checkpoint_is_exit_3_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect and convert exited 1 (as for a damaged checkpoint) where verify exited 3."""
    assert EXIT_NOT_FOUND == 3
    for name, path in _no_checkpoints(tmp_path).items():
        for command in (["inspect", str(path)], ["verify", str(path)],
                        ["convert", str(path), str(tmp_path / f"out-{name}"), "--quiet"]):
            assert main(command) == 3, (command, capsys.readouterr())
            captured = capsys.readouterr()
            assert captured.out == "", (command, captured.out)
            err = captured.err
            assert err.startswith(f"reshard {command[0]}: ") and err.count("\n") == 1, (command, err)
            assert str(path) in err and "Traceback" not in err and "Error:" not in err, (command, err)
            assert not (tmp_path / f"out-{name}").exists()


def test_damage_is_still_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint that is there but broken is not "no checkpoint": a reshard manifest
    that is not JSON, a DCP directory without its data file, and an HF index naming a shard
    that is missing (the last raised CheckpointNotFoundError for the shard, which now would
    read as 'no checkpoint at SRC')."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_bytes(b"{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save({"w": torch.arange(6.0)}, checkpoint_id=str(tmp_path / "dcp"))
    for f in (tmp_path / "dcp").glob("*.distcp"):
        f.unlink()
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"a": torch.arange(3.0)}, str(hf / "model-00001-of-00002.safetensors"))
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(reshard.CorruptCheckpointError, match="index.json names a file that is missing"):
        from reshard.interop.convert import convert

        convert(str(hf), str(tmp_path / "o"))
    cases = [["inspect", str(tmp_path / "bad")], ["verify", str(tmp_path / "bad")],
             ["convert", str(tmp_path / "bad"), str(tmp_path / "o1"), "--quiet"],
             ["convert", str(tmp_path / "dcp"), str(tmp_path / "o2"), "--quiet"],
             ["convert", str(hf), str(tmp_path / "o3"), "--quiet"],
             ["convert", str(hf / "model.safetensors.index.json"), str(tmp_path / "o4"), "--quiet"]]
    for command in cases:
        assert main(command) == 1, command
        captured = capsys.readouterr()
        assert "Traceback" not in captured.out + captured.err, command
    assert "model-00002-of-00002.safetensors" in captured.err


def test_convert_destinations_that_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DST under a file named an internal data or temporary file ('cannot create
    .../data/2026...bin', "No such file or directory: 'x.safetensors.tmp-1a2b'") or said
    only "[Errno 17] File exists: '...'"; SRC as DST said 'exists and is not an empty
    directory'. Now: exit 1 and one line naming DST."""
    reshard.save({"w": torch.arange(6.0)}, tmp_path / "ck")
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("y")
    (tmp_path / "d.safetensors").mkdir()
    cases = {
        str(tmp_path / "ck"): "SRC and DST are the same path",
        str(tmp_path / "full"): "full is a directory that is not empty",
        str(tmp_path / "file"): "file exists and is not a directory",
        str(tmp_path / "file" / "sub"):
            f"cannot create DST folder {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} exists and "
            "is not a directory",
        str(tmp_path / "file" / "x.safetensors"):
            f"cannot create DST folder {tmp_path / 'file'}: it exists and is not a directory",
        str(tmp_path / "full" / "a" / "b" / "c"):
            f"cannot create DST folder {tmp_path / 'full' / 'a' / 'b' / 'c'}: {tmp_path / 'full' / 'a'} "
            "exists and is not a directory",
        str(tmp_path / "d.safetensors"): f"cannot write {tmp_path / 'd.safetensors'}: Is a directory",
    }
    for dst, words in cases.items():
        assert main(["convert", str(tmp_path / "ck"), dst, "--quiet"]) == 1, dst
        err = capsys.readouterr().err
        assert err.startswith("reshard convert: ") and err.count("\n") == 1, (dst, err)
        assert words in err and ".tmp-" not in err and "/data/" not in err, (dst, err)
    assert sorted(os.listdir(tmp_path / "full")) == ["a"] and os.listdir(tmp_path / "d.safetensors") == []
    # A folder that may not be written (as root, permissions do not stop a write: /proc does).
    if os.path.isdir("/proc/self"):
        for dst in ("/proc/self/reshard-out", "/proc/self/reshard-out.safetensors"):
            assert main(["convert", str(tmp_path / "ck"), dst, "--quiet"]) == 1
            err = capsys.readouterr().err
            assert dst in err and err.count("\n") == 1 and ".tmp-" not in err, err


def test_empty_paths_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`reshard convert "$SRC" out` with SRC unset converted the current directory (and
    inspect/verify of "" exited 1, demo --workdir "" failed in os.makedirs)."""
    reshard.save({"w": torch.arange(3)}, tmp_path / "ck")
    for command in (["inspect", ""], ["verify", ""], ["convert", "", str(tmp_path / "out")],
                    ["convert", str(tmp_path / "ck"), ""], ["demo", "--workdir", ""]):
        assert main(command) == 2, command
        assert "the path is empty" in capsys.readouterr().err, command
    assert not (tmp_path / "out").exists()


def test_demo_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["demo", "extra"]) == 2
    assert main(["demo", "--workdir"]) == 2
    capsys.readouterr()
    for workdir, words in ((tmp_path / "file", "file: it exists"),
                           (tmp_path / "file" / "sub", "sub: Not a directory")):
        assert main(["demo", "--workdir", str(workdir)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("reshard demo: StorageError: cannot use --workdir") and err.count("\n") == 1
        assert words in err and "Errno" not in err, err


def test_exit_codes_are_in_the_help() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for command in ([], ["inspect"], ["verify"], ["convert"], ["demo"]):
        run = subprocess.run([sys.executable, "-m", "reshard.cli", *command, "--help"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        text = " ".join(run.stdout.split())
        if command != ["demo"]:
            assert "3 no checkpoint at" in text or "3 when PATH holds no checkpoint" in text, (command, text)
        assert "2 usage error" in text or "2 on a usage error" in text, (command, text)
