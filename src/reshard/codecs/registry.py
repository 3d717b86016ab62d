"""The codec registry: identity, zstd, and user codecs registered by name."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import CheckpointError, UnknownCodecError
from ..format.manifest import IDENTITY, CodecSpec


@runtime_checkable
class Codec(Protocol):
    """A storage transform of one frame. ``decode(encode(b)) == b`` must hold."""

    @property
    def name(self) -> str: ...

    def encode(self, data: memoryview) -> bytes | memoryview: ...

    def decode(self, data: memoryview) -> bytes | bytearray | memoryview: ...


@dataclass(frozen=True, slots=True)
class IdentityCodec:
    """Stores raw bytes unchanged; lets loads read straight into destination memory."""

    name: str = "identity"

    def encode(self, data: memoryview) -> memoryview:
        return data

    def decode(self, data: memoryview) -> memoryview:
        return data


ZSTD_MIN_LEVEL = -(1 << 17)
ZSTD_MAX_LEVEL = 22


@dataclass(frozen=True, slots=True)
class ZstdCodec:
    """Zstandard compression of each frame (``zstandard`` package).

    ``level`` trades save time for size, as in the ``zstd`` tool: 1-3 are fast (3 is the
    default and usually the best choice for checkpoints, whose float payloads compress
    modestly), 4-9 are slower with small gains, 10-19 are much slower, 20-22 ("ultra")
    need lots of memory. Negative levels (down to -131072) are faster than 1 and compress
    less. Pass ``save(..., codec=ZstdCodec(level=9))`` or ``codec="zstd:9"``. Frames are
    compressed in parallel on the I/O threads (zstandard releases the GIL); each frame is
    an independent zstd frame that records its content size, so a partial load decodes
    only the frames it needs, and decoding never allocates more than a frame's raw size.
    The level is recorded in the manifest but is not needed to decode.
    """

    level: int = 3
    name: str = "zstd"

    def __post_init__(self) -> None:
        level = self.level
        if isinstance(level, bool) or not isinstance(level, int):
            raise CheckpointError(f"ZstdCodec: level must be an int, got {level!r}")
        if not ZSTD_MIN_LEVEL <= level <= ZSTD_MAX_LEVEL:
            raise CheckpointError(
                f"ZstdCodec: level {level} is out of range [{ZSTD_MIN_LEVEL}, {ZSTD_MAX_LEVEL}]"
            )

    def encode(self, data: memoryview) -> bytes:
        return bytes(_zstd_compressor(self.level).compress(data))

    def decode(self, data: memoryview, max_nbytes: int = 1 << 30) -> bytes:
        import zstandard

        try:
            size = zstandard.frame_content_size(data)
            if size < 0 or size > max_nbytes:
                raise ValueError(f"zstd frame declares {size} bytes, at most {max_nbytes} allowed")
            return bytes(_zstd_decompressor().decompress(data, max_output_size=max_nbytes))
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd frame does not decode: {e}") from e


_local = threading.local()


def _zstd_compressor(level: int) -> Any:
    import zstandard

    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _zstd_decompressor() -> Any:
    import zstandard

    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


_user_codecs: dict[str, Codec] = {}
_DCP_CODEC = "dcp-torch-save"
_BUILTIN = ("identity", "zstd", _DCP_CODEC)


def register_codec(codec: Codec) -> None:
    """Make ``codec`` usable by name in ``save(codec=...)`` and readable on load.

    Any object with ``name: str``, ``encode(data) -> bytes`` and ``decode(data) -> bytes``.
    Register it in every process that saves or loads such checkpoints.
    """
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not name:
        raise CheckpointError("register_codec: the codec needs a non-empty str 'name'")
    if name in _BUILTIN or name.startswith("zstd:"):
        raise CheckpointError(f"register_codec: {name!r} is a built-in codec name")
    if not callable(getattr(codec, "encode", None)) or not callable(getattr(codec, "decode", None)):
        raise CheckpointError(f"register_codec: codec {name!r} needs encode() and decode()")
    _user_codecs[name] = codec


def resolve_codec(codec: None | str | Codec) -> tuple[Codec, CodecSpec]:
    """The codec object and its manifest record for a ``save(codec=...)`` argument."""
    if codec is None or codec == "identity":
        return IdentityCodec(), IDENTITY
    if codec == "zstd":
        return ZstdCodec(), CodecSpec(name="zstd", configuration=(("level", 3),))
    if isinstance(codec, str) and codec.startswith("zstd:"):
        level = _zstd_level(codec)
        return ZstdCodec(level=level), CodecSpec(name="zstd", configuration=(("level", level),))
    if isinstance(codec, ZstdCodec):
        return codec, CodecSpec(name="zstd", configuration=(("level", codec.level),))
    if isinstance(codec, str):
        if codec not in _user_codecs:
            raise UnknownCodecError(_unknown(codec))
        return _user_codecs[codec], CodecSpec(name=codec)
    if isinstance(codec, Codec):
        register_codec(codec)
        return codec, CodecSpec(name=codec.name)
    raise CheckpointError(f"codec: expected None, a codec name or a codec object, got {codec!r}")


def _zstd_level(text: str) -> int:
    try:
        return int(text.removeprefix("zstd:"))
    except ValueError:
        raise CheckpointError(
            f"codec {text!r}: expected 'zstd:<level>' with an integer level, e.g. 'zstd:9'"
        ) from None


def get_codec(spec: CodecSpec) -> Codec:
    """The codec that decodes chunks recorded with ``spec``."""
    if spec.name == "identity":
        return IdentityCodec()
    if spec.name == "zstd":
        return ZstdCodec()
    if spec.name in _user_codecs:
        return _user_codecs[spec.name]
    if spec.name == _DCP_CODEC:
        # Only in manifests built in memory from a DCP directory; never a user name.
        from ..interop.dcp import DcpTorchSaveCodec

        return DcpTorchSaveCodec.from_spec(spec)
    raise UnknownCodecError(_unknown(spec.name))


def _unknown(name: str) -> str:
    return (
        f"codec {name!r} is not registered in this process; call "
        f"reshard.register_codec(<object with name={name!r}, encode(), decode()>) before "
        "saving or loading"
    )


def decode_frame(codec: Codec, data: memoryview, raw_nbytes: int) -> bytes | bytearray | memoryview:
    """Decode one frame expected to hold ``raw_nbytes``; built-ins never allocate more."""
    if isinstance(codec, ZstdCodec):
        return codec.decode(data, max_nbytes=raw_nbytes)
    return codec.decode(data)
