"""reshard: checkpoint distributed PyTorch state, load it back resharded.

The save path is ``reshard.save`` (save.py); the load path is ``reshard.load`` (load.py);
``reshard.open`` (checkpoint.py) reads a checkpoint in one process; ``reshard.async_save``
(async_save.py) stages the state and saves it in the background.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .async_save import AsyncSaveHandle, async_save
from .checkpoint import Checkpoint, ChunkInfo, EntryInfo, open
from .codecs import Codec, IdentityCodec, ZstdCodec, register_codec
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    LayoutMismatchError,
    MissingKeysError,
    StorageError,
    UnknownCodecError,
    UnsupportedFormatError,
    UnsupportedValueError,
)
from .load import LoadStats, load
from .save import save
from .verify import VerifyReport, verify

__all__ = [
    "AsyncSaveHandle",
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChunkInfo",
    "Codec",
    "ConfigError",
    "CorruptCheckpointError",
    "EntryInfo",
    "IdentityCodec",
    "LayoutMismatchError",
    "LoadStats",
    "MissingKeysError",
    "StorageError",
    "UnknownCodecError",
    "UnsupportedFormatError",
    "UnsupportedValueError",
    "VerifyReport",
    "ZstdCodec",
    "__version__",
    "async_save",
    "load",
    "open",
    "register_codec",
    "save",
    "verify",
]
