"""Codecs under attack: hostile zstd frames, unknown codecs, misbehaving user codecs."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zstandard

import reshard
from reshard.codecs import crc32c
from reshard.codecs import registry as codec_registry
from reshard.format.manifest import TensorEntry

from ._state import RotCodec, blank_state, data_files, leftovers, load_version, make_state, rewrite_manifest


def _one_frame_zstd_checkpoint(path: Path, codec: object = "zstd") -> tuple[str, torch.Tensor]:
    t = torch.arange(64, dtype=torch.float32)  # 256 raw bytes: one frame
    reshard.save({"t": t}, path, codec=codec)
    (file,) = data_files(path)
    return file, t


def _replace_frame(path: Path, file: str, frame: bytes) -> None:
    Path(file).write_bytes(frame)

    def edit(doc: dict[str, Any]) -> None:
        (chunk,) = doc["entries"][0]["chunks"]
        chunk.update(offset=0, nbytes=len(frame), frames=[[len(frame), crc32c(frame)]])

    rewrite_manifest(path, edit)


@pytest.mark.parametrize("planes", [False, True])
def test_zstd_frame_declaring_a_huge_size_is_not_allocated(tmp_path: Path, planes: bool) -> None:
    """A crafted frame (valid CRC) whose header claims 1 TiB must fail before allocating."""
    file, _ = _one_frame_zstd_checkpoint(tmp_path, reshard.ZstdCodec(planes=planes))
    # Magic, descriptor (8-byte content size, single segment), content size 2**40, then one
    # last RLE block of one byte.
    frame = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 2**40) + bytes([0x09, 0, 0, 0x41])
    assert zstandard.frame_content_size(frame) == 2**40
    if planes:  # planes-zstd: 256 raw bytes, three raw planes, then that frame as plane 3
        planes_raw = bytes(range(64)) * 3
        frame = (struct.pack("<I" + "BI" * 4, 256, 0, 64, 0, 64, 0, 64, 1, len(frame))
                 + planes_raw + frame)
    _replace_frame(tmp_path, file, frame)
    tracemalloc.start()
    try:
        with pytest.raises(reshard.CorruptCheckpointError, match="'t'.*declares 1099511627776 bytes"):
            reshard.load({"t": torch.zeros(64)}, tmp_path)
        with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError):
            ck.read("t")
        report = reshard.verify(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not report.ok and report.damaged[0].key == "t" and report.damaged[0].frame == 0
    assert peak < 16 * 2**20


@pytest.mark.parametrize("case", ["no content size", "too short", "too long", "not zstd"])
def test_hostile_but_checksummed_zstd_frames(tmp_path: Path, case: str) -> None:
    """Frames whose CRC matches but whose content is wrong are refused, never loaded."""
    file, t = _one_frame_zstd_checkpoint(tmp_path)
    raw = t.numpy().tobytes()
    frame = {
        "no content size": zstandard.ZstdCompressor(write_content_size=False).compress(raw),
        "too short": zstandard.ZstdCompressor().compress(raw[:100]),
        "too long": zstandard.ZstdCompressor().compress(raw + raw),
        "not zstd": raw,
    }[case]
    _replace_frame(tmp_path, file, frame)
    with pytest.raises(reshard.CorruptCheckpointError, match="'t'"):
        reshard.load({"t": torch.zeros(64)}, tmp_path)
    assert not reshard.verify(tmp_path).ok


def test_zstd_levels(tmp_path: Path) -> None:
    """Levels via ZstdCodec(level=N) and 'zstd:N' are recorded and load exactly."""
    sizes = {}
    cases = [(1, reshard.ZstdCodec(level=1)), (19, "zstd:19"), (-5, "zstd:-5"), (3, "zstd"),
             (4, reshard.ZstdCodec(level=4, shuffle=False))]
    for level, arg in cases:
        reshard.save(make_state(level % 7), tmp_path, codec=arg)
        assert load_version(tmp_path) == level % 7
        with reshard.open(tmp_path) as ck:
            specs = {(dict(e.chunks[0].codec.configuration).get("elementsize", 1), e.chunks[0].codec)
                     for e in ck.manifest.entries if isinstance(e, TensorEntry)}
        # Shuffled by the element size (int64 8, float32 4, bf16/int16 2); bool (1 byte)
        # and ZstdCodec(shuffle=False) store plain zstd frames.
        shuffled = not isinstance(arg, reshard.ZstdCodec) or arg.shuffle
        for size, spec in specs:
            config = dict(spec.configuration)
            assert config.pop("level") == level
            if shuffled and size > 1:
                assert spec.name == "planes-zstd" and config == {"elementsize": size}
            else:
                assert spec.name == "zstd" and config == {}
        assert {size for size, _ in specs} == ({1, 2, 4, 8} if shuffled else {1})
        sizes[level] = sum(os.path.getsize(f) for f in data_files(tmp_path))
        assert leftovers(tmp_path) == []
    for bad in ("zstd:x", "zstd:23", "zstd:", "zstd:1.5"):
        with pytest.raises(reshard.CheckpointError, match="(?i)zstd"):
            reshard.save(make_state(1), tmp_path, codec=bad)
    for bad_level in (23, -(2**17) - 1, True, 2.0):
        with pytest.raises(reshard.CheckpointError, match="level"):
            reshard.ZstdCodec(level=bad_level)  # type: ignore[arg-type]
    assert load_version(tmp_path) == 4  # the failed saves left the last good one


def test_unknown_codec_names_the_codec_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reshard.save(make_state(1), tmp_path, codec=RotCodec())
    assert load_version(tmp_path) == 1
    monkeypatch.delitem(codec_registry._user_codecs, RotCodec.name)  # as in a fresh process
    with pytest.raises(reshard.UnknownCodecError, match="test-rot13.*register_codec"):
        reshard.load(blank_state(), tmp_path)
    with reshard.open(tmp_path) as ck, pytest.raises(reshard.UnknownCodecError, match="test-rot13"):
        ck.read("w")
    report = reshard.verify(tmp_path)
    assert report.ok and any("test-rot13" in w for w in report.warnings)  # CRCs checked, decode skipped


class _Broken:
    """A user codec that fails in chosen ways."""

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.mode = name, mode

    def encode(self, data: memoryview) -> Any:
        if self.mode == "encode raises":
            raise RuntimeError("encoder exploded")
        if self.mode == "encode returns str":
            return "not bytes"
        if self.mode == "encode returns None":
            return None
        return bytes(data)

    def decode(self, data: memoryview) -> Any:
        if self.mode == "decode raises":
            raise KeyError("decoder exploded")
        if self.mode == "decode returns short":
            return bytes(data)[:-1]
        if self.mode == "decode returns int":
            return 7
        return bytes(data)


@pytest.mark.parametrize("mode", ["encode raises", "encode returns str", "encode returns None"])
def test_user_codec_failing_on_encode_keeps_previous_checkpoint(tmp_path: Path, mode: str) -> None:
    reshard.save(make_state(1), tmp_path)
    before = data_files(tmp_path)
    with pytest.raises(reshard.CheckpointError, match="exploded|not bytes|NoneType"):
        reshard.save(make_state(2), tmp_path, codec=_Broken(f"broken-{mode}", mode))
    assert load_version(tmp_path) == 1
    assert data_files(tmp_path) == before  # the failed save removed its own partial file


@pytest.mark.parametrize("mode", ["decode raises", "decode returns short", "decode returns int"])
def test_user_codec_failing_on_decode_is_a_checkpoint_error(tmp_path: Path, mode: str) -> None:
    codec = _Broken(f"broken-{mode}", mode)
    reshard.save({"t": torch.arange(300)}, tmp_path, codec=codec)
    with pytest.raises(reshard.CorruptCheckpointError, match="'t'"):
        reshard.load({"t": torch.zeros(300, dtype=torch.int64)}, tmp_path)
    with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError, match="'t'"):
        ck.read("t")
    assert not reshard.verify(tmp_path).ok


def test_register_codec_refuses_bad_codecs() -> None:
    class NoName:
        def encode(self, d: bytes) -> bytes: return d
        def decode(self, d: bytes) -> bytes: return d

    for bad in (NoName(), _named(""), _named("zstd"), _named("identity"), _named("zstd:5")):
        with pytest.raises(reshard.CheckpointError):
            reshard.register_codec(bad)  # type: ignore[arg-type]
    with pytest.raises(reshard.CheckpointError, match="encode"):
        reshard.register_codec(type("C", (), {"name": "no-methods"})())  # type: ignore[arg-type]


def _named(name: str) -> Any:
    return type("C", (), {"name": name, "encode": lambda s, d: d, "decode": lambda s, d: d})()


class _Counting(RotCodec):
    name = "test-counting"
    calls = 0

    def decode(self, data: memoryview) -> bytes:
        type(self).calls += 1
        return super().decode(data)


@pytest.mark.parametrize("codec", [_Counting(), "zstd"])
def test_partial_read_decodes_only_needed_frames(tmp_path: Path, codec: Any) -> None:
    """Compressed chunks stay cheap to slice: reading one row decodes one or two frames."""
    t = torch.arange(64 * 256, dtype=torch.float32).reshape(64, 256)  # 64 KiB: 128 frames of 512 B
    reshard.save({"t": t}, tmp_path, codec=codec)
    _Counting.calls = 0
    with reshard.open(tmp_path) as ck:
        (chunk,) = ck.manifest.entries[0].chunks
        assert len(chunk.frames) == 128
        assert ck.read("t", 37).equal(t[37])
        assert ck.read("t", (slice(10, 12), slice(5, 9))).equal(t[10:12, 5:9])
    if isinstance(codec, _Counting):
        # Row 37 is frames 74-75; rows 10-11, cols 5-8 need frames 20 and 22 (not 21 between).
        assert _Counting.calls == 4
    sd = {"t": torch.zeros(64, 256)}
    reshard.load(sd, tmp_path)
    assert sd["t"].equal(t)


def test_compression_ratio_of_zstd_frames(tmp_path: Path) -> None:
    """zstd frames are independent: each decodes alone to its raw size."""
    reshard.save({"z": np.zeros(4096, dtype=np.float64)}, tmp_path, codec=reshard.ZstdCodec(planes=False))
    with reshard.open(tmp_path) as ck:
        (chunk,) = ck.manifest.entries[0].chunks
        data = Path(data_files(tmp_path)[0]).read_bytes()
        pos = chunk.offset
        for f in chunk.frames:
            out = zstandard.ZstdDecompressor().decompress(data[pos:pos + f.nbytes])
            assert out == bytes(chunk.frame_raw_nbytes)
            pos += f.nbytes
        assert chunk.nbytes < chunk.raw_nbytes // 10


def test_hostile_huge_shape_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A manifest declaring a 1 TiB tensor stored as 1024 tiny 'zstd' frames (CRCs valid):
    reading it whole, slicing it or loading it raises CheckpointError and nothing else."""
    file, _ = _one_frame_zstd_checkpoint(tmp_path)
    frame = b"\x00" * 8
    Path(file).write_bytes(frame * 1024)

    def edit(doc: dict[str, Any]) -> None:
        entry = doc["entries"][0]
        entry.update(dtype="uint8", shape=[2**40])
        entry["chunks"][0].update(offsets=[0], sizes=[2**40], offset=0, nbytes=8 * 1024,
                                  raw_nbytes=2**40, frame_raw_nbytes=2**30,
                                  frames=[[8, crc32c(frame)]] * 1024)

    rewrite_manifest(tmp_path, edit)
    with reshard.open(tmp_path) as ck:
        for index in (None, (slice(0, 10),), (2**40 - 1,)):
            with pytest.raises(reshard.CheckpointError):
                ck.read("t", index)
    with pytest.raises(reshard.CheckpointError):
        reshard.load({"t": None}, tmp_path)
    assert not reshard.verify(tmp_path).ok


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_hostile_stored_frame_size_is_not_allocated(tmp_path: Path, codec: str | None) -> None:
    """A manifest whose frame claims 8 GiB of stored bytes (chunk sizes kept consistent) is
    refused as truncated before any buffer of that size exists."""
    reshard.save({"t": torch.arange(64, dtype=torch.float32)}, tmp_path, codec=codec)
    big = 2**33

    def edit(doc: dict[str, Any]) -> None:
        doc["codecs"][0] = {"name": "zstd", "configuration": {"level": 3}}  # identity frames are exact
        (chunk,) = doc["entries"][0]["chunks"]
        chunk.update(nbytes=big, frames=[[big, 0]])

    rewrite_manifest(tmp_path, edit)
    tracemalloc.start()
    try:
        with pytest.raises(reshard.CorruptCheckpointError, match="'t'.*truncated"):
            reshard.load({"t": torch.zeros(64)}, tmp_path)
        with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError, match="truncated"):
            ck.read("t", 3)
        report = reshard.verify(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not report.ok and "truncated" in report.damaged[0].message
    assert peak < 16 * 2**20
