"""Damaged data files: every damage is caught on load, by ``reshard.open(...).read`` and by
``reshard.verify``, as CorruptCheckpointError naming the key and the file."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

import reshard
from reshard.format.manifest import Manifest
from tests.helpers.files import xor_byte

from ._state import (
    FRAME_RAW_NBYTES,
    RotCodec,
    blank_state,
    chunk_map,
    data_files,
    load_version,
    make_state,
)

CODECS = {"identity": None, "zstd": "zstd", "user": RotCodec()}


def _positions(size: int, chunks: list[tuple[str, int, int, str]], n: int, seed: int) -> list[int]:
    """A seeded sample of byte positions plus the first and last byte of every chunk."""
    rng = random.Random(seed)
    picks = {rng.randrange(size) for _ in range(n)}
    for _, a, b, _ in chunks:
        picks.update({a, b - 1})
    return sorted(p for p in picks if 0 <= p < size)


@pytest.mark.parametrize("codec", list(CODECS))
def test_bit_flips_anywhere_in_data_are_caught(tmp_path: Path, codec: str) -> None:
    """Flip one bit at ~250 places of the data file (every chunk's first and last byte among
    them): load, open().read and verify must each report the key and the file owning the byte."""
    reshard.save(make_state(1), tmp_path, codec=CODECS[codec])
    (file,) = data_files(tmp_path)
    chunks = chunk_map(tmp_path)
    base = os.path.basename(file)
    size = os.path.getsize(file)
    assert size == max(b for _, _, b, _ in chunks)  # no byte of the file is unchecked
    missed: list[str] = []
    for pos in _positions(size, chunks, 200, seed=len(codec)):
        key = next(k for f, a, b, k in chunks if f == base and a <= pos < b)
        xor_byte(file, pos, 1 << pos % 8)
        try:
            with pytest.raises(reshard.CorruptCheckpointError) as err:
                reshard.load(blank_state(), tmp_path)
            msg = str(err.value)
            if f"'{key}'" not in msg or base not in msg:
                missed.append(f"byte {pos}: load message lacks key {key!r} or file: {msg}")
            with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError):
                ck.read(key)
            report = reshard.verify(tmp_path)
            if report.ok or {(d.key, os.path.basename(d.file)) for d in report.damaged} != {(key, base)}:
                missed.append(f"byte {pos}: verify reported {report.damaged}")
        finally:
            xor_byte(file, pos, 1 << pos % 8)
    assert not missed, "\n".join(missed[:10])
    assert load_version(tmp_path) == 1 and reshard.verify(tmp_path).ok


def test_flip_in_one_key_leaves_other_keys_loadable(tmp_path: Path) -> None:
    """Partial loads read only the frames they need: damage in 'w' does not stop loading 'ids'."""
    reshard.save(make_state(1), tmp_path)
    (file,) = data_files(tmp_path)
    _, a, b, _ = next(c for c in chunk_map(tmp_path) if c[3] == "w")
    xor_byte(file, a + (b - a) // 2, 1 << 3)
    sd = {"ids": blank_state()["ids"]}
    reshard.load(sd, tmp_path)
    assert sd["ids"].equal(make_state(1)["ids"])
    with reshard.open(tmp_path) as ck:
        assert ck.read("w", (slice(0, 1),)).equal(make_state(1)["w"][:1])  # frame 0 intact
        with pytest.raises(reshard.CorruptCheckpointError, match="'w'"):
            ck.read("w")


@pytest.mark.parametrize("codec", ["identity", "zstd"])
def test_truncated_data_file(tmp_path: Path, codec: str) -> None:
    """Every truncation length reports CorruptCheckpointError naming a key and the file, before
    reading; verify names exactly the chunks that lost bytes."""
    reshard.save(make_state(2), tmp_path, codec=CODECS[codec])
    (file,) = data_files(tmp_path)
    original = Path(file).read_bytes()
    chunks = chunk_map(tmp_path)
    for cut in sorted({0, 1, len(original) // 3, len(original) // 2, len(original) - 1}
                      | {a for _, a, _, _ in chunks if a}):
        Path(file).write_bytes(original[:cut])
        with pytest.raises(reshard.CorruptCheckpointError, match="truncated") as err:
            reshard.load(blank_state(), tmp_path)
        assert os.path.basename(file) in str(err.value) and "key '" in str(err.value)
        report = reshard.verify(tmp_path)
        damaged_keys = {d.key for d in report.damaged}
        assert damaged_keys == {k for _, _, b, k in chunks if b > cut}, cut
        assert all("truncated" in d.message for d in report.damaged if d.frame is None)
    Path(file).write_bytes(original + b"extra bytes after the chunks are harmless")
    assert load_version(tmp_path) == 2 and reshard.verify(tmp_path).ok


def test_deleted_data_file(tmp_path: Path) -> None:
    reshard.save(make_state(1), tmp_path)
    (file,) = data_files(tmp_path)
    os.unlink(file)
    with pytest.raises(reshard.CorruptCheckpointError, match="missing") as err:
        reshard.load(blank_state(), tmp_path)
    assert os.path.basename(file) in str(err.value) and "key '" in str(err.value)
    with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError, match="missing"):
        ck.read("ids")
    report = reshard.verify(tmp_path)
    assert not report.ok
    assert {d.key for d in report.damaged} == {k for *_, k in chunk_map_from_manifest(tmp_path)}
    assert all("missing" in d.message for d in report.damaged)
    # Plain values live in the manifest: they still load.
    sd = {"step": None}
    reshard.load(sd, tmp_path)
    assert sd["step"] == 1001


def chunk_map_from_manifest(path: Path) -> list[tuple[str, str]]:
    m = Manifest.from_json((path / "manifest.json").read_bytes())
    return [(c.file, ".".join(map(str, e.key))) for e in m.entries for c in getattr(e, "chunks", ())]


def test_manifest_damage(tmp_path: Path) -> None:
    """Missing, empty, truncated, binary or directory manifests: clear errors, never others."""
    reshard.save(make_state(1), tmp_path)
    good = (tmp_path / "manifest.json").read_bytes()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(reshard.CheckpointNotFoundError, match="manifest.json"):
        reshard.load(blank_state(), tmp_path)
    for bad in (b"", good[: len(good) // 2], good[:-1], os.urandom(300), b"\xff\xfe" + good):
        (tmp_path / "manifest.json").write_bytes(bad)
        with pytest.raises(reshard.CorruptCheckpointError, match="manifest.json"):
            reshard.load(blank_state(), tmp_path)
        assert not reshard.verify(tmp_path).ok
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(reshard.CheckpointError):
        reshard.load(blank_state(), tmp_path)


def test_every_bit_flip_in_the_manifest(tmp_path: Path) -> None:
    """A flipped bit anywhere in manifest.json is refused (the whole-manifest CRC catches the
    flips the structural checks cannot, such as a digit of a plain value) or, when it only hit
    the checksum's own field name, the checkpoint still loads exactly."""
    reshard.save(make_state(3), tmp_path)
    path = tmp_path / "manifest.json"
    good = path.read_bytes()
    loaded_ok = 0
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 1 << (pos % 8)
        try:
            Manifest.from_json(bytes(bad))
        except reshard.CheckpointError:
            continue
        loaded_ok += 1
        path.write_bytes(bytes(bad))
        assert load_version(tmp_path) == 3, f"flip at byte {pos} loaded other values silently"
    path.write_bytes(good)
    assert loaded_ok <= len("manifest_crc32")  # only flips in the checksum's field name or whitespace survive


