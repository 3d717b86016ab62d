"""File names in a manifest, and symlinks in a checkpoint, never reach outside it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import reshard
from reshard.format.manifest import Manifest

from ._state import blank_state, data_files, load_version, make_state, rewrite_manifest

HOSTILE_NAMES = [
    "../secret.bin", "data/../../secret.bin", "data/../manifest.json", "/etc/passwd",
    "data//x.bin", "data/./x.bin", "data/x/../../../secret.bin", "data\\..\\..\\secret.bin",
    "data/x.bin\n", "data/x\x00.bin", "data/" + "a" * 300, "", "data/", "data", "manifest.json",
    "data/.hidden", "data/-x", "./data/x.bin", "~/secret.bin", "data/sub/x.bin",
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ckpt"
    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "512"
    try:
        reshard.save(make_state(1), path)
    finally:
        del os.environ["RESHARD_FRAME_RAW_NBYTES"]
    return path


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_names_are_refused_by_the_parser(tmp_path: Path, template: Path, name: str) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(template, ckpt)
    (tmp_path / "secret.bin").write_bytes(Path(data_files(ckpt)[0]).read_bytes())

    def edit(doc: dict[str, Any]) -> None:
        doc["files"] = [name]

    rewrite_manifest(ckpt, edit)
    with pytest.raises(reshard.CorruptCheckpointError, match=r"files\[0\]"):
        Manifest.from_json((ckpt / "manifest.json").read_bytes())
    with pytest.raises(reshard.CorruptCheckpointError):
        reshard.load(blank_state(), ckpt)
    assert not reshard.verify(ckpt).ok


def test_store_refuses_escaping_names(tmp_path: Path) -> None:
    """The store itself (the last line of defence) refuses names that leave the directory."""
    from reshard.storage import LocalStore

    store = LocalStore(str(tmp_path / "ckpt"))
    for name in ("../x", "/etc/passwd", "data/../../x", "", "data//x", "./x"):
        with pytest.raises(reshard.CorruptCheckpointError, match="refusing"):
            store.read_bytes(name)
        with pytest.raises(reshard.CorruptCheckpointError, match="refusing"):
            store.open_writer(name)
        with pytest.raises(reshard.CorruptCheckpointError, match="refusing"):
            store.delete(name)


def test_symlinked_data_file_pointing_outside_is_refused(tmp_path: Path) -> None:
    """A data file replaced by a symlink to a file outside (with matching bytes, so the CRCs
    would pass) is refused: nothing outside the checkpoint is read."""
    ckpt = tmp_path / "ckpt"
    reshard.save(make_state(1), ckpt)
    (file,) = data_files(ckpt)
    outside = tmp_path / "outside.bin"
    shutil.move(file, outside)
    os.symlink(outside, file)
    with pytest.raises(reshard.CorruptCheckpointError, match="outside the checkpoint"):
        reshard.load(blank_state(), ckpt)
    with reshard.open(ckpt) as ck, pytest.raises(reshard.CorruptCheckpointError, match="outside"):
        ck.read("w")
    assert not reshard.verify(ckpt).ok
    # A symlink that stays inside the checkpoint is fine.
    os.unlink(file)
    inner = ckpt / "data" / "moved.bin"
    shutil.move(outside, inner)
    os.symlink("moved.bin", file)
    assert load_version(ckpt) == 1


def test_symlinked_data_folder_is_refused_for_load_and_save(tmp_path: Path) -> None:
    """A data/ that links elsewhere: loads refuse it, and a save refuses before writing, so
    it cannot empty the folder it points at (a save deletes files it does not reference)."""
    ckpt = tmp_path / "ckpt"
    reshard.save(make_state(1), ckpt)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(ckpt / "data", elsewhere)
    (elsewhere / "precious.txt").write_text("keep me")
    os.symlink(elsewhere, ckpt / "data")
    with pytest.raises(reshard.CorruptCheckpointError, match="outside"):
        reshard.load(blank_state(), ckpt)
    with pytest.raises(reshard.StorageError, match="symlink"):
        reshard.save(make_state(2), ckpt)
    assert sorted(os.listdir(elsewhere))[-1] == "precious.txt" and len(os.listdir(elsewhere)) == 2


def test_symlinked_checkpoint_root_is_allowed(tmp_path: Path) -> None:
    """``latest -> step-2`` is how people point at checkpoints: it must keep working."""
    real = tmp_path / "step-2"
    reshard.save(make_state(2), real)
    os.symlink(real, tmp_path / "latest")
    assert load_version(tmp_path / "latest") == 2
    reshard.save(make_state(3), tmp_path / "latest")
    assert load_version(real) == 3 and reshard.verify(tmp_path / "latest").ok


def test_path_with_a_nul_character(tmp_path: Path) -> None:
    """open() and verify() raised a bare ValueError ('embedded null byte'), save and load
    a CheckpointError that named no path."""
    bad = str(tmp_path / "a\0b")
    for call in (lambda: reshard.save({"a": 1}, bad), lambda: reshard.load({"a": 0}, bad),
                 lambda: reshard.open(bad), lambda: reshard.verify(bad)):
        with pytest.raises(reshard.CheckpointError, match=r"checkpoint path .*a\\x00b.* NUL"):
            call()
