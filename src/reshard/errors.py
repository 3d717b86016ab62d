"""Every error reshard raises.

    CheckpointError(Exception)
    ├── CheckpointNotFoundError(CheckpointError, FileNotFoundError)
    ├── CorruptCheckpointError(CheckpointError)
    ├── UnsupportedFormatError(CheckpointError)
    ├── UnknownCodecError(CheckpointError, KeyError)
    ├── LayoutMismatchError(CheckpointError, ValueError)
    ├── MissingKeysError(CheckpointError, KeyError)
    ├── UnsupportedValueError(CheckpointError, TypeError)
    ├── StorageError(CheckpointError, OSError)
    └── ConfigError(CheckpointError, ValueError)

Collective calls raise the same error class and message on every rank.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Root of every error the library raises."""

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print their message quoted.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No committed checkpoint exists at the given path."""


class CorruptCheckpointError(CheckpointError):
    """A manifest or data file is unreadable, truncated or fails its checksum."""


class UnsupportedFormatError(CheckpointError):
    """The manifest is of a format or major version this reshard cannot read."""


class UnknownCodecError(CheckpointError, KeyError):
    """A chunk names a codec that is not registered in this process."""


class LayoutMismatchError(CheckpointError, ValueError):
    """Shapes, dtypes or boxes do not agree (between ranks, or checkpoint and state dict)."""


class MissingKeysError(CheckpointError, KeyError):
    """A strict load asked for keys the checkpoint lacks."""


class UnsupportedValueError(CheckpointError, TypeError):
    """A state dict value cannot be stored without pickle."""


class StorageError(CheckpointError, OSError):
    """Reading or writing the underlying storage failed."""


class ConfigError(CheckpointError, ValueError):
    """A RESHARD_* environment variable or a setting argument holds a value reshard cannot use."""


ERROR_CLASSES: dict[str, type[CheckpointError]] = {
    cls.__name__: cls
    for cls in (
        CheckpointError,
        CheckpointNotFoundError,
        CorruptCheckpointError,
        UnsupportedFormatError,
        UnknownCodecError,
        LayoutMismatchError,
        MissingKeysError,
        UnsupportedValueError,
        StorageError,
        ConfigError,
    )
}


def printable(text: str) -> str:
    """``text`` with its unprintable characters escaped (``\\x1b``, ``\\n``): messages and
    listings quote names and text from checkpoints, which are not trusted, and must not
    move the cursor, recolour or clear the terminal that prints them."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