def test_fifo_instead_of_a_file_does_not_hang(tmp_path: Path) -> None:
    reshard.save(make_state(1), tmp_path)
    (file,) = data_files(tmp_path)
    os.unlink(file)
    os.mkfifo(file)
    assert stat.S_ISFIFO(os.stat(file).st_mode)
    with pytest.raises(reshard.CorruptCheckpointError, match="regular file|truncated"):
        reshard.load(blank_state(), tmp_path)
    assert not reshard.verify(tmp_path).ok
    os.unlink(tmp_path / "manifest.json")
    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(reshard.CorruptCheckpointError, match="regular file"):
        reshard.load(blank_state(), tmp_path)


def test_frame_size_matters_not(tmp_path: Path) -> None:
    """Sanity: the tiny frames of these tests really cut chunks into many frames."""
    reshard.save(make_state(1), tmp_path)
    with reshard.open(tmp_path) as ck:
        (chunk,) = [c for e in ck.manifest.entries if e.key == ("w",) for c in e.chunks]
    assert chunk.frame_raw_nbytes == FRAME_RAW_NBYTES and len(chunk.frames) == 10


@pytest.mark.parametrize("codec", ["identity", "zstd"])
def test_every_byte_of_a_small_checkpoint(tmp_path: Path, codec: str) -> None:
    """Exhaustively: a flipped bit in *any* byte of the data file fails the load."""
    import torch

    state = {"a": torch.arange(100, dtype=torch.int32), "b": {"c": torch.arange(60, dtype=torch.float64)}}
    reshard.save(state, tmp_path, codec=CODECS[codec])
    (file,) = data_files(tmp_path)
    size = os.path.getsize(file)
    assert size > 200  # a real payload to flip (the shuffled zstd frames take ~250 bytes)
    silent = []
    for pos in range(size):
        xor_byte(file, pos, 1 << (pos * 5) % 8)
        try:
            reshard.load({"a": torch.zeros(100, dtype=torch.int32),
                          "b": {"c": torch.zeros(60, dtype=torch.float64)}}, tmp_path)
            silent.append(pos)
        except reshard.CorruptCheckpointError:
            pass
        finally:
            xor_byte(file, pos, 1 << (pos * 5) % 8)
    assert not silent, f"flips at bytes {silent[:20]} loaded without an error"
