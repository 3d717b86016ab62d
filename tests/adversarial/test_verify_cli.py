"""``reshard verify PATH``: exit 0 intact, 1 damaged (naming what), 2 usage error, 3 no
checkpoint at PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import reshard
from reshard.cli import main

from ._state import chunk_map, data_files, make_state


def test_verify_intact_and_damaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reshard.save(make_state(1), tmp_path, codec="zstd")
    assert main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "9 keys" in out
    (file,) = data_files(tmp_path)
    _, a, b, key = chunk_map(tmp_path)[0]
    with open(file, "r+b") as f:
        f.seek((a + b) // 2)
        byte = f.read(1)
        f.seek((a + b) // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and f"key '{key}'" in out and os.path.basename(file) in out and "CRC" in out


def test_verify_usage(tmp_path: Path) -> None:
    assert main(["verify"]) == 2
    assert main(["verify", "a", "b"]) == 2
    assert main([]) == 2
    assert main(["no-such-command"]) == 2


def test_verify_of_no_checkpoint_is_not_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing path, an empty folder, a folder of an uncommitted save and a file printed
    "DAMAGED (1 problem)" and exited 1, as a damaged checkpoint does: now reshard.verify
    raises CheckpointNotFoundError naming the path, and the command says so on stderr, prints
    no report, and exits 3."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "uncommitted" / "data").mkdir(parents=True)
    (tmp_path / "uncommitted" / "data" / "20260101T000000-0123456789ab.0.bin").write_bytes(b"x")
    (tmp_path / "a_file").write_bytes(b"not a checkpoint")
    for name in ("nothing", "empty", "uncommitted", "a_file"):
        path = str(tmp_path / name)
        with pytest.raises(reshard.CheckpointNotFoundError) as e:
            reshard.verify(path)
        assert path in str(e.value), name
        assert main(["verify", path]) == 3, name
        captured = capsys.readouterr()
        assert captured.out == "", (name, captured.out)
        assert "DAMAGED" not in captured.err and captured.err.count("\n") == 1, (name, captured.err)
        assert captured.err.startswith("reshard verify: ") and path in captured.err, (name, captured.err)
        assert ("no reshard checkpoint at" in captured.err) == (name != "a_file"), captured.err
    # Damage still exits 1: a manifest that is there but unreadable is not "no checkpoint".
    (tmp_path / "empty" / "manifest.json").write_bytes(b"{not json")
    assert not reshard.verify(tmp_path / "empty").ok
    assert main(["verify", str(tmp_path / "empty")]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_verify_progress_and_leftovers(tmp_path: Path) -> None:
    reshard.save(make_state(1), tmp_path)
    (tmp_path / "data" / "20260101T000000-0123456789ab.0.bin").write_bytes(b"left by a killed save")
    calls: list[tuple[int, int]] = []
    report = reshard.verify(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.frames > report.chunks > 0
    assert any("20260101T000000-0123456789ab.0.bin" in w for w in report.warnings)
    assert calls and calls[-1][0] == calls[-1][1] == report.bytes_checked
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_verify_command_line_subprocess(tmp_path: Path) -> None:
    """The real command line: progress bar forced on, exit code from the process."""
    reshard.save(make_state(1), tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-m", "reshard.cli", "verify", str(tmp_path), "--progress"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "intact" in run.stdout and "100%" in run.stderr


def test_verify_exit_1_on_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reshard.save(make_state(1), tmp_path)
    os.unlink(data_files(tmp_path)[0])
    assert main(["verify", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().out


def test_bytes_appended_to_a_data_file_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify said 'intact' with no word of bytes appended after a data file's last chunk
    (loads still read exactly, so it stays exit 0): now a warning names the file."""
    from reshard.interop.convert import convert

    reshard.save(make_state(1), tmp_path / "ck", codec="zstd")
    convert(str(tmp_path / "ck"), str(tmp_path / "converted"), column_blocks=2)
    golden = Path(__file__).parent.parent / "compat"
    for path in (tmp_path / "ck", tmp_path / "converted", *sorted(golden.glob("golden_v1*"))):
        report = reshard.verify(path)
        assert report.ok and report.warnings == (), (path, report.warnings)
    (file,) = data_files(tmp_path / "ck")
    size = os.path.getsize(file)
    with open(file, "ab") as f:
        f.write(b"xyz")
    assert main(["verify", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "intact" in out
    name = f"data/{os.path.basename(file)}"
    assert f"warning: {name} has 3 bytes after its last chunk (it ends at byte {size})" in out
