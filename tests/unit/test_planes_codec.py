"""The planes-zstd frame layout (docs/FORMAT.md "Byte planes"), without torch: round trips,
the per-plane choices, a frame built by hand from the spec, and hostile frames."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard

from reshard.codecs import (
    PlanesZstdCodec,
    ZstdCodec,
    bind_codec,
    chunk_spec,
    decode_frame,
    decode_frame_into,
    get_codec,
)
from reshard.codecs.planes import FILL, RAW, ZSTD

RNG = np.random.default_rng(99)
LENGTHS = (0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 63, 64, 1000, 4097, 65536 + 5, 256 << 10)


def _payload(kind: str, length: int) -> np.ndarray:
    if kind == "random":
        return RNG.integers(0, 256, length, dtype=np.uint8)
    if kind == "normal":  # float32 N(0, 1): mantissa bytes random, exponent byte not
        return RNG.standard_normal(length // 4 + 1).astype(np.float32).view(np.uint8)[:length].copy()
    if kind == "zeros":
        return np.zeros(length, np.uint8)
    if kind == "constant":
        return np.full(length, 0x3C, np.uint8)
    if kind == "int64":  # small ints: high bytes zero (fill), low bytes vary
        return (np.arange(length // 8 + 1, dtype=np.int64) * 7).view(np.uint8)[:length].copy()
    half = np.zeros(length, np.uint8)  # "mixed": zeros, then a few values
    half[length // 2:] = RNG.integers(0, 4, length - length // 2)
    return half


def _modes(frame: bytes, elementsize: int) -> list[int]:
    fields = struct.unpack_from("<I" + "BI" * elementsize, frame)
    return list(fields[1::2])


@pytest.mark.parametrize("elementsize", range(1, 17))
@pytest.mark.parametrize("kind", ["random", "normal", "zeros", "constant", "int64", "mixed"])
def test_round_trips_every_element_size_and_length(elementsize: int, kind: str) -> None:
    """Lengths that are no multiple of the element size leave a tail of raw bytes."""
    for level in (-5, 3, 9):
        codec = PlanesZstdCodec(level=level, elementsize=elementsize)
        for length in LENGTHS:
            raw = _payload(kind, length)
            frame = bytes(codec.encode(memoryview(raw)))
            out = np.full(length, 0xAB, np.uint8)
            decode_frame_into(codec, memoryview(frame), out)
            assert np.array_equal(out, raw), (level, length)
            assert bytes(decode_frame(codec, memoryview(frame), length)) == raw.tobytes()


def test_misaligned_frames_round_trip() -> None:
    """Frames of a chunk need not start on an element boundary in memory."""
    base = RNG.standard_normal(5000).astype(np.float32).view(np.uint8)
    for e in (2, 4, 8):
        codec = PlanesZstdCodec(elementsize=e)
        for offset in (1, 2, 3):
            raw = base[offset:offset + 4001]
            out = np.empty(len(raw) + offset, np.uint8)[offset:]
            codec.decode_into(memoryview(bytes(codec.encode(memoryview(raw)))), out)
            assert np.array_equal(out, raw)


def test_float_planes_choose_raw_mantissas_zstd_exponents() -> None:
    f32 = (RNG.standard_normal(1 << 16) * 0.02).astype(np.float32).view(np.uint8)
    frame = bytes(PlanesZstdCodec(elementsize=4).encode(memoryview(f32)))
    assert _modes(frame, 4) == [RAW, RAW, RAW, ZSTD]
    # Smaller than plain zstd, and as small as shuffle-zstd within 1%.
    plain = len(ZstdCodec(shuffle=False).encode(memoryview(f32)))
    shuffled = len(ZstdCodec(planes=False).for_itemsize(4).encode(memoryview(f32)))  # type: ignore[union-attr]
    assert len(frame) < 0.97 * plain and len(frame) < 1.01 * shuffled
    bf16 = ((RNG.standard_normal(1 << 16).astype(np.float32) * 0.02).view(np.uint32) >> 16).astype(np.uint16)
    frame = bytes(PlanesZstdCodec(elementsize=2).encode(memoryview(bf16.view(np.uint8))))
    assert _modes(frame, 2) == [RAW, ZSTD]


def test_zero_frames_are_fills_and_constant_planes_too() -> None:
    frame = bytes(PlanesZstdCodec(elementsize=4).encode(memoryview(np.zeros(4097, np.uint8))))
    assert _modes(frame, 4) == [FILL] * 4 and len(frame) == 4 + 5 * 4 + 1  # header + 1 tail byte
    ints = np.arange(4096, dtype=np.int64).view(np.uint8)  # bytes 2-7 of every element are 0
    frame = bytes(PlanesZstdCodec(elementsize=8).encode(memoryview(ints)))
    assert _modes(frame, 8)[2:] == [FILL] * 6
    # A plane whose sample is constant but whose other bytes are not is not a fill.
    sparse = np.zeros(4096, np.uint32)
    sparse[1] = 0x01000000  # missed by the every-16th-element sample
    frame = bytes(PlanesZstdCodec(elementsize=4).encode(memoryview(sparse.view(np.uint8))))
    assert _modes(frame, 4)[3] != FILL
    out = np.empty(sparse.nbytes, np.uint8)
    PlanesZstdCodec(elementsize=4).decode_into(memoryview(frame), out)
    assert np.array_equal(out.view(np.uint32), sparse)


def test_a_frame_built_from_the_spec_decodes() -> None:
    """docs/FORMAT.md, by hand: 11 raw bytes as E = 2 (5 elements + 1 tail byte), plane 0
    raw, plane 1 a zstd frame from another encoder; then E = 4 with a fill plane."""
    raw = bytes([1, 0x40, 2, 0x40, 3, 0x40, 4, 0x41, 5, 0x40, 0xEE])
    plane1 = zstandard.ZstdCompressor(level=19).compress(bytes([0x40, 0x40, 0x40, 0x41, 0x40]))
    frame = struct.pack("<IBIBI", 11, RAW, 5, ZSTD, len(plane1)) + bytes([1, 2, 3, 4, 5]) + plane1 + b"\xee"
    out = np.empty(11, np.uint8)
    PlanesZstdCodec(elementsize=2).decode_into(memoryview(frame), out)
    assert out.tobytes() == raw
    frame = struct.pack("<I" + "BI" * 4, 8, RAW, 2, FILL, 7, FILL, 0, RAW, 2) + bytes([1, 2, 0xA, 0xB])
    assert PlanesZstdCodec(elementsize=4).decode(memoryview(frame)) == bytes([1, 7, 0, 0xA, 2, 7, 0, 0xB])


def _frame(*planes: tuple[int, int, bytes], size: int = 8, tail: bytes = b"") -> bytes:
    head = struct.pack("<I" + "BI" * len(planes), size, *(x for m, a, _ in planes for x in (m, a)))
    return head + b"".join(body for _, _, body in planes) + tail


_OK = _frame((RAW, 4, b"abcd"), (RAW, 4, b"efgh"))  # E = 2, 8 raw bytes


@pytest.mark.parametrize("case, frame, match", [
    ("empty", b"", "shorter than its 14-byte header"),
    ("header cut", _OK[:13], "shorter than its 14-byte header"),
    ("other size", _frame((RAW, 4, b"abcd"), (RAW, 4, b"efgh"), size=10), "declares 10 bytes, expected 8"),
    ("raw plane of other size", _frame((RAW, 3, b"abc"), (RAW, 4, b"efgh")), "raw plane of 3 bytes"),
    ("raw plane cut", _OK[:-1], "raw plane of 4 bytes"),
    ("bytes after the planes", _OK + b"x", "holds 1 bytes after its planes, expected 0"),
    ("unknown mode", _frame((7, 4, b"abcd"), (RAW, 4, b"efgh")), "unknown mode 7"),
    ("fill not a byte", _frame((FILL, 256, b""), (RAW, 4, b"efgh")), "fill value 256"),
    ("zstd of nothing", _frame((ZSTD, 0, b""), (RAW, 4, b"efgh")), "zstd plane of 0 bytes"),
    ("zstd past the end", _frame((ZSTD, 99, b"abcd"), (RAW, 4, b"efgh")), "zstd plane of 99 bytes"),
    ("zstd of other size", _frame((ZSTD, 12, zstandard.compress(b"abc")[:12]), (RAW, 4, b"efgh")),
     "declares 3 bytes"),
    ("not zstd", _frame((ZSTD, 4, b"abcd"), (RAW, 4, b"efgh")), "zstd"),
])
def test_hostile_frames_are_refused(case: str, frame: bytes, match: str) -> None:
    codec = PlanesZstdCodec(elementsize=2)
    out = np.zeros(8, np.uint8)
    with pytest.raises(ValueError, match=match):
        codec.decode_into(memoryview(frame), out)
    with pytest.raises(ValueError):
        decode_frame(codec, memoryview(frame), 8)


def test_zstd_plane_without_content_size_or_declaring_a_huge_one_is_refused() -> None:
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"abcd")
    huge = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 2**40) + bytes([0x09, 0, 0, 0x41])
    for body, match in ((no_size, "declares -1 bytes"), (huge, "declares 1099511627776 bytes")):
        frame = _frame((ZSTD, len(body), body), (RAW, 4, b"efgh"))
        with pytest.raises(ValueError, match=match):
            PlanesZstdCodec(elementsize=2).decode_into(memoryview(frame), np.zeros(8, np.uint8))


def test_decode_refuses_a_declared_size_above_the_limit_before_allocating() -> None:
    frame = struct.pack("<IBIBI", 2**31, FILL, 0, FILL, 0)
    with pytest.raises(ValueError, match="declares 2147483648 bytes, at most 64 allowed"):
        decode_frame(PlanesZstdCodec(elementsize=2), memoryview(frame), 64)


def test_manifest_records_and_decoders() -> None:
    spec = chunk_spec(ZstdCodec(level=-2).spec(), 16)
    assert spec.name == "planes-zstd" and dict(spec.configuration) == {"elementsize": 16, "level": -2}
    assert bind_codec(ZstdCodec(level=-2), 16).spec() == spec  # type: ignore[attr-defined]
    assert get_codec(spec) == PlanesZstdCodec(elementsize=16)


def test_a_large_frame_decodes_its_zstd_planes_into_one_buffer() -> None:
    """Frames above the 16 MiB scratch size get a buffer of their own: one of the frame's
    size for all zstd planes, not one per plane."""
    import tracemalloc

    raw = RNG.standard_normal(9 << 18).view(np.uint8)  # 18 MiB of float64: planes 6 and 7 zstd
    codec = PlanesZstdCodec(elementsize=8)
    frame = bytes(codec.encode(memoryview(raw)))
    assert _modes(frame, 8)[6:] == [ZSTD, ZSTD]
    out = np.empty(len(raw), np.uint8)
    tracemalloc.start()
    try:
        codec.decode_into(memoryview(frame), out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, raw)
    assert peak < len(raw) + (1 << 20)


def test_repeats_keep_the_match_search_and_floats_skip_it() -> None:
    """Exponent planes are entropy coded alone; runs and periodic data, which only
    matches compress, still get them (the probe of codecs/zstd_cffi.py)."""
    from reshard.codecs import zstd_cffi

    periodic = np.tile(np.arange(1000, dtype=np.int32) % 37, 1 << 6).view(np.uint8)
    steps = (np.arange(1 << 16) // 1000).astype(np.float32).view(np.uint8)
    for raw in (periodic, steps):
        frame = bytes(PlanesZstdCodec(elementsize=4).encode(memoryview(raw)))
        assert len(raw) / len(frame) > 100
        assert PlanesZstdCodec(elementsize=4).decode(memoryview(frame)) == raw.tobytes()
    if zstd_cffi.plane_contexts() is not None:
        f32 = RNG.standard_normal(1 << 16).astype(np.float32).view(np.uint8)
        frame = bytes(PlanesZstdCodec(elementsize=4).encode(memoryview(f32)))
        assert _modes(frame, 4) == [RAW, RAW, RAW, ZSTD]
        assert PlanesZstdCodec(elementsize=4).decode(memoryview(frame)) == f32.tobytes()


@pytest.mark.parametrize("kind", ["random", "normal", "int64", "mixed"])
def test_without_the_cffi_binding_frames_round_trip(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """zstandard without cffi: planes go through the C backend's compressor."""
    from reshard.codecs import zstd_cffi

    monkeypatch.setattr(zstd_cffi, "plane_contexts", lambda: None)
    for e in (2, 4, 8):
        for level in (3, 9):
            codec = PlanesZstdCodec(level=level, elementsize=e)
            for length in LENGTHS:
                raw = _payload(kind, length)
                out = np.full(length, 0xAB, np.uint8)
                codec.decode_into(memoryview(bytes(codec.encode(memoryview(raw)))), out)
                assert np.array_equal(out, raw), (e, level, length)


