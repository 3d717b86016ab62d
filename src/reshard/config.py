"""Tunables, each overridable by a RESHARD_* environment variable."""

from __future__ import annotations

import os


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


def frame_raw_nbytes() -> int:
    """Raw bytes per checksummed, independently decodable frame."""
    return _int_env("RESHARD_FRAME_RAW_NBYTES", 256 * 1024)


def max_piece_nbytes() -> int:
    """Largest span one read piece stages in memory."""
    return _int_env("RESHARD_MAX_PIECE_NBYTES", 16 * 1024 * 1024)


def io_threads() -> int:
    """Threads for file reads, decoding and checksums in one process."""
    return _int_env("RESHARD_IO_THREADS", min(8, (os.cpu_count() or 2) * 2))
