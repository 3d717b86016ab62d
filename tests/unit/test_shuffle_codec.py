"""The byte shuffle and the shuffle-zstd / zstd frame codecs, without torch."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

import reshard
from reshard.codecs import (
    PlanesZstdCodec,
    ShuffleZstdCodec,
    ZstdCodec,
    bind_codec,
    chunk_spec,
    decode_frame,
    decode_frame_into,
    get_codec,
    resolve_codec,
)
from reshard.codecs.shuffle import shuffle, unshuffle
from reshard.errors import CheckpointError, CorruptCheckpointError
from reshard.format.manifest import CodecSpec

RNG = np.random.default_rng(1234)
LENGTHS = (0, 1, 2, 3, 7, 8, 9, 63, 1000, 4097, 65536 + 5)


def _reference_shuffle(data: np.ndarray, e: int) -> np.ndarray:
    n = len(data) // e
    return np.concatenate([data[:n * e].reshape(n, e).T.ravel(), data[n * e:]])


@pytest.mark.parametrize("elementsize", range(1, 17))
def test_shuffle_matches_the_definition_and_inverts(elementsize: int) -> None:
    for length in LENGTHS:
        data = RNG.integers(0, 256, length, dtype=np.uint8)
        shuffled = shuffle(data, elementsize, np.empty(length, np.uint8))
        assert np.array_equal(shuffled, _reference_shuffle(data, elementsize)), length
        back = unshuffle(shuffled, elementsize, np.empty(length, np.uint8))
        assert np.array_equal(back, data), length


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_shuffle_of_misaligned_bytes(offset: int) -> None:
    """Frames of a chunk need not start on an element boundary in memory."""
    base = RNG.integers(0, 256, 10_000, dtype=np.uint8)
    for e in (2, 4, 8):
        data = base[offset:offset + 4001]
        shuffled = shuffle(data, e, np.empty(len(data), np.uint8))
        assert np.array_equal(shuffled, _reference_shuffle(data, e))
        out = np.empty(len(data) + offset, np.uint8)[offset:]
        assert np.array_equal(unshuffle(shuffled, e, out), data)


def _payloads() -> dict[str, tuple[np.ndarray, int]]:
    """Raw little-endian bytes of typical arrays and their element size."""
    f32 = RNG.standard_normal(5003).astype(np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)  # the top half of a float32
    c64 = (RNG.standard_normal(301) + 1j * RNG.standard_normal(301)).astype(np.complex64)
    arrays: dict[str, np.ndarray] = {
        "float32": f32, "bfloat16": bf16, "float16": f32.astype(np.float16),
        "float64": f32.astype(np.float64), "int64": np.arange(777, dtype=np.int64) * 3,
        "int8": RNG.integers(-128, 128, 999, dtype=np.int8), "bool": RNG.random(998) > 0.5,
        "complex64": c64, "complex128": c64.astype(np.complex128),
        "zeros": np.zeros(4096, np.float32), "constant": np.full(1000, 0.5, np.float32),
    }
    return {k: (a.view(np.uint8), a.dtype.itemsize) for k, a in arrays.items()}


@pytest.mark.parametrize("name", list(_payloads()))
@pytest.mark.parametrize("level", [-3, 1, 3, 9])
def test_codec_round_trips_whole_and_odd_frames(name: str, level: int) -> None:
    raw, itemsize = _payloads()[name]
    codec = bind_codec(ZstdCodec(level=level), itemsize)
    spec = chunk_spec(ZstdCodec(level=level).spec(), itemsize)
    assert codec.spec() == spec  # type: ignore[attr-defined]
    decoder = get_codec(spec)
    # Whole payload, and cuts not a multiple of the element size (frames split elements).
    for a, b in [(0, len(raw)), (0, len(raw) - 1), (3, len(raw)), (1, 2), (5, 5 + 7 * itemsize + 3)]:
        part = raw[a:b]
        frame = bytes(codec.encode(memoryview(part)))
        out = np.full(len(part), 0xAB, np.uint8)
        decode_frame_into(decoder, memoryview(frame), out)
        assert np.array_equal(out, part), (a, b)
        assert bytes(decode_frame(decoder, memoryview(frame), len(part))) == part.tobytes()


def test_a_stored_frame_is_a_standard_zstd_frame_of_the_shuffled_bytes() -> None:
    """What docs/FORMAT.md promises: any zstd decoder, then the unshuffle, reads it."""
    raw, _ = _payloads()["float32"]
    frame = ShuffleZstdCodec(level=3, elementsize=4).encode(memoryview(raw))
    assert zstandard.frame_content_size(frame) == len(raw)
    plain = zstandard.ZstdDecompressor().decompress(frame)
    assert plain == _reference_shuffle(raw, 4).tobytes()


def test_shuffle_compresses_float_payloads_better_than_plain_zstd() -> None:
    f32 = (RNG.standard_normal(1 << 16) * 0.02).astype(np.float32).view(np.uint8)
    plain = len(ZstdCodec(level=3, shuffle=False).encode(memoryview(f32)))
    shuffled = len(ShuffleZstdCodec(level=3, elementsize=4).encode(memoryview(f32)))
    assert shuffled < 0.97 * plain


@pytest.mark.parametrize("codec", [ZstdCodec(shuffle=False), ShuffleZstdCodec(elementsize=4),
                                   PlanesZstdCodec(elementsize=4)])
def test_decode_refuses_frames_of_the_wrong_size(
        codec: ZstdCodec | ShuffleZstdCodec | PlanesZstdCodec) -> None:
    raw = np.arange(1000, dtype=np.float32).view(np.uint8)
    frame = memoryview(bytes(codec.encode(memoryview(raw))))
    for n in (len(raw) - 4, len(raw) + 4, 0):
        with pytest.raises(ValueError, match="declares"):
            decode_frame_into(codec, frame, np.empty(n, np.uint8))
    with pytest.raises(ValueError, match="declares 4000 bytes, at most 100"):
        decode_frame(codec, frame, 100)
    for bad in (frame[:len(frame) // 2], frame[:10], memoryview(b"\x00" * 64), memoryview(b"")):
        with pytest.raises(ValueError):
            decode_frame_into(codec, bad, np.empty(len(raw), np.uint8))


def test_zstd_frame_without_content_size_is_refused() -> None:
    raw = np.arange(100, dtype=np.int16).view(np.uint8)
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(raw.tobytes())
    for codec in (ZstdCodec(shuffle=False), ShuffleZstdCodec(elementsize=2)):
        with pytest.raises(ValueError, match="declares -1 bytes"):
            decode_frame_into(codec, memoryview(frame), np.empty(len(raw), np.uint8))


def test_what_codec_arguments_mean() -> None:
    codec, spec = resolve_codec("zstd")
    assert codec == ZstdCodec(level=3, shuffle=True, planes=True)
    assert spec == CodecSpec(name="planes-zstd", configuration=(("level", 3),))
    assert resolve_codec("zstd:7")[0] == ZstdCodec(level=7)
    assert resolve_codec(ZstdCodec(level=5, shuffle=False))[1] == CodecSpec(
        name="zstd", configuration=(("level", 5),))
    assert resolve_codec(ZstdCodec(level=5, planes=False))[1] == CodecSpec(
        name="shuffle-zstd", configuration=(("level", 5),))
    # Per chunk: the element size is recorded; 1-byte elements are plain zstd.
    assert chunk_spec(spec, 2) == CodecSpec(
        name="planes-zstd", configuration=(("elementsize", 2), ("level", 3)))
    assert chunk_spec(spec, 1) == CodecSpec(name="zstd", configuration=(("level", 3),))
    shuffled = ZstdCodec(planes=False).spec()
    assert chunk_spec(shuffled, 2) == CodecSpec(
        name="shuffle-zstd", configuration=(("elementsize", 2), ("level", 3)))
    assert chunk_spec(shuffled, 1) == CodecSpec(name="zstd", configuration=(("level", 3),))
    assert chunk_spec(ZstdCodec(shuffle=False).spec(), 4).name == "zstd"
    assert chunk_spec(ZstdCodec(shuffle=False, planes=True).spec(), 4).name == "zstd"
    assert bind_codec(ZstdCodec(level=2), 8) == PlanesZstdCodec(level=2, elementsize=8)
    assert bind_codec(ZstdCodec(level=2, planes=False), 8) == ShuffleZstdCodec(level=2, elementsize=8)
    assert bind_codec(ZstdCodec(level=2), 1) == ZstdCodec(level=2, shuffle=False)
    for option in ("shuffle", "planes"):
        for bad in ("yes", 1, None):
            with pytest.raises(CheckpointError, match=option):
                ZstdCodec(**{option: bad})  # type: ignore[arg-type]
    for bad_size in (0, 17, True, 2.0):
        with pytest.raises(CheckpointError, match="elementsize"):
            ShuffleZstdCodec(elementsize=bad_size)  # type: ignore[arg-type]
        with pytest.raises(CheckpointError, match="elementsize"):
            PlanesZstdCodec(elementsize=bad_size)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [(), (("elementsize", 0),), (("elementsize", 17),),
                                    (("elementsize", "4"),), (("elementsize", True),)])
def test_manifest_with_a_bad_element_size_is_corrupt(config: tuple[tuple[str, object], ...]) -> None:
    for name in ("shuffle-zstd", "planes-zstd"):
        spec = CodecSpec(name=name, configuration=(("level", 3), *config))  # type: ignore[arg-type]
        with pytest.raises(CorruptCheckpointError, match=f"{name}.*elementsize"):
            get_codec(spec)


@pytest.mark.parametrize("name", ["shuffle-zstd", "planes-zstd"])
def test_shuffled_codec_names_are_reserved(name: str) -> None:
    codec = type("C", (), {"name": name, "encode": lambda s, d: d, "decode": lambda s, d: d})()
    with pytest.raises(CheckpointError, match="built-in"):
        reshard.register_codec(codec)
