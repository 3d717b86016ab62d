"""Tunables, each overridable by a RESHARD_* environment variable.

A value that cannot be used raises ConfigError (a CheckpointError and a ValueError)
naming the variable, wherever it is read: ``reshard verify`` prints it as one line.
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .format.column_crcs import MAX_PARTS as MAX_COLUMN_CHECKSUM_PARTS  # what readers accept
from .format.manifest import MAX_FRAME_RAW_NBYTES


def _int_env(name: str, default: int, *, lo: int = 1, hi: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < lo:
        bound = "positive" if lo == 1 else f"at least {lo}"
        raise ConfigError(f"{name}={raw!r} must be {bound}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}={raw!r} must be at most {hi}")
    return value


FRAME_RAW_NBYTES = 256 * 1024
"""Default frame of uncoded chunks: the unit a partial read checks, so it stays small."""
ENCODED_FRAME_RAW_NBYTES = 1024 * 1024
"""Default frame of compressed chunks. Each encoded frame pays a fixed cost (the plane
sample, the match probe, entropy tables, the calls around them): 1 MiB frames cut zstd
save CPU by about a fifth and load CPU by about a sixth against 256 KiB, while a partial
read decodes at most one frame more at each end of its cut."""


def frame_raw_nbytes(*, encoded: bool = False) -> int:
    """Raw bytes per checksummed, independently decodable frame of a save whose chunks
    are ``encoded`` (any codec but identity) or not."""
    # Readers refuse larger frames (docs/FORMAT.md): a save must never write them.
    default = ENCODED_FRAME_RAW_NBYTES if encoded else FRAME_RAW_NBYTES
    return _int_env("RESHARD_FRAME_RAW_NBYTES", default, hi=MAX_FRAME_RAW_NBYTES)


MAX_COLUMN_BLOCKS = 1024
COLUMN_TILE_NBYTES = 16 * 1024 * 1024
"""About the size of one tile of a save with column blocks: each is copied to host memory
whole before it is written, so this bounds the extra memory of such a save per thread."""
COLUMN_TILE_MIN_NBYTES = 1024 * 1024
"""Boxes under this stay whole in a save with column blocks: their reads cost little
either way, while more chunks cost every load per-chunk work."""


def column_blocks(value: object = None) -> int:
    """Parts along dim 1 in which a save stores every box of two or more dims and at
    least ``COLUMN_TILE_MIN_NBYTES`` (1: as held). ``value`` is save's ``column_blocks``
    argument; None reads the variable."""
    if value is None:
        return _int_env("RESHARD_COLUMN_BLOCKS", 1, hi=MAX_COLUMN_BLOCKS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COLUMN_BLOCKS:
        raise ConfigError(
            f"column_blocks={value!r} must be an integer from 1 to {MAX_COLUMN_BLOCKS}"
        )
    return value


COLUMN_CHECKSUM_MIN_NBYTES = 1024 * 1024
"""Boxes up to this size get no column checksums: they are written and read whole."""


def column_checksums() -> int:
    """The parts along dim 1 whose column tiles a save checksums besides the frames
    (core.column_checks), for boxes of two or more dims over
    ``COLUMN_CHECKSUM_MIN_NBYTES`` stored raw; 0 or 1 turns them off."""
    return _int_env("RESHARD_COLUMN_CHECKSUMS", 2, lo=0, hi=MAX_COLUMN_CHECKSUM_PARTS)


def max_piece_nbytes() -> int:
    """Largest span one read piece stages in memory."""
    return _int_env("RESHARD_MAX_PIECE_NBYTES", 16 * 1024 * 1024)


def writeback_nbytes() -> int:
    """Bytes written to a local data file between requests that the OS start writing them
    to disk (Linux ``sync_file_range``, without waiting), so the fsync that ends a save
    waits only for the last ones; 0 turns this off, and the fsync then writes the whole
    file while the save waits."""
    if os.environ.get("RESHARD_WRITEBACK_NBYTES") == "0":
        return 0
    return _int_env("RESHARD_WRITEBACK_NBYTES", 8 * 1024 * 1024)


def leftover_age_s() -> int:
    """Seconds after its start before a data file that no manifest names (a killed or
    failed save's) is removed by a save to the same path; younger ones may belong to a
    save to that path that is still running, whose commit needs them."""
    return _int_env("RESHARD_LEFTOVER_AGE_S", 3600, lo=0)


def io_threads() -> int:
    """Threads for file reads, decoding and checksums in one process."""
    return _int_env("RESHARD_IO_THREADS", min(8, (os.cpu_count() or 2) * 2))


def zstd_literals() -> bool:
    """planes-zstd entropy-codes float exponent planes without a match search through
    libzstd's ``ZSTD_compressSequencesAndLiterals`` (codecs/zstd_cffi.py; libzstd 1.5.7+
    through zstandard's cffi binding): 1 on (the default), 0 for ``ZSTD_compress2`` on
    every plane. The frames are standard zstd either way and decode alike; 0 only gives
    up ~20% of a float save's encoding CPU."""
    raw = os.environ.get("RESHARD_ZSTD_LITERALS", "1")
    if raw not in ("0", "1"):
        raise ConfigError(f"RESHARD_ZSTD_LITERALS={raw!r} must be 0 or 1")
    return raw == "1"


def fast_json() -> bool:
    """Manifests are parsed with orjson where it gives the same document (fast_json.py):
    1 on (the default), 0 for the standard parser. orjson took about 2 CPU s less on a
    132 MiB manifest (2,048 ranks x 500 tensors) but its document peaked about 40% higher
    (1.2 GiB against 0.9 GiB) while the manifest is checked."""
    raw = os.environ.get("RESHARD_FAST_JSON", "1")
    if raw not in ("0", "1"):
        raise ConfigError(f"RESHARD_FAST_JSON={raw!r} must be 0 or 1")
    return raw == "1"


def map_reads() -> bool:
    """Local data files are memory-mapped for pieces that are checksummed in place and
    then cut or decoded (storage/local.py ``view``). 1 on (the default), 0 off: every
    byte is then read with ``pread`` into a buffer first."""
    raw = os.environ.get("RESHARD_MAP_READS", "1")
    if raw not in ("0", "1"):
        raise ConfigError(f"RESHARD_MAP_READS={raw!r} must be 0 or 1")
    return raw == "1"


def exchange_reads(*, remote: bool) -> bool:
    """Cooperative reads in multi-rank loads (transfer/exchange.py): when several ranks
    need parts of the same checksummed frames (a column cut of row-major chunks), one
    rank reads and verifies each frame and sends the others their bytes over the
    process group, instead of every rank reading the whole frame. ``auto`` (the
    default) uses them where the checkpoint is ``remote`` (an fsspec URL such as
    s3://), where every byte read is a billed, slower request, and not for local files:
    there, with the gloo loopback swap, they were slower, warm and cold, than reading
    the frames twice (docs/PERFORMANCE.md). 1 always, 0 never. A rank that says no only
    keeps its own needs out of the plan; rank 0's other exchange settings are used by
    all ranks, so the plan is the same everywhere."""
    raw = os.environ.get("RESHARD_EXCHANGE_READS", "auto")
    if raw not in ("0", "1", "auto"):
        raise ConfigError(f"RESHARD_EXCHANGE_READS={raw!r} must be 0, 1 or auto")
    return remote if raw == "auto" else raw == "1"


def exchange_min_nbytes() -> int:
    """Cooperative reads are used only when they spare at least this many bytes of
    frames that would otherwise be read by more than one rank (summed over ranks)."""
    return _int_env("RESHARD_EXCHANGE_MIN_NBYTES", 16 * 1024 * 1024)


def exchange_round_nbytes() -> int:
    """Bytes each rank reads per exchange round. Two rounds are in flight (one read
    while the other is swapped): about 2 x this in send and in receive buffers."""
    return _int_env("RESHARD_EXCHANGE_ROUND_NBYTES", 16 * 1024 * 1024)


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= 0:
        raise ConfigError(f"{name}={raw!r} must be zero or positive")
    return value


def remote_attempts() -> int:
    """Tries of one remote request (the first included) before a transient error is final."""
    return _int_env("RESHARD_REMOTE_ATTEMPTS", 6)


def remote_backoff_s() -> float:
    """First retry delay on a transient remote error; it doubles per retry (capped, jittered)."""
    return _float_env("RESHARD_REMOTE_BACKOFF_S", 0.2)


def upload_part_nbytes() -> int:
    """Object-store files up to this size are one PUT; larger ones upload in parts of this size."""
    return _int_env("RESHARD_UPLOAD_PART_NBYTES", 32 * 1024 * 1024)


def remote_coalesce_gap_nbytes() -> int:
    """Object-store reads of one file this close together are fetched as one request."""
    return _int_env("RESHARD_REMOTE_COALESCE_GAP_NBYTES", 1024 * 1024)
