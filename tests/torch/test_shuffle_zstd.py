"""codec="zstd" end to end: every dtype, frames that split elements, partial reads,
the direct-to-destination decode, strided cuts, and damaged or hostile frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

import reshard
from reshard.codecs import crc32c


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    f = torch.randn(61, 37, generator=g)
    return {
        "f32": f, "bf16": (f * 0.02).to(torch.bfloat16), "f16": f.to(torch.float16),
        "f64": f.to(torch.float64), "i64": torch.arange(61 * 37).reshape(61, 37) * 3 - 999,
        "i16": torch.arange(2257, dtype=torch.int16), "i8": (torch.arange(999) % 251 - 125).to(torch.int8),
        "u8": (torch.arange(1001) % 256).to(torch.uint8), "bool": torch.arange(777) % 3 == 0,
        "c64": torch.complex(f, -f), "c128": torch.complex(f, f * 2).to(torch.complex128),
        "zeros": torch.zeros(3000), "scalar": torch.tensor(2.5),
    }


@pytest.mark.parametrize("frame", ["45", "4096", str(256 << 10)])
def test_every_dtype_round_trips_and_reads_partially(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     frame: str) -> None:
    # 45-byte frames are a multiple of no itemsize > 1: frames start and end inside elements.
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)
    sd = _state()
    reshard.save(sd, tmp_path, codec="zstd")
    out = {k: torch.full_like(v, 0) for k, v in sd.items()}
    reshard.load(out, tmp_path)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    doc = json.loads((tmp_path / "manifest.json").read_text())
    with reshard.open(tmp_path) as ck:
        for k, v in sd.items():
            (chunk,) = ck.info(k).chunks
            assert chunk.codec == ("planes-zstd" if v.element_size() > 1 else "zstd"), k
            if v.dim() == 2:
                assert torch.equal(ck.read(k, (slice(7, 9), slice(3, 30))), v[7:9, 3:30]), k
                assert torch.equal(ck.read(k, (slice(None), slice(5, 6))), v[:, 5:6]), k
            elif v.dim() == 1:
                assert torch.equal(ck.read(k, (slice(101, 333),)), v[101:333]), k
    shuffled = [c for c in doc["codecs"] if c["name"] == "planes-zstd"]
    assert sorted(c["configuration"]["elementsize"] for c in shuffled) == [2, 4, 8, 16]


def test_loads_into_non_contiguous_and_other_dtype_destinations(tmp_path: Path) -> None:
    """Paths that cannot decode straight into the destination still land exactly."""
    sd = _state()
    reshard.save(sd, tmp_path, codec="zstd")
    base = torch.zeros(37, 61)
    out = {"f32": base.t(), "bf16": torch.zeros(61, 37, dtype=torch.float32)}
    reshard.load(out, tmp_path, strict=False)
    assert torch.equal(base.t(), sd["f32"])
    assert torch.equal(out["bf16"], sd["bf16"].float())


def _frame_of(path: Path, key: str) -> tuple[Path, dict, int]:
    doc = json.loads((path / "manifest.json").read_text())
    entry = next(e for e in doc["entries"] if e["key"] == [key])
    chunk = entry["chunks"][0]
    config = doc["codecs"][chunk["codec"]]["configuration"]
    return path / doc["files"][chunk["file"]], chunk, config["elementsize"]


def test_flipped_byte_in_a_shuffled_frame_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "4096")
    sd = {"w": torch.randn(64, 64)}
    reshard.save(sd, tmp_path, codec="zstd")
    file, chunk, _ = _frame_of(tmp_path, "w")
    data = bytearray(file.read_bytes())
    data[chunk["offset"] + chunk["frames"][0][0] + 5] ^= 0x10  # inside frame 1
    file.write_bytes(bytes(data))
    with pytest.raises(reshard.CorruptCheckpointError, match="'w'.*frame 1.*CRC-32C"):
        reshard.load({"w": torch.zeros(64, 64)}, tmp_path)
    assert not reshard.verify(tmp_path).ok


def _rewrite_frame(path: Path, frame: bytes) -> None:
    """Replace the one frame of entry 'w' with ``frame`` and give it a matching CRC."""
    file, chunk, _ = _frame_of(path, "w")
    file.write_bytes(frame)
    doc = json.loads((path / "manifest.json").read_text())
    doc.pop("manifest_crc32", None)
    c = doc["entries"][0]["chunks"][0]
    c.update(offset=0, nbytes=len(frame), frames=[[len(frame), crc32c(frame)]])
    (path / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("planes", [True, False])
@pytest.mark.parametrize("case", ["short", "long", "huge", "no size", "garbage"])
def test_hostile_checksummed_shuffled_frames_are_refused(tmp_path: Path, case: str, planes: bool) -> None:
    w = torch.arange(256, dtype=torch.float32)  # 1 KiB: one frame
    reshard.save({"w": w}, tmp_path, codec=reshard.ZstdCodec(planes=planes))
    raw = w.numpy().tobytes()
    frame = {
        "short": zstandard.ZstdCompressor().compress(raw[:-4]),
        "long": zstandard.ZstdCompressor().compress(raw + raw),
        "huge": zstandard.ZstdCompressor().compress(bytes(4 << 20)),
        "no size": zstandard.ZstdCompressor(write_content_size=False).compress(raw),
        "garbage": raw,
    }[case]
    _rewrite_frame(tmp_path, frame)
    with pytest.raises(reshard.CorruptCheckpointError, match="'w'.*frame 0"):
        reshard.load({"w": torch.zeros(256)}, tmp_path)
    with reshard.open(tmp_path) as ck, pytest.raises(reshard.CorruptCheckpointError):
        ck.read("w", (slice(3, 5),))
    assert not reshard.verify(tmp_path).ok


def test_a_frame_from_another_zstd_writer_loads(tmp_path: Path) -> None:
    """shuffle-zstd is zstd of the shuffled bytes, whatever encoder wrote the frame."""
    w = torch.randn(256)
    reshard.save({"w": w}, tmp_path, codec=reshard.ZstdCodec(planes=False))
    planes = w.numpy().view(np.uint8).reshape(256, 4).T.tobytes()
    _rewrite_frame(tmp_path, zstandard.ZstdCompressor(level=19).compress(planes))
    out = {"w": torch.zeros(256)}
    reshard.load(out, tmp_path)
    assert torch.equal(out["w"], w)


def test_plain_zstd_stays_available_and_readable_by_name(tmp_path: Path) -> None:
    sd = _state()
    reshard.save(sd, tmp_path, codec=reshard.ZstdCodec(level=1, shuffle=False))
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert {c["name"] for c in doc["codecs"]} == {"zstd"}
    out = {k: torch.full_like(v, 0) for k, v in sd.items()}
    reshard.load(out, tmp_path)
    assert all(torch.equal(out[k], v) for k, v in sd.items())


def test_planes_frames_flipped_or_hostile_are_refused_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flipped byte fails the CRC; a frame with a valid CRC whose planes header lies fails
    to decode. Both name the key, the data file and the frame."""
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "4096")
    w = torch.randn(64, 64)
    reshard.save({"w": w}, tmp_path, codec="zstd")
    file, chunk, size = _frame_of(tmp_path, "w")
    assert size == 4
    name = f"data/{file.name}"
    pristine = file.read_bytes()
    data = bytearray(pristine)
    data[chunk["offset"] + chunk["frames"][0][0] + 30] ^= 0x01  # a plane byte of frame 1
    file.write_bytes(bytes(data))
    with pytest.raises(reshard.CorruptCheckpointError, match=f"'w'.*{name}.*frame 1.*CRC-32C"):
        reshard.load({"w": torch.zeros(64, 64)}, tmp_path)
    file.write_bytes(pristine)
    frame = bytearray(pristine[chunk["offset"]:chunk["offset"] + chunk["frames"][0][0]])
    frame[4] = 9  # plane 0's mode
    _rewrite_frame(tmp_path, bytes(frame) + pristine[chunk["offset"] + len(frame):])
    doc = json.loads((tmp_path / "manifest.json").read_text())
    c = doc["entries"][0]["chunks"][0]
    c["frames"] = [[len(frame), crc32c(bytes(frame))]] + chunk["frames"][1:]
    c["nbytes"] = chunk["nbytes"]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(reshard.CorruptCheckpointError,
                       match=f"'w'.*{name}.*frame 0 does not decode with codec 'planes-zstd'"
                             ".*unknown mode 9"):
        reshard.load({"w": torch.zeros(64, 64)}, tmp_path)
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("w", (slice(20, 30),)), w[20:30])  # frames 1.. are fine
    assert not reshard.verify(tmp_path).ok


