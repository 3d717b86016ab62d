"""Reading a checkpoint's manifest from a store."""

from __future__ import annotations

from .errors import CheckpointNotFoundError
from .format.manifest import MANIFEST_NAME
from .storage import Store


def read_manifest_bytes(store: Store) -> bytes:
    """The committed manifest's bytes; CheckpointNotFoundError naming the path if none."""
    try:
        return store.read_bytes(MANIFEST_NAME)
    except CheckpointNotFoundError:
        raise CheckpointNotFoundError(
            f"no reshard checkpoint at {store.location}: {MANIFEST_NAME} does not exist "
            "(a save to this path never committed)"
        ) from None
