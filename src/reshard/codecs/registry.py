"""The codec registry: identity, zstd, and user codecs registered by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import CheckpointError, UnknownCodecError
from ..format.manifest import IDENTITY, CodecSpec
from .planes import PLANES_ZSTD, PlanesZstdCodec
from .zstd import SHUFFLE_ZSTD, ShuffleZstdCodec, ZstdCodec, codec_from_spec


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


_ZSTD_CODECS = (ZstdCodec, ShuffleZstdCodec, PlanesZstdCodec)
_user_codecs: dict[str, Codec] = {}
_DCP_CODEC = "dcp-torch-save"
_BUILTIN = ("identity", "zstd", SHUFFLE_ZSTD, PLANES_ZSTD, _DCP_CODEC)


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
        return ZstdCodec(), ZstdCodec().spec()
    if isinstance(codec, str) and codec.startswith("zstd:"):
        zstd = ZstdCodec(level=_zstd_level(codec))
        return zstd, zstd.spec()
    if isinstance(codec, ZstdCodec):
        return codec, codec.spec()
    if isinstance(codec, (ShuffleZstdCodec, PlanesZstdCodec)):
        return codec, codec.spec()
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
    if spec.name in ("zstd", SHUFFLE_ZSTD, PLANES_ZSTD):
        return codec_from_spec(spec)
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
    if isinstance(codec, _ZSTD_CODECS):
        return codec.decode(data, max_nbytes=raw_nbytes)
    return codec.decode(data)


def decode_frame_into(codec: Codec, data: memoryview, out: np.ndarray) -> None:
    """Decode one frame into ``out`` (uint8), which it must fill exactly.

    Built-in codecs decode straight into ``out`` and never allocate more than its size;
    a frame that decodes to another size raises ``ValueError``.
    """
    if isinstance(codec, _ZSTD_CODECS):
        codec.decode_into(data, out)
        return
    decoded = memoryview(codec.decode(data)).cast("B")
    if len(decoded) != len(out):
        raise ValueError(f"frame decodes to {len(decoded)} bytes, expected {len(out)}")
    out[:] = np.frombuffer(decoded, dtype=np.uint8)


def bind_codec(codec: Codec, itemsize: int) -> Codec:
    """The codec that encodes the frames of one chunk of ``itemsize``-byte elements
    (``ZstdCodec`` shuffles by the element size); its record is :func:`chunk_spec`."""
    if isinstance(codec, ZstdCodec):
        return codec.for_itemsize(itemsize)
    return codec
