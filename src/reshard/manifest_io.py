"""Finding and reading a checkpoint's manifest in a store."""

from __future__ import annotations

import os

from .errors import CheckpointNotFoundError
from .format.manifest import MANIFEST_NAME, Manifest
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


def load_manifest(store: Store) -> Manifest:
    """The parsed, validated manifest of the checkpoint in ``store``.

    This is the one place that decides what kind of checkpoint a path holds.
    """
    return Manifest.from_json(
        read_manifest_bytes(store), source=os.path.join(store.location, MANIFEST_NAME)
    )
