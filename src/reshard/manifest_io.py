"""Finding and reading a checkpoint's manifest in a store."""

from __future__ import annotations

import os

from . import fast_json
from .errors import CheckpointNotFoundError, UnsupportedFormatError
from .format.manifest import MANIFEST_NAME, Manifest
from .storage import Store, is_remote


def read_manifest_bytes(store: Store) -> bytes:
    """The committed manifest's bytes; CheckpointNotFoundError naming the path if none."""
    if not is_remote(store) and os.path.isfile(store.location):
        # Otherwise: "cannot open <file>/manifest.json: Not a directory".
        hint = " (reshard convert reads safetensors files)" if store.location.endswith(".safetensors") else ""
        raise CheckpointNotFoundError(
            f"{store.location} is a file; a checkpoint is a directory holding {MANIFEST_NAME} "
            f"(or a torch.distributed.checkpoint's .metadata){hint}"
        )
    try:
        data = store.read_bytes(MANIFEST_NAME)
    except CheckpointNotFoundError:
        raise CheckpointNotFoundError(
            f"no reshard checkpoint at {store.location}: {MANIFEST_NAME} does not exist "
            "(a save to this path never committed), and no .metadata of a "
            f"torch.distributed.checkpoint either{_safetensors_hint(store)}"
        ) from None
    refuse_if_dcp(store, f"it holds a reshard {MANIFEST_NAME} too, and which of the two "
                         "checkpoints is current cannot be told; remove the stale one")
    return data


def refuse_if_dcp(store: Store, why: str) -> None:
    """UnsupportedFormatError (``why`` says what it would mean) when ``store`` also holds
    a torch.distributed.checkpoint: a folder is one checkpoint or the other."""
    from .interop import dcp

    if dcp.is_dcp_checkpoint(store):
        raise UnsupportedFormatError(
            f"{store.location} holds a torch.distributed.checkpoint ({dcp.METADATA_NAME}): {why}"
        )


def _safetensors_hint(store: Store) -> str:
    # A Hugging Face model folder is the likeliest thing a newcomer points reshard at.
    if is_remote(store):
        return ""
    try:
        names = os.listdir(store.location)
    except OSError:
        return ""
    if any(n.endswith(".safetensors") for n in names):
        return "; it holds .safetensors files, which reshard convert reads"
    return ""


def find_manifest(
    store: Store, *, allow_pickle: bool = False, keep_damaged: bool = False
) -> bytes | Manifest:
    """The committed manifest's bytes (parse them with ``parse_manifest``), or the
    in-memory manifest of a torch.distributed.checkpoint directory.

    This is the one place that decides what kind of checkpoint a path holds: a reshard
    ``manifest.json``, else a torch.distributed.checkpoint directory (``.metadata``),
    described by an in-memory manifest. ``allow_pickle`` lets DCP values that need
    arbitrary pickle load; it never applies to reshard checkpoints (they hold no pickle).
    ``keep_damaged`` (for ``verify``): a DCP value whose bytes are damaged becomes an entry
    that says so rather than failing the whole manifest (``dcp.load_dcp_manifest``).

    A load's coordinator calls this and shares the result: bytes are cheaper to send
    than a parsed manifest is to pickle and rebuild, so every rank parses them itself.
    """
    try:
        return read_manifest_bytes(store)
    except CheckpointNotFoundError:
        from .interop import dcp

        if dcp.is_dcp_checkpoint(store):
            return dcp.load_dcp_manifest(store, allow_pickle=allow_pickle, keep_damaged=keep_damaged)
        raise


def parse_manifest(store: Store, data: bytes) -> Manifest:
    """The validated manifest of ``store`` from its bytes (errors name its path)."""
    return Manifest.from_json(data, source=os.path.join(store.location, MANIFEST_NAME),
                              loads=fast_json.loads)


def load_manifest(store: Store, *, allow_pickle: bool = False, keep_damaged: bool = False) -> Manifest:
    """The parsed, validated manifest of the checkpoint in ``store`` (``find_manifest``
    decides what kind it is)."""
    found = find_manifest(store, allow_pickle=allow_pickle, keep_damaged=keep_damaged)
    return parse_manifest(store, found) if isinstance(found, bytes) else found
