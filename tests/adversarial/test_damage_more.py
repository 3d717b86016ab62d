"""Damage the other tests do not cover: the shuffle-zstd and plain zstd layouts, a data
file replaced by a folder or emptied, a manifest copied from another checkpoint, and
manifests of a later minor version with fields this reader does not know.

Each damage is refused by load, by ``reshard.open(...).read`` and by ``verify`` with a
CheckpointError naming the key and the file (never another exception, never values of
another save), and the checkpoint loads exactly once repaired.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

import reshard

from ._state import blank_state, chunk_map, data_files, load_version, make_state, rewrite_manifest

LAYOUTS = {"shuffle-zstd": reshard.ZstdCodec(planes=False), "zstd": reshard.ZstdCodec(shuffle=False)}


def _refused(path: Path, *, key: str | None, file: str, words: str = "") -> None:
    """load, open().read of every key and verify all refuse ``path``, naming key and file."""
    with pytest.raises(reshard.CorruptCheckpointError) as err:
        reshard.load(blank_state(), path)
    text = str(err.value)
    assert file in text and words in text, text
    if key is not None:
        assert f"'{key}'" in text or "key '" in text, text
    with reshard.open(path) as ck:
        failed = 0
        for k in ck.keys():
            try:
                ck.read(k)
            except reshard.CorruptCheckpointError as e:
                assert file in str(e) and f"'{k}'" in str(e), str(e)
                failed += 1
        assert failed >= 1
    report = reshard.verify(path)
    assert not report.ok and all(d.key and os.path.basename(d.file) == file for d in report.damaged)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_flips_and_cuts_in_other_zstd_layouts(tmp_path: Path, layout: str) -> None:
    reshard.save(make_state(1), tmp_path, codec=LAYOUTS[layout])
    with reshard.open(tmp_path) as ck:
        names = {c.codec for k in ck.keys() if ck.info(k).kind == "tensor" for c in ck.info(k).chunks}
    assert layout in names
    (file,) = data_files(tmp_path)
    base = os.path.basename(file)
    good = Path(file).read_bytes()
    chunks = chunk_map(tmp_path)
    rng = random.Random(7)
    for pos in sorted({rng.randrange(len(good)) for _ in range(40)} | {a for _, a, _, _ in chunks}):
        key = next(k for _, a, b, k in chunks if a <= pos < b)
        bad = bytearray(good)
        bad[pos] ^= 1 << (pos % 8)
        Path(file).write_bytes(bad)
        _refused(tmp_path, key=key, file=base)
    for cut in (0, 1, len(good) // 2, len(good) - 1):
        Path(file).write_bytes(good[:cut])
        _refused(tmp_path, key=None, file=base, words="truncated")
    Path(file).write_bytes(good)
    assert load_version(tmp_path) == 1 and reshard.verify(tmp_path).ok


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_data_file_replaced_by_a_folder_or_emptied(tmp_path: Path, codec: str | None) -> None:
    reshard.save(make_state(2), tmp_path, codec=codec)
    (file,) = data_files(tmp_path)
    good = Path(file).read_bytes()
    os.unlink(file)
    os.mkdir(file)
    (Path(file) / "inner").write_bytes(good)
    _refused(tmp_path, key=None, file=os.path.basename(file))
    shutil.rmtree(file)
    Path(file).write_bytes(b"")
    _refused(tmp_path, key=None, file=os.path.basename(file), words="truncated")
    Path(file).write_bytes(good)
    assert load_version(tmp_path) == 2


def test_manifest_of_another_checkpoint(tmp_path: Path) -> None:
    """A manifest copied over from another save names that save's files: refused as
    missing, never loaded from the files that are there."""
    reshard.save(make_state(1), tmp_path / "a")
    reshard.save(make_state(2), tmp_path / "b")
    shutil.copy(tmp_path / "b" / "manifest.json", tmp_path / "a" / "manifest.json")
    (missing,) = [os.path.basename(f) for f in data_files(tmp_path / "b")]
    _refused(tmp_path / "a", key=None, file=missing, words="missing")
    # Its data file copied along, it is checkpoint b, whole.
    shutil.copy(data_files(tmp_path / "b")[0], tmp_path / "a" / "data")
    assert load_version(tmp_path / "a") == 2


@pytest.mark.parametrize("edit", [
    lambda d: d.update(format_version=[1, 9]),
    lambda d: d.update(future_field={"x": [1, 2]}),
    lambda d: d["entries"][0].update(future_field="y"),
    lambda d: [c.update(future_field=3) for e in d["entries"] for c in e.get("chunks", [])],
    lambda d: d["codecs"][0].setdefault("configuration", {}).update(future_option=1)
    if d["codecs"][0]["name"] != "identity" else None,
], ids=["minor version", "top-level field", "entry field", "chunk field", "codec option"])
def test_later_minor_versions_load(tmp_path: Path, edit: Any) -> None:
    """Fields a later 1.x writer may add are ignored: the data loads exactly."""
    reshard.save(make_state(3), tmp_path, codec="zstd")
    rewrite_manifest(tmp_path, edit)
    assert load_version(tmp_path) == 3 and reshard.verify(tmp_path).ok


def test_later_major_version_is_refused_by_name(tmp_path: Path) -> None:
    reshard.save(make_state(3), tmp_path)
    rewrite_manifest(tmp_path, lambda d: d.update(format_version=[2, 0]))
    with pytest.raises(reshard.UnsupportedFormatError, match="format_version 2.0.*upgrade reshard"):
        reshard.load(blank_state(), tmp_path)
    with pytest.raises(reshard.UnsupportedFormatError):
        reshard.open(tmp_path)
    report = reshard.verify(tmp_path)
    assert not report.ok and "2.0" in report.damaged[0].message


def test_data_folder_replaced_by_a_file(tmp_path: Path) -> None:
    """load raised NotADirectoryError from a stat and verify from listing data/ (a
    traceback from ``reshard verify``): both are CheckpointErrors naming the path."""
    reshard.save(make_state(1), tmp_path)
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").write_bytes(b"not a folder")
    with pytest.raises(reshard.CheckpointError, match="data"):
        reshard.load(blank_state(), tmp_path)
    with reshard.open(tmp_path) as ck, pytest.raises(reshard.CheckpointError, match="'w'"):
        ck.read("w")
    report = reshard.verify(tmp_path)
    assert not report.ok and {d.key for d in report.damaged} >= {"w", "ids"}
    with pytest.raises(reshard.StorageError):
        reshard.save(make_state(2), tmp_path)
