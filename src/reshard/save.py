"""The save path: describe, plan on the coordinator, write per rank, commit the manifest."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import torch

from . import __version__, config
from .adapters.tensors import describe, flatten
from .codecs import Codec, resolve_codec
from .core.planner import Desc, SavePlan, TensorDesc, ValueDesc, plan_save
from .dist.collective import Collective, Outcome, raise_if_failed
from .errors import StorageError
from .format.manifest import (
    DATA_DIR,
    MANIFEST_NAME,
    Chunk,
    CodecSpec,
    Entry,
    Manifest,
    TensorEntry,
    ValueEntry,
)
from .storage import Store, open_store
from .transfer.write import WrittenChunk, write_data_file


def save(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    process_group: Any = None,
    codec: str | Codec | None = None,
) -> None:
    """Save ``state_dict`` to ``path``; collective over ``process_group``.

    Every rank passes its own shards and the same ``path``. Replicated data is written
    once. The manifest is committed last, atomically: a crash leaves the previous
    checkpoint at ``path`` loadable. Any rank's failure raises on every rank.
    """
    coll = Collective(process_group)
    store = open_store(path)
    try:
        _save(coll, store, state_dict, codec)
    finally:
        store.close()


def _save(coll: Collective, store: Store, state_dict: Mapping[str, Any], codec_arg: Any) -> None:
    local: dict[str, Any] = {}

    def describe_local() -> list[Desc]:
        local["codec"], local["codec_spec"] = resolve_codec(codec_arg)
        described = [describe(key, leaf) for key, leaf in flatten(state_dict)]
        local["tensors"] = [tensors for _, tensors in described]
        return [desc for desc, _ in described]

    described = coll.gather_outcomes(describe_local)
    shared: dict[str, Any] = {}

    def decide() -> list[tuple[str, tuple[Any, ...]]]:
        assert described is not None
        raise_if_failed(described)
        per_rank: list[list[Desc]] = [o.value for o in described]  # type: ignore[misc]
        shared["plan"], shared["per_rank"] = plan_save(per_rank), per_rank
        _check_target(store)
        save_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        return [(save_id, shared["plan"].tasks[r]) for r in range(coll.world_size)]

    save_id, tasks = coll.agree_scatter(decide)
    file_name = f"{DATA_DIR}/{save_id}.{coll.rank}.bin"

    def write_local() -> tuple[str, list[WrittenChunk]]:
        shards = [(t.item_index, t.box_index, local["tensors"][t.item_index][t.box_index])
                  for t in tasks]
        if not shards:
            return file_name, []
        with torch.no_grad():
            written = write_data_file(
                store, file_name, shards, local["codec"],
                frame_raw_nbytes=config.frame_raw_nbytes(), threads=config.io_threads(),
            )
        return file_name, written

    written = coll.gather_outcomes(write_local)

    def commit() -> None:
        assert written is not None
        try:
            raise_if_failed(written)
        except Exception:
            try:
                _remove_files(store, lambda name: os.path.basename(name).startswith(save_id))
            except Exception as e:  # noqa: BLE001 - report the failure that stopped the save
                _log.warning("reshard.save: could not remove the failed save's files: %s", e)
            raise
        manifest = _manifest(shared["plan"], shared["per_rank"], written, save_id,
                             coll.world_size, local["codec_spec"])
        keep = set(manifest.files())
        _sync_data_dir(store)
        store.write_atomic(MANIFEST_NAME, manifest.to_json())
        # Committed: from here the save has succeeded. Removing the previous files is
        # best effort; whatever is left is removed by the next save to this path.
        try:
            _remove_files(store, lambda name: name not in keep)
        except Exception as e:  # noqa: BLE001 - must not report a committed save as failed
            _log.warning("reshard.save: committed %s but could not remove old files: %s",
                         store.location, e)

    coll.agree_broadcast(commit)


_log = logging.getLogger("reshard")


def _check_target(store: Store) -> None:
    location = store.location
    if os.path.exists(location) and not os.path.isdir(location):
        raise StorageError(f"cannot save to {location}: it is a file, not a directory")
    data = os.path.join(location, DATA_DIR)
    try:
        os.makedirs(data, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create checkpoint directory {location}: {e}") from e
    # The save deletes every file in data/ that the new manifest does not name: a data/
    # that is a symlink to some other folder would have that folder emptied.
    if os.path.islink(data) or os.path.dirname(os.path.realpath(data)) != os.path.realpath(location):
        raise StorageError(
            f"cannot save to {location}: {data} is a symlink; it must be a plain folder "
            "inside the checkpoint (a save removes every file there that it did not write)"
        )


def _sync_data_dir(store: Store) -> None:
    folder = os.path.join(store.location, DATA_DIR)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_files(store: Store, should_remove: Any) -> None:
    """Delete data files and stale temporary manifests the predicate selects."""
    for name in store.list(DATA_DIR):
        if should_remove(name):
            store.delete(name)
    for name in store.list(""):
        if name.startswith(f"{MANIFEST_NAME}.tmp-"):
            store.delete(name)


def _manifest(
    plan: SavePlan,
    per_rank: list[list[Desc]],
    written: list[Outcome[tuple[str, list[WrittenChunk]]]],
    save_id: str,
    world_size: int,
    codec_spec: CodecSpec,
) -> Manifest:
    chunks_by_key: dict[Any, list[Chunk]] = {}
    for rank, outcome in enumerate(written):
        assert outcome.value is not None
        file_name, records = outcome.value
        for w in records:
            desc = per_rank[rank][w.item_index]
            assert isinstance(desc, TensorDesc)
            chunks_by_key.setdefault(desc.key, []).append(Chunk(
                box=desc.boxes[w.box_index], file=file_name, offset=w.offset, nbytes=w.nbytes,
                raw_nbytes=w.raw_nbytes, codec=codec_spec,
                frame_raw_nbytes=w.frame_raw_nbytes, frames=w.frames,
            ))
    entries: list[Entry] = []
    for desc in plan.entries:
        if isinstance(desc, ValueDesc):
            entries.append(ValueEntry(key=desc.key, value=desc.value))
        else:
            chunks = sorted(chunks_by_key.get(desc.key, []), key=lambda c: c.box.offsets)
            entries.append(TensorEntry(key=desc.key, dtype=desc.dtype, shape=desc.shape,
                                       container=desc.container, chunks=tuple(chunks)))
    return Manifest(save_id=save_id, world_size=world_size, created_unix_s=time.time(),
                    library_version=__version__, entries=tuple(entries))

