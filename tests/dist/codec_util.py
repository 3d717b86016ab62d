"""A user codec for the tests: rotates each frame's bytes and flips their bits.

Not compression; it just makes stored bytes differ from raw bytes in a way that any
misplaced byte range or skipped decode would show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RotateCodec:
    name: str = "test-rot"
    shift: int = 3

    def encode(self, data: memoryview) -> bytes:
        raw = np.frombuffer(data, dtype=np.uint8)
        return (np.roll(raw, self.shift) ^ 0xA5).tobytes()

    def decode(self, data: memoryview) -> bytes:
        raw = np.frombuffer(data, dtype=np.uint8)
        return np.roll(raw ^ 0xA5, -self.shift).tobytes()


def register_test_codecs() -> None:
    """Call in every process that saves or loads with ``test-rot``."""
    import reshard

    reshard.register_codec(RotateCodec())
