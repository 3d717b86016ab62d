"""The command line outside the happy path: every subcommand's --help, odd paths, and a
failing demo. Exit 0 on success, 2 on usage errors, 1 with a one-line message (no
traceback) on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard import demo
from reshard.cli import main
from reshard.dist.local_world import WorldError


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "reshard.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_help_of_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["inspect"], ["verify"], ["convert"], ["demo"]):
        assert main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: reshard" + (f" {command[0]}" if command else ""))
    assert main(["inspect"]) == 2 and main(["inspect", "--nope", "x"]) == 2
    assert main(["verify", "--progress", "--no-progress"]) == 2


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "ckpt"
    reshard.save({"w": torch.arange(6.0).reshape(2, 3), "step": 1}, ckpt)
    (root / "empty").mkdir()
    (root / "plain.txt").write_text("not a checkpoint")
    return {"ckpt": ckpt, "root": root, "empty": root / "empty", "file": root / "plain.txt",
            "manifest": ckpt / "manifest.json", "data": ckpt / "data", "missing": root / "missing"}


@pytest.mark.parametrize("what", ["empty", "file", "manifest", "data", "missing"])
@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_paths_that_are_not_checkpoints(places: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                        command: str, what: str) -> None:
    # Both tell "no checkpoint here" (3) from "damaged" (1); inspect used to fail with 1.
    assert main([command, str(places[what])]) == 3
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert str(places[what]) in text and "Traceback" not in text


def test_inspect_and_verify_exit_0_in_a_real_process(places: dict[str, Path]) -> None:
    for command in ("inspect", "verify"):
        run = _run(command, str(places["ckpt"]))
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    run = _run("inspect", str(places["file"]))
    assert run.returncode == 3 and run.stderr.count("\n") == 1 and "plain.txt" in run.stderr


def test_demo_with_a_workdir_that_is_a_file(
    places: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Used to print the traceback of the 4 spawned ranks' StorageError."""
    assert main(["demo", "--workdir", str(places["file"])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reshard demo: StorageError") and "plain.txt" in err and err.count("\n") == 1


def test_demo_rank_failure_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(**_: object) -> int:
        raise WorldError("rank 2 failed:\nTraceback (most recent call last):\n  File \"x\", line 1\n"
                         "reshard.errors.StorageError: injected: no space left\n")

    monkeypatch.setattr(demo, "run_demo", fail)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err == "reshard demo: rank 2 failed: reshard.errors.StorageError: injected: no space left\n"


def test_a_file_is_not_a_checkpoint(places: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Used to say 'cannot open <file>/manifest.json: Not a directory'."""
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"\0" * 16)
    for path, hint in ((places["file"], False), (st, True), (places["manifest"], False)):
        with pytest.raises(reshard.CheckpointNotFoundError, match="is a file") as err:
            reshard.open(path)
        assert ("reshard convert" in str(err.value)) == hint
        assert main(["inspect", str(path)]) == 3
        assert "is a file" in capsys.readouterr().err


def test_output_into_a_closed_pipe(tmp_path: Path) -> None:
    """`reshard inspect X | head -1` printed a BrokenPipeError traceback once head had
    gone; now it stops quietly with 141, the status of a command killed by SIGPIPE."""
    reshard.save({f"layer{i}.weight": torch.arange(3) for i in range(1000)}, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for command in (["inspect", "--chunks"], ["verify"]):
        proc = subprocess.Popen([sys.executable, "-m", "reshard.cli", *command, str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        if command[0] == "inspect":
            assert proc.stdout.readline().startswith(b"key")
        proc.stdout.close()  # the reader goes away with ~150 KB unread (a pipe holds 64 KB)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.wait(timeout=120) == 141, err
        assert err == "", err


def test_ctrl_c_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a long convert printed a KeyboardInterrupt traceback; now one line
    and 130, and the unfinished output is gone so the same command can run again."""
    from reshard.interop import convert as convert_module

    src = tmp_path / "src"
    reshard.save({"a": torch.arange(10.0), "b": torch.arange(5)}, src)
    real = convert_module._write_tensor
    calls: list[int] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(convert_module, "_write_tensor", interrupted)
        assert main(["convert", str(src), str(tmp_path / "out"), "--quiet"]) == 130
    assert capsys.readouterr().err == "\nreshard convert: interrupted\n"
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(src), str(tmp_path / "out"), "--quiet"]) == 0


def test_inspect_of_a_dcp_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'saved by 1 rank(s), format 1.0, save id dcp-<random>' (a new id on every
    run) of the in-memory stand-in manifest, whatever the DCP save was."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save({"w": torch.arange(6.0).reshape(2, 3), "step": 3}, checkpoint_id=str(tmp_path))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split()[:7] == ["w", "float32", "[2,", "3]", "1", "24", "B"]
    last = out.strip().splitlines()[-1]
    assert last.endswith("a torch.distributed.checkpoint (DCP) directory"), last
    assert "rank" not in last and "save id" not in last


def test_a_folder_of_safetensors_points_at_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Hugging Face model folder said only that manifest.json and .metadata are missing."""
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "model.safetensors"))
    assert main(["inspect", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it holds .safetensors files, which reshard convert reads" in err
    (tmp_path / "model.safetensors").unlink()
    assert main(["inspect", str(tmp_path)]) == 3
    assert "safetensors files" not in capsys.readouterr().err


def test_verify_counts_problems_in_english(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'DAMAGED (1 problems)'."""
    (tmp_path / "manifest.json").write_bytes(b"{not json")
    assert main(["verify", str(tmp_path)]) == 1
    assert "DAMAGED (1 problem):" in capsys.readouterr().out


def test_convert_of_a_file_that_is_not_safetensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reshard convert pytorch_model.bin out` said only 'header length 5787... does not
    fit the 1563-byte file'."""
    torch.save({"w": torch.arange(3)}, tmp_path / "pytorch_model.bin")
    assert main(["convert", str(tmp_path / "pytorch_model.bin"), str(tmp_path / "out"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pytorch_model.bin is not a safetensors file" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"\0" * 4)  # named so: the plain error
    assert main(["convert", str(tmp_path / "bad.safetensors"), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "too short for a safetensors file" in err and "is not a safetensors file" not in err


def test_convert_of_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO source was reported as not existing (and is never opened: no hang)."""
    os.mkfifo(tmp_path / "x.safetensors")
    assert main(["convert", str(tmp_path / "x.safetensors"), str(tmp_path / "out"), "--quiet"]) == 3
    assert "x.safetensors: it is neither a regular file nor a directory" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "out"), "--quiet"]) == 3
    assert "no checkpoint at " in (err := capsys.readouterr().err) and "nothing: it does not exist" in err
