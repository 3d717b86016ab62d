"""Damaging checkpoint files on purpose."""

from __future__ import annotations


def xor_byte(path: str, at: int, mask: int) -> None:
    """XOR the byte at offset ``at`` of ``path`` with ``mask`` (twice restores it)."""
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ mask]))