def test_planes_zstd_size_against_shuffle_zstd_and_zero_state(tmp_path: Path) -> None:
    """Floats: as small as shuffle-zstd within 1%; zeros: a header per frame."""
    sd = {"f32": torch.randn(512, 512), "bf16": (torch.randn(512, 512) * 0.02).to(torch.bfloat16),
          "zeros": torch.zeros(512, 512)}
    sizes = {}
    for planes in (True, False):
        path = tmp_path / str(planes)
        reshard.save(sd, path, codec=reshard.ZstdCodec(planes=planes))
        out = {k: torch.full_like(v, 7) for k, v in sd.items()}
        reshard.load(out, path)
        assert all(torch.equal(out[k], v) for k, v in sd.items())
        with reshard.open(path) as ck:
            sizes[planes] = {k: ck.info(k).chunks[0].nbytes for k in sd}
            assert {ck.info(k).chunks[0].codec for k in sd} == {"planes-zstd" if planes else "shuffle-zstd"}
    for k in ("f32", "bf16"):
        assert sizes[True][k] < 1.01 * sizes[False][k], k
    assert sizes[True]["zeros"] == 4 + 5 * 4  # 1 MiB: one frame of fills (1 MiB encoded frames)


def test_frame_size_defaults_by_codec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compressed saves cut 1 MiB frames, uncoded ones 256 KiB; the variable sets both."""
    sd = {"w": torch.arange(3 << 20, dtype=torch.float32).reshape(3072, 1024)}

    def frames(codec: object, name: str) -> tuple[int, int]:
        reshard.save(sd, tmp_path / name, codec=codec)
        out = {"w": torch.empty_like(sd["w"])}
        reshard.load(out, tmp_path / name)
        assert torch.equal(out["w"], sd["w"])
        (chunk,) = json.loads((tmp_path / name / "manifest.json").read_text())["entries"][0]["chunks"]
        return chunk["frame_raw_nbytes"], len(chunk["frames"])

    monkeypatch.delenv("RESHARD_FRAME_RAW_NBYTES", raising=False)
    assert frames(None, "identity") == (256 << 10, 48)
    assert frames("zstd", "zstd") == (1 << 20, 12)
    assert frames(reshard.ZstdCodec(planes=False), "shuffle") == (1 << 20, 12)
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(100_000))
    assert frames("zstd", "zstd-env") == (100_000, 126)
    assert frames(None, "identity-env") == (100_000, 126)
