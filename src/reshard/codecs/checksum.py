"""CRC-32C of stored bytes, from the hardware-accelerated ``crc32c`` package."""

from __future__ import annotations

import crc32c as _crc32c


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``; releases the GIL on large buffers."""
    return int(_crc32c.crc32c(data, value))
