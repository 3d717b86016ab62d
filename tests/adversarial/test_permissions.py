"""Read-only and unreadable checkpoints: a save that cannot write fails with a
StorageError naming the path and leaves the previous checkpoint loadable; an unreadable
manifest or data file is a StorageError naming it, from load, open and verify.

As root, permissions do not bind; the scenario then runs in a child process stripped of
the capabilities that bypass them (setpriv), and is skipped where that is not possible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def scenario(root: str) -> None:
    """Run every case under ``root``; raise AssertionError naming the first that fails."""
    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "512"
    import reshard
    from reshard.cli import main
    from tests.adversarial._state import data_files, load_version, make_state

    path = os.path.join(root, "ckpt")
    reshard.save(make_state(1), path)
    os.chmod(path, 0o555)
    os.chmod(os.path.join(path, "data"), 0o555)
    try:
        assert load_version(path) == 1  # read-only checkpoints load
        for save in (lambda: reshard.save(make_state(2), path),
                     lambda: reshard.async_save(make_state(2), path).result()):
            try:
                save()
                raise AssertionError("a save into a read-only checkpoint succeeded")
            except reshard.StorageError as e:
                assert path in str(e) and "Permission denied" in str(e), e
            assert load_version(path) == 1
        os.chmod(os.path.join(path, "data"), 0o755)  # data writable, the commit is not
        try:
            reshard.save(make_state(2), path)
            raise AssertionError("a save that cannot commit succeeded")
        except reshard.StorageError as e:
            assert "manifest.json" in str(e), e
        assert load_version(path) == 1
    finally:
        os.chmod(path, 0o755)
        os.chmod(os.path.join(path, "data"), 0o755)
    reshard.save(make_state(3), path)  # the next save cleans up and commits
    (file,) = data_files(path)
    os.chmod(file, 0)
    for call in (lambda: load_version(path), lambda: reshard.open(path).read("w")):
        try:
            call()
            raise AssertionError("an unreadable data file loaded")
        except reshard.StorageError as e:
            assert os.path.basename(file) in str(e) and "Permission denied" in str(e), e
    report = reshard.verify(path)
    assert not report.ok and all("Permission denied" in d.message for d in report.damaged)
    assert main(["verify", path]) == 1
    reshard.save(make_state(4), path)  # a save over it works (the old file is only deleted)
    assert load_version(path) == 4
    os.chmod(os.path.join(path, "manifest.json"), 0)
    for call in (lambda: load_version(path), lambda: reshard.open(path), lambda: reshard.verify(path)):
        try:
            result = call()
        except reshard.StorageError as e:
            assert "manifest.json" in str(e) and "Permission denied" in str(e), e
            continue
        assert not result.ok and "Permission denied" in result.damaged[0].message  # verify
    assert main(["inspect", path]) == 1


def test_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o777)
    if os.geteuid() != 0:
        scenario(str(root))
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to bind")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    code = f"from tests.adversarial.test_permissions import scenario; scenario({str(root)!r})"
    run = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner",
                          sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=180, cwd=os.getcwd())
    if run.returncode != 0 and "setpriv" in run.stderr and "Traceback" not in run.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stdout + run.stderr
