"""Codecs (storage transforms applied to each frame) and checksums."""

from .checksum import crc32c
from .registry import (
    Codec,
    IdentityCodec,
    ZstdCodec,
    decode_frame,
    get_codec,
    register_codec,
    resolve_codec,
)

__all__ = [
    "Codec",
    "IdentityCodec",
    "ZstdCodec",
    "crc32c",
    "decode_frame",
    "get_codec",
    "register_codec",
    "resolve_codec",
]
