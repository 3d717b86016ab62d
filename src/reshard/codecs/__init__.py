"""Codecs (storage transforms applied to each frame) and checksums."""

from .checksum import crc32c
from .planes import PlanesZstdCodec
from .registry import (
    Codec,
    IdentityCodec,
    bind_codec,
    decode_frame,
    decode_frame_into,
    get_codec,
    register_codec,
    resolve_codec,
)
from .zstd import ShuffleZstdCodec, ZstdCodec, chunk_spec

__all__ = [
    "Codec",
    "IdentityCodec",
    "PlanesZstdCodec",
    "ShuffleZstdCodec",
    "ZstdCodec",
    "bind_codec",
    "chunk_spec",
    "crc32c",
    "decode_frame",
    "decode_frame_into",
    "get_codec",
    "register_codec",
    "resolve_codec",
]