def test_literals_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESHARD_ZSTD_LITERALS=0 takes every plane through ZSTD_compress2; either way the
    frames decode to the same bytes."""
    from reshard.codecs import zstd_cffi

    f32 = RNG.standard_normal(1 << 16).astype(np.float32).view(np.uint8)
    codec = PlanesZstdCodec(elementsize=4)
    frames = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("RESHARD_ZSTD_LITERALS", setting)
        if setting == "0":
            assert zstd_cffi.plane_contexts() is None
        frames[setting] = bytes(codec.encode(memoryview(f32)))
        assert codec.decode(memoryview(frames[setting])) == f32.tobytes()
    assert _modes(frames["0"], 4) == [RAW, RAW, RAW, ZSTD]
    monkeypatch.setenv("RESHARD_ZSTD_LITERALS", "maybe")
    with pytest.raises(ValueError, match="RESHARD_ZSTD_LITERALS='maybe' must be 0 or 1"):
        zstd_cffi.plane_contexts()


def test_a_plane_with_one_random_block_still_compresses() -> None:
    """A plane of several zstd blocks, one of them random: the literals-only call fails
    as a whole, and the plane then goes through ZSTD_compress2 (not stored raw)."""
    rng = np.random.default_rng(0)
    n = 4 << 17  # a 512 KiB plane: four 128 KiB blocks
    hi = rng.integers(0, 4, n).astype(np.uint8)
    hi[:1 << 17] = rng.integers(0, 256, 1 << 17)
    raw = np.empty(2 * n, np.uint8)
    raw[0::2], raw[1::2] = rng.integers(0, 256, n), hi
    codec = PlanesZstdCodec(elementsize=2, level=3)
    frame = bytes(codec.encode(memoryview(raw)))
    assert codec.decode(memoryview(frame)) == raw.tobytes()
    assert len(frame) < 0.8 * len(raw)
    assert _modes(frame, 2) == [RAW, ZSTD]
