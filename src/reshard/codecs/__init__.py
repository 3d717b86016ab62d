"""Codecs (storage transforms applied to each frame) and checksums."""

from .registry import (
    Codec,
    IdentityCodec,
    ZstdCodec,
    decode_frame,
    get_codec,
    register_codec,
    resolve_codec,
)
from .checksum import crc32c

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
