"""The store interface: a checkpoint directory of named files."""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol


class Store(Protocol):
    """Bytes of one checkpoint directory, addressed by relative '/'-separated names.

    Every rank opens its own store on the same path. Only the coordinator calls
    ``write_atomic`` (the commit) and ``delete``.
    """

    location: str

    def open_writer(self, name: str) -> BinaryIO:
        """A new file for sequential writes; ``close()`` makes it durable."""
        ...

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` from ``offset`` of ``name``; a short file raises."""
        ...

    def read_bytes(self, name: str) -> bytes:
        """The whole of a small file (the manifest)."""
        ...

    def size(self, name: str) -> int:
        """Size in bytes of ``name``; CheckpointNotFoundError when it does not exist."""
        ...

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace ``name`` with ``data`` all at once, durably (the commit point)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Names under the folder ``prefix``."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name`` if it exists."""
        ...

    def close(self) -> None:
        """Release cached handles."""
        ...


def open_store(path: str | os.PathLike[str]) -> Store:
    from .local import LocalStore

    return LocalStore(os.fspath(path))
