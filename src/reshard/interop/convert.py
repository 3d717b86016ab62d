"""``reshard convert``: DCP or safetensors -> reshard, reshard (or DCP) -> safetensors.

Every source is opened as a reshard manifest (a DCP ``.metadata`` and safetensors
headers are described in memory), so one streaming reader serves all conversions: each
tensor is read box by box through reshard's read path and written as it arrives. Peak
memory is one piece (``RESHARD_MAX_PIECE_NBYTES``, 16 MiB by default), or one DCP chunk
when the source is DCP (a DCP item is a single torch.save blob that decodes whole).
Output keys are the dotted flattened names of the source, except that a DCP key whose
path DCP's planner recorded keeps that path as its parts (``("model", "layer.0.weight")``),
so that a load into an empty container rebuilds the dicts DCP saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import __version__, config
from ..cli_storage import add_storage_option, local_path_refused
from ..codecs import bind_codec, chunk_spec, resolve_codec
from ..core.layout import Box
from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StorageError,
    UnsupportedValueError,
    printable,
)
from ..format.manifest import (
    DATA_DIR,
    IDENTITY,
    MANIFEST_NAME,
    Chunk,
    CodecSpec,
    Entry,
    Frame,
    Manifest,
    TensorEntry,
    ValueEntry,
    dotted,
    new_save_id,
)
from ..progress import ProgressBar
from ..save import save_tiles
from ..storage import Store, new_file, open_store
from ..storage.base import local_path, refuse_local_options, same_place
from ..transfer.column_reads import column_crcs_of
from ..transfer.write import encode_frame
from . import safetensors_io as st

FORMATS = ("reshard", "safetensors")
EXIT_NOT_FOUND = 3
"""The exit status of every ``reshard`` subcommand (``convert``'s included) when a path
it must read holds no checkpoint: 1 means the command failed (damaged input, a DST it
may not write), and a script must be able to tell the two apart."""


@dataclass(slots=True)
class Source:
    """An opened checkpoint of any supported kind, read through reshard's read path."""

    store: Store
    manifest: Manifest
    kind: str

    def tensors(self) -> list[TensorEntry]:
        return [e for e in self.manifest.entries if isinstance(e, TensorEntry)]

    def plain_values(self) -> list[ValueEntry]:
        """Value entries with a JSON form; raises naming every key that has none."""
        from ._dcp_bytesio import BytesIOValueEntry
        from .dcp import PickledValueEntry, RefusedValueEntry, UnsupportedTensorEntry

        values = [e for e in self.manifest.entries if isinstance(e, ValueEntry)]
        tensors = [e for e in values if isinstance(e, UnsupportedTensorEntry)]
        if tensors:
            more = f" (and {len(tensors) - 1} more keys)" if len(tensors) > 1 else ""
            raise UnsupportedValueError(f"{tensors[0].reason.split(';')[0]}{more}; convert "
                                        "cannot store it")
        bad = [dotted(e.key) for e in values if isinstance(e, (PickledValueEntry, RefusedValueEntry))]
        buffers = [dotted(e.key) for e in values if isinstance(e, BytesIOValueEntry)]
        if buffers:
            # Not stored as bytes: a load of the output would give bytes where the state
            # dict (and a load of the DCP directory) has an io.BytesIO.
            raise UnsupportedValueError(
                f"keys {', '.join(repr(b) for b in buffers[:20])} hold io.BytesIO values, "
                "which reshard's format has no value form for, so convert cannot store them; "
                "load the DCP directory directly (reshard.load reads them)"
            )
        if bad:
            raise UnsupportedValueError(
                f"keys {', '.join(repr(b) for b in bad[:20])} hold Python objects that need "
                "arbitrary pickle; they have no JSON form, so convert cannot store them"
            )
        return values

    def refuse_name_clashes(self) -> None:
        """UnsupportedValueError naming them where two keys read as one dotted name.

        Both outputs name keys by dotted name (a reshard manifest refuses two keys that
        read alike, as save does), and a DCP directory can hold such a pair: a list
        value ``n = [1, 2]``, flattened to ``n.0`` and ``n.1``, beside its own key
        ``"n.0"``. convert wrote a manifest reshard then refused as corrupt ('duplicate
        key'), or a safetensors file holding one of the two.
        """
        seen: dict[str, Entry] = {}
        clashes: list[str] = []
        for e in self.manifest.entries:
            name = dotted(e.key)
            other = seen.setdefault(name, e)
            if other is not e:
                clashes.append(f"{list(other.key)} and {list(e.key)} both read as {name!r}")
        if clashes:
            more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
            raise UnsupportedValueError(
                f"{self.store.location}: keys {'; '.join(clashes[:3])}{more}; convert names "
                "every key by its dotted name and cannot write both"
            )

    def read(self, entry: TensorEntry, box: Box) -> memoryview:
        """The C-order bytes of ``box`` of ``entry``."""
        import torch

        from ..adapters.tensors import tensor_bytes, torch_dtype
        from ..transfer.read import Target, fill

        out = torch.empty(box.sizes, dtype=torch_dtype(entry.dtype))
        fill(self.store, [Target(entry=entry, box=box, tensor=out)],
             threads=config.io_threads(), max_piece_nbytes=config.max_piece_nbytes())
        return tensor_bytes(out)

    def piece_nbytes(self, entry: TensorEntry) -> int:
        # A DCP blob decodes whole whatever is asked of it: read it in one piece, not many.
        from .dcp import CODEC_NAME

        whole = [c.raw_nbytes for c in entry.chunks if c.codec.name == CODEC_NAME]
        return max([config.max_piece_nbytes(), *whole])

    def close(self) -> None:
        self.store.close()

    def out_key(self, entry: Entry) -> tuple[Any, ...]:
        """The key ``entry`` gets in reshard output: its dotted name as one part, or, for
        a DCP entry whose key is the exact path saved, that path (its name split at every
        dot would nest ``layer.0.weight`` as ``layer[0].weight`` in an empty container)."""
        from .dcp import exact_names

        name = dotted(entry.key)
        return entry.key if name in exact_names(self.manifest) else (name,)


def open_source(
    path: str, *, allow_pickle: bool = False, storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """Open a reshard checkpoint, a DCP directory, a ``.safetensors`` file, an HF
    ``*.safetensors.index.json``, or a directory holding safetensors files: a local path,
    or an fsspec URL (``storage_options`` go to fsspec; refused for a local path)."""
    from ..async_save import wait_for_inflight
    from ..manifest_io import load_manifest
    from .dcp import is_dcp_checkpoint

    if local_path(path) is None:
        return _open_remote_source(path, allow_pickle=allow_pickle,
                                   storage_options=dict(storage_options or {}))
    refuse_local_options(path, storage_options, "SRC")
    path = os.path.abspath(local_path(path) or path)
    # As load and open do: an async_save to this folder in this process is not yet
    # committed (convert found no checkpoint, or the previous one while the commit
    # deleted its files).
    wait_for_inflight(path)
    if os.path.isfile(path):
        folder, name = os.path.split(path)
        store = open_store(folder)
        if name.endswith(st.INDEX_SUFFIX):
            return _safetensors_source(store, *st.index_files(store, name), index=name)
        try:
            return _safetensors_source(store, [name], [])
        except CorruptCheckpointError as e:
            if name.endswith(".safetensors"):
                raise
            # pytorch_model.bin and the like: the header error alone was cryptic. Not
            # "damaged" either: a file not named as one is no checkpoint convert reads,
            # as inspect and verify call a file no checkpoint.
            raise CheckpointNotFoundError(
                f"{e}; {name} is not a safetensors file (convert reads .safetensors files, "
                f"*{st.INDEX_SUFFIX}, reshard and torch.distributed.checkpoint directories)"
            ) from None
    if not os.path.isdir(path):
        what = "is neither a regular file nor a directory" if os.path.exists(path) else "does not exist"
        raise CheckpointNotFoundError(f"no checkpoint at {path}: it {what}")
    store = open_store(path)
    if os.path.exists(os.path.join(path, MANIFEST_NAME)) or is_dcp_checkpoint(store):
        kind = "reshard" if os.path.exists(os.path.join(path, MANIFEST_NAME)) else "dcp"
        try:
            return Source(store, load_manifest(store, allow_pickle=allow_pickle), kind)
        except BaseException:
            store.close()
            raise
    names = sorted(os.listdir(path))
    index = [n for n in names if n.endswith(st.INDEX_SUFFIX)]
    if len(index) == 1:
        return _safetensors_source(store, *st.index_files(store, index[0]), index=index[0])
    files = [n for n in names if n.endswith(".safetensors")]
    if files:
        gap = _missing_shard(files)
        if gap is not None:
            store.close()
            raise CorruptCheckpointError(f"{path} has no *{st.INDEX_SUFFIX} and holds {gap}")
        return _safetensors_source(store, files, [])
    store.close()
    raise CheckpointNotFoundError(
        f"no checkpoint at {path}: it holds no manifest.json, DCP .metadata or .safetensors files"
    )


def _open_remote_source(url: str, *, allow_pickle: bool, storage_options: dict[str, Any]) -> Source:
    """open_source for an fsspec URL: the same kinds of checkpoint, found through the
    store (a URL ending in ``.safetensors`` or ``.safetensors.index.json`` names a file,
    read through a store of its folder; object stores have no folders to tell apart)."""
    from ..async_save import wait_for_inflight
    from ..manifest_io import load_manifest
    from .dcp import is_dcp_checkpoint

    url = url.rstrip("/")
    folder, _, name = url.rpartition("/")
    if name.endswith((".safetensors", st.INDEX_SUFFIX)) and folder:
        # "memory://m.safetensors" splits as "memory:/" and the name.
        store = open_store(folder + "/" if folder.endswith(":/") else folder, storage_options)
        try:
            store.size(name)  # absent: no checkpoint at SRC (exit 3), not a damaged one
            shards, shard_values = (st.index_files(store, name) if name.endswith(st.INDEX_SUFFIX)
                                    else ([name], []))
        except CheckpointNotFoundError:
            store.close()
            raise CheckpointNotFoundError(f"no checkpoint at {url}: it does not exist") from None
        except BaseException:
            store.close()
            raise
        return _safetensors_source(store, shards, shard_values,
                                   index=name if name.endswith(st.INDEX_SUFFIX) else "")
    store = open_store(url, storage_options)
    try:
        wait_for_inflight(store.location)
        try:
            store.size(MANIFEST_NAME)
            kind = "reshard"
        except CheckpointNotFoundError:
            kind = "dcp" if is_dcp_checkpoint(store) else ""
        if kind:
            return Source(store, load_manifest(store, allow_pickle=allow_pickle), kind)
        names = store.list("")
        index = [n for n in names if n.endswith(st.INDEX_SUFFIX)]
        files: list[str] = [n for n in names if n.endswith(".safetensors")]
        values: list[ValueEntry] = []
        if len(index) == 1:
            files, values = st.index_files(store, index[0])
        elif files:
            gap = _missing_shard(files)
            if gap is not None:
                raise CorruptCheckpointError(f"{url} has no *{st.INDEX_SUFFIX} and holds {gap}")
    except BaseException:
        store.close()
        raise
    if files or len(index) == 1:
        return _safetensors_source(store, files, values, index=index[0] if len(index) == 1 else "")
    store.close()
    raise CheckpointNotFoundError(
        f"no checkpoint at {url}: it holds no manifest.json, DCP .metadata or .safetensors files"
    )


_SHARD_NAME = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")


def _missing_shard(names: list[str]) -> str | None:
    """Where ``names`` hold some shards ``<stem>-<i>-of-<n>.safetensors`` of a set and
    not all, which one is missing. Such a folder (a download or conversion cut short)
    was read as the smaller model its shards hold, without a word."""
    sets: dict[tuple[str, str], set[int]] = {}
    for name in names:
        m = _SHARD_NAME.fullmatch(name)
        if m is not None:
            sets.setdefault((m.group(1), m.group(3)), set()).add(int(m.group(2)))
    for (stem, total), have in sorted(sets.items()):
        lost = sorted(set(range(1, int(total) + 1)) - have)
        if lost:
            width = len(total)
            return (f"only {len(have)} of the {int(total)} shards {stem}-*-of-{total}.safetensors "
                    f"({stem}-{lost[0]:0{width}d}-of-{total}.safetensors is missing)")
    return None


def _safetensors_source(
    store: Store, names: list[str], values: list[ValueEntry], *, index: str = ""
) -> Source:
    try:
        manifest = st.safetensors_manifest(
            store, names, frame_raw_nbytes=config.frame_raw_nbytes(), values=values,
            values_from=os.path.join(store.location, index),
        )
    except CheckpointNotFoundError as e:
        store.close()
        # A shard the index names is missing: the checkpoint is there and damaged, not
        # absent (CheckpointNotFoundError means "no checkpoint at SRC" to the CLI).
        where = f"{os.path.join(store.location, index)} names a file that is missing: " if index else ""
        raise CorruptCheckpointError(f"{where}{e}") from None
    except BaseException:
        store.close()
        raise
    return Source(store, manifest, "safetensors")


# Writers



def to_safetensors(
    source: Source, dst: str, *, max_shard_nbytes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write ``source`` as safetensors at ``dst`` (a ``.safetensors`` file name, or a
    directory that gets ``model.safetensors``), a local path; returns the files written."""
    _refuse_remote_safetensors(dst)
    folder, stem = _safetensors_target(local_path(dst) or dst)
    source.refuse_name_clashes()
    values = {dotted(v.key): v.value for v in source.plain_values()}
    plans = st.plan_shards(source.tensors(), stem=stem, max_shard_nbytes=max_shard_nbytes)
    names = [p.name for p in plans] + ([f"{stem}{st.INDEX_SUFFIX}"] if len(plans) > 1 else [])
    _refuse_stale_outputs(folder, stem, names)
    created = not os.path.exists(folder)
    _make_folder(folder)
    report = progress or (lambda n: None)
    meta: dict[str, str] = {"format": "pt"}
    if values and len(plans) == 1:
        import json

        meta[st.VALUES_KEY] = json.dumps(values, separators=(",", ":"))
    written: list[str] = []
    try:
        for plan in plans:
            path = os.path.join(folder, plan.name)
            st.write_file(path, plan, meta, source.read, source.piece_nbytes, report)
            written.append(path)
        if len(plans) > 1:
            index = os.path.join(folder, f"{stem}{st.INDEX_SUFFIX}")
            st.write_bytes_atomic(index, st.index_document(plans, values))
            written.append(index)
    except BaseException:
        # Shards written before the failure (a full disk at shard 3 of 6) are part of no
        # output: left, they read as a smaller model (a folder of safetensors files is a
        # source), and the next run refused them as an earlier conversion's. Each is new
        # (_refuse_stale_outputs), so removing them leaves the folder as it was.
        if len(plans) > 1:
            for path in written:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if created:
            try:
                os.rmdir(folder)
            except OSError:
                pass  # not empty: someone else's files stay
        raise
    return written


def _refuse_remote_safetensors(dst: str) -> None:
    """CheckpointError where ``dst`` is a URL: safetensors output is written with a
    temporary file and a rename (so a failure leaves no half file under the final name),
    which object stores lack."""
    if local_path(dst) is None:
        raise CheckpointError(
            f"safetensors output is written to local paths only, and DST {dst!r} is a URL; "
            "convert to a local file and copy it, or convert to a reshard checkpoint at the URL"
        )


def _refuse_stale_outputs(folder: str, stem: str, names: list[str]) -> None:
    """Refuse a folder holding safetensors files of an earlier conversion (``stem``'s
    single file, shards or index) that this one would not replace whole: a reader of
    the folder would take the earlier index (or shards) for part of this output and get
    the earlier checkpoint's values without a word.

    Only one file replaced by one file of the same name is allowed: a rename replaces
    it at once. Shards are not replaced in place: a conversion failing half-way would
    leave old and new shards that read as one checkpoint. Files of other names are
    left alone.
    """
    try:
        present = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    # <stem>.safetensors, <stem>-00001-of-00003.safetensors, <stem>.safetensors.index.json
    family = re.compile(re.escape(stem) + r"(?:-\d+-of-\d+)?\.safetensors(?:\.index\.json)?")
    stale = sorted(n for n in present if family.fullmatch(n) and (len(names) > 1 or n not in names))
    if stale:
        raise StorageError(
            f"{folder} holds {', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''} from an "
            f"earlier conversion, which this one (writing {', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}) would not replace whole: a reader would mix "
            "the two; remove them or convert into an empty folder"
        )


def _safetensors_target(dst: str) -> tuple[str, str]:
    dst = os.path.abspath(dst)
    if dst.endswith(".safetensors"):
        folder, name = os.path.split(dst)
        return folder, name[: -len(".safetensors")]
    return dst, "model"


def to_reshard(
    source: Source, dst: str, *, codec: str | None = None, column_blocks: int = 1,
    progress: Callable[[int], None] | None = None, storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write ``source`` as a reshard checkpoint at ``dst``: a new or empty directory, or
    an fsspec URL under which nothing is stored yet (``storage_options`` go to fsspec).

    One process writes one data file frame by frame, then commits the manifest. With
    ``column_blocks`` > 1 the chunks are cut as ``save(..., column_blocks=...)`` cuts them.
    """
    blocks = config.column_blocks(column_blocks)
    remote = local_path(dst) is None
    created = False
    if not remote:
        refuse_local_options(dst, storage_options, "DST")
        dst = os.path.abspath(local_path(dst) or dst)
        if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
            what = ("is a directory that is not empty" if os.path.isdir(dst)
                    else "exists and is not a directory")
            raise StorageError(f"DST {dst} {what}; reshard output goes to a new or empty directory")
        created = not os.path.exists(dst)
    codec_obj, spec = resolve_codec(codec)
    source.refuse_name_clashes()
    values = source.plain_values()
    save_id = new_save_id()
    file_name = f"{DATA_DIR}/{save_id}.0.bin"
    report = progress or (lambda n: None)
    if remote:
        store = _empty_remote_store(dst, storage_options)
    else:
        _make_folder(dst)
        store = open_store(dst)
    try:
        with new_file(store, file_name) as writer:
            framer = _Framer(writer, codec_obj, config.frame_raw_nbytes(encoded=spec != IDENTITY))
            entries: list[Entry] = [
                _write_tensor(source, e, framer, file_name, spec, report, blocks)
                for e in source.tensors()
            ]
        parts = config.column_checksums()
        if parts > 1:
            entries = [_with_column_crcs(store, e, parts) for e in entries]
        entries.extend(ValueEntry(key=source.out_key(v), value=v.value) for v in values)
        manifest = Manifest(save_id=save_id, world_size=1, created_unix_s=time.time(),
                            library_version=_library_version(source), entries=tuple(entries))
        store.write_atomic(MANIFEST_NAME, manifest.to_json())
        return manifest
    except BaseException:
        if remote:
            _remove_uncommitted_remote(store, file_name)
        else:
            _remove_uncommitted(dst, file_name, created)
        raise
    finally:
        store.close()


def _empty_remote_store(url: str, storage_options: Mapping[str, Any] | None) -> Store:
    """The store for a reshard DST at ``url``, where nothing may be stored yet: an
    earlier checkpoint's data files beside the new manifest would read as garbage to no
    one, but its manifest would be replaced without a word."""
    from ..storage.fsspec_store import FsspecStore

    store = open_store(url, storage_options)
    try:
        # Folders too: a prefix holding other checkpoints' folders is not a new one.
        present = store.entries() if isinstance(store, FsspecStore) else store.list("")
        if present:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise StorageError(f"DST {store.location} holds {shown}; reshard output goes to a "
                               "URL under which nothing is stored yet")
        store.prepare(DATA_DIR)
    except BaseException:
        store.close()
        raise
    return store


def _remove_uncommitted_remote(store: Store, file_name: str) -> None:
    """After a failed conversion to a URL, delete its data file unless the manifest was
    committed (then everything stays); a failure to delete leaves the original error."""
    try:
        store.size(MANIFEST_NAME)
    except CheckpointNotFoundError:
        try:
            store.delete(file_name)
        except CheckpointError:
            pass  # the conversion's own error is the one to report
    except CheckpointError:
        pass  # the store is unreachable: nothing to be done about the file either


def _library_version(source: Source) -> str:
    """reshard's version, labelled "converted from DCP" where the source records no empty
    dicts (a DCP directory, or an earlier conversion of one): DCP writes nothing for
    them, so this output has no entry for them either, and a load must treat it as it
    treats the DCP directory (``dcp.records_empty_dicts``), not report them missing."""
    from .dcp import converted_version, records_empty_dicts

    return __version__ if records_empty_dicts(source.manifest) else converted_version(__version__)


def _make_folder(folder: str) -> None:
    """Create the output folder (and its parents), or StorageError naming it: a parent
    that is a file, or a folder that may not be written, was reported as the failure to
    create a data file or temporary file inside it, by an internal name."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        # A file where a folder on the way should be: named, not "[Errno 17] File exists"
        # or "Not a directory" of some path.
        above = folder
        while not os.path.lexists(above) and os.path.dirname(above) != above:
            above = os.path.dirname(above)
        if os.path.lexists(above) and not os.path.isdir(above):
            what = "it" if above == folder else above
            raise StorageError(f"cannot create DST folder {folder}: {what} exists and is not "
                               "a directory") from None
        raise StorageError(f"cannot create DST folder {folder}: {e.strerror or e}") from None


def _with_column_crcs(store: Store, e: Entry, parts: int) -> Entry:
    """``e`` with the column checksums a save would give its chunks, from the bytes just
    written (the framer writes a chunk piece by piece, never holding its rows whole)."""
    if not isinstance(e, TensorEntry):
        return e
    chunks = []
    for c in e.chunks:
        crcs = column_crcs_of(store, c, e.shape, parts)
        chunks.append(c if crcs is None else dataclasses.replace(c, column_crcs=crcs))
    return dataclasses.replace(e, chunks=tuple(chunks))


def _remove_uncommitted(dst: str, file_name: str, created: bool) -> None:
    """After a failed conversion, leave ``dst`` as it was (absent or empty), so that the
    same command can be run again once the source is fixed; a committed manifest (its
    write failed only after the rename) keeps everything."""
    if os.path.exists(os.path.join(dst, MANIFEST_NAME)):
        return
    for path, remove in ((os.path.join(dst, file_name), os.unlink),
                         (os.path.join(dst, DATA_DIR), os.rmdir), (dst, os.rmdir)):
        if path == dst and not created:
            break
        try:
            remove(path)
        except OSError:
            pass  # absent, or not empty: someone else's files stay


def _write_tensor(
    source: Source, e: TensorEntry, framer: _Framer, file_name: str, spec: CodecSpec,
    report: Callable[[int], None], column_blocks: int = 1,
) -> TensorEntry:
    """Copy every chunk of ``e`` piece by piece into the framer: same boxes, or those
    boxes cut in ``column_blocks`` as save cuts them."""
    chunks = []
    # As in save: the codec and its record for elements of this entry's size.
    framer.codec, spec = bind_codec(framer.base_codec, e.itemsize), chunk_spec(spec, e.itemsize)
    for c in e.chunks:
        boxes = save_tiles(c.box, e.itemsize, column_blocks)
        read = _chunk_reader(source, e, c, len(boxes))
        for chunk_box in boxes:
            start = framer.offset
            for box in st.pieces(e.shape, chunk_box, source.piece_nbytes(e) // e.itemsize):
                data = read(box)
                framer.write(data)
                report(len(data))
            frames = framer.end_chunk()
            chunks.append(Chunk(
                box=chunk_box, file=file_name, offset=start, nbytes=framer.offset - start,
                raw_nbytes=chunk_box.numel * e.itemsize, codec=spec,
                frame_raw_nbytes=framer.frame, frames=frames,
            ))
    return TensorEntry(key=source.out_key(e), dtype=e.dtype, shape=e.shape,
                       container=e.container, chunks=tuple(chunks))


def _chunk_reader(
    source: Source, e: TensorEntry, c: Chunk, tiles: int
) -> Callable[[Box], memoryview]:
    """How boxes inside chunk ``c`` are read: from the source, or, for a DCP blob cut
    into several tiles, from one read of it kept in memory. A blob decodes whole on every
    read (the uncut copy reads it in one piece): tile by tile, a 1 GiB tensor cut into
    64 tiles was decoded 64 times."""
    from .dcp import CODEC_NAME

    if tiles <= 1 or c.codec.name != CODEC_NAME:
        return lambda box: source.read(e, box)
    import numpy as np

    held = np.frombuffer(source.read(e, c.box), dtype=np.uint8).reshape(*c.box.sizes, e.itemsize)

    def read(box: Box) -> memoryview:
        part = np.ascontiguousarray(held[box.relative_to(c.box).slices()])
        return part.data.cast("B")

    return read


class _Framer:
    """Cuts a chunk's byte stream into frames, encodes, checksums and appends them."""

    def __init__(self, writer: Any, codec: Any, frame_raw_nbytes: int) -> None:
        self.writer, self.codec, self.frame = writer, codec, frame_raw_nbytes
        self.base_codec = codec  # the save-wide codec; self.codec is bound per entry
        self.buf = bytearray()
        self.frames: list[Frame] = []
        self.offset = 0

    def write(self, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            take = min(self.frame - len(self.buf), len(view) - pos)
            self.buf += view[pos:pos + take]
            pos += take
            if len(self.buf) == self.frame:
                self._flush()

    def _flush(self) -> None:
        out, crc = encode_frame(self.codec, memoryview(self.buf))
        n = len(memoryview(out).cast("B"))
        self.writer.write(out)
        self.frames.append(Frame(nbytes=n, crc32c=crc))
        self.offset += n
        self.buf = bytearray()

    def end_chunk(self) -> tuple[Frame, ...]:
        if self.buf:
            self._flush()
        frames, self.frames = tuple(self.frames), []
        return frames


def convert(
    src: str, dst: str, *, to: str | None = None, max_shard_nbytes: int | None = None,
    codec: str | None = None, allow_pickle: bool = False, show_progress: bool = False,
    column_blocks: int = 1, src_storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Convert the checkpoint at ``src`` to ``to`` (inferred from ``dst``: a
    ``.safetensors`` suffix or ``max_shard_nbytes`` means safetensors, else reshard).

    ``src`` may be a local path or an fsspec URL (``s3://bucket/prefix``); so may ``dst``
    for reshard output (safetensors output is local). ``src_storage_options`` and
    ``dst_storage_options`` go to fsspec for each; given for a local path they raise.
    """
    src, dst = _location(src, "SRC"), _location(dst, "DST")
    if same_place(_absolute(src), _absolute(dst)):
        # Said so, not "DST exists and is not empty" (or, for safetensors, the source
        # file overwritten by its own copy).
        raise CheckpointError(f"SRC and DST are the same path ({_absolute(dst)}); "
                              "convert writes a new checkpoint: choose another DST")
    fmt = to or ("safetensors" if dst.endswith(".safetensors") or max_shard_nbytes else "reshard")
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown target format {fmt!r} (choose from {FORMATS})")
    if fmt == "safetensors" and (codec is not None or column_blocks != 1):
        raise CheckpointError("codec and column_blocks apply only to reshard output, "
                              f"not to {dst} (safetensors)")
    # Checked before SRC is read: a conversion must not run only to fail at the end.
    refuse_local_options(dst, dst_storage_options, "DST")
    if fmt == "safetensors":
        _refuse_remote_safetensors(dst)
    source = open_source(src, allow_pickle=allow_pickle, storage_options=src_storage_options)
    try:
        total = sum(e.nbytes for e in source.tensors())
        bar = ProgressBar("converting", total, enabled=None if show_progress else False)
        try:
            if fmt == "safetensors":
                return to_safetensors(source, dst, max_shard_nbytes=max_shard_nbytes, progress=bar.advance)
            to_reshard(source, dst, codec=codec, column_blocks=column_blocks,
                       progress=bar.advance, storage_options=dst_storage_options)
            return [_absolute(dst)]
        finally:
            bar.close()
    finally:
        source.close()


def _location(path: str | os.PathLike[str], role: str) -> str:
    """``path`` as text: a local path (a ``file://`` URL as its path) or an fsspec URL."""
    text = os.fspath(path)
    if not isinstance(text, str):
        raise CheckpointError(f"{role} must be a str or os.PathLike, got {text!r}")
    local = local_path(text)
    return text if local is None else local


def _absolute(location: str) -> str:
    """A local path made absolute; a URL as it is."""
    return os.path.abspath(location) if local_path(location) is not None else location


# CLI


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5*10**9, ``"500MiB"`` -> 500*2**20, ``"1024"`` -> 1024 bytes."""
    m = _SIZE_RE.match(text)
    unit = (m.group(2) or "").upper().rstrip("B") if m else ""
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 5GB, 500MiB or 1048576")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def path_argument(text: str) -> str:
    """A path given on the command line; an empty one is a usage error. ``""`` from an
    unset shell variable (``reshard convert "$SRC" out``) named the current directory
    to convert, and what it held was converted."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty (pass \".\" for the current directory)")
    return text


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert`` on an argparse subparsers object; sets ``func=cmd_convert``."""
    p = subparsers.add_parser(
        "convert", help="convert between DCP, reshard and safetensors checkpoints",
        description=(
            "Convert SRC to DST. SRC: a reshard checkpoint, a torch.distributed.checkpoint "
            "directory, a .safetensors file, a *.safetensors.index.json or a folder of "
            "safetensors files, a local path or an fsspec URL (s3://bucket/prefix). DST: a "
            "local path, or a URL for reshard output. The target format is --to, else "
            "safetensors when DST ends in .safetensors or --max-shard-size is given, else "
            "reshard. See docs/INTEROP.md."
        ),
        epilog="Exit status: 0 converted, 1 failed (damaged SRC, DST not a new or empty "
               "directory or not writable, a DST URL under which something is stored, SRC "
               "and DST the same path; one line on stderr), 2 usage error (storage options "
               "malformed or given for local paths included), 3 no checkpoint at SRC.",
    )
    p.add_argument("src", type=path_argument,
                   help="the checkpoint to read (a local path or an fsspec URL)")
    p.add_argument("dst", type=path_argument,
                   help="where to write the output (a local path; a URL for reshard output)")
    p.add_argument("--to", choices=FORMATS, help="target format (default: from DST's suffix)")
    p.add_argument("--max-shard-size", type=parse_size, default=None, metavar="SIZE",
                   help="split safetensors output into files of at most SIZE (5GB, 500MiB) "
                        "with a model.safetensors.index.json")
    p.add_argument("--codec", choices=("identity", "zstd"), default=None,
                   help="codec of reshard output (default identity)")
    p.add_argument("--column-blocks", type=int, default=None, metavar="K",
                   help="reshard output: store tensors of 2+ dims in K parts along dim 1, "
                        "for loads sharded on dim 1 (see save's column_blocks)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="let DCP values that need arbitrary pickle load (trusted input only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_option(p, "--storage-option", "storage_options",
                       "an fsspec storage option for SRC and DST, for each that is a URL "
                       "(repeatable): --storage-option endpoint_url=http://minio:9000; VALUE is "
                       "read as JSON where it parses as JSON (numbers, true, null, objects such "
                       "as client_kwargs={\"region_name\": \"eu-west-1\"}), else as the string "
                       "written; a usage error when neither is a URL")
    add_storage_option(p, "--src-storage-option", "src_storage_options",
                       "a storage option for SRC only (a URL), over a --storage-option of "
                       "the same KEY (repeatable)")
    add_storage_option(p, "--dst-storage-option", "dst_storage_options",
                       "a storage option for DST only (a URL), over a --storage-option of "
                       "the same KEY (repeatable)")
    p.set_defaults(func=cmd_convert)
    return p  # type: ignore[no-any-return]


def cmd_convert(args: argparse.Namespace) -> int:
    """Run ``reshard convert``; 0 ok, 1 failed (message on stderr), 2 usage error, 3 no
    checkpoint at SRC (``EXIT_NOT_FOUND``)."""
    if args.to == "reshard" and args.max_shard_size is not None:
        print("reshard convert: --max-shard-size applies only to safetensors output", file=sys.stderr)
        return 2
    if args.column_blocks is not None:
        try:
            config.column_blocks(args.column_blocks)
        except CheckpointError as e:  # a usage error, like any other bad flag value
            print(f"reshard convert: --column-blocks: {e}", file=sys.stderr)
            return 2
    for flag, given in (("--codec", args.codec), ("--column-blocks", args.column_blocks)):
        if args.to == "safetensors" and given is not None:
            print(f"reshard convert: {flag} applies only to reshard output", file=sys.stderr)
            return 2
    options = _storage_options(args)
    if isinstance(options, str):
        print(f"reshard convert: {options}", file=sys.stderr)
        return 2
    src_options, dst_options = options
    try:
        written = convert(args.src, args.dst, to=args.to, max_shard_nbytes=args.max_shard_size,
                          codec=args.codec, allow_pickle=args.allow_pickle,
                          show_progress=not args.quiet,
                          column_blocks=1 if args.column_blocks is None else args.column_blocks,
                          src_storage_options=src_options, dst_storage_options=dst_options)
    except (CheckpointError, OSError) as e:
        # The message may quote text from the source (not trusted): escape control characters.
        print(f"reshard convert: {printable(str(e))}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(e, CheckpointNotFoundError) else 1
    for path in written:
        print(path)
    return 0


def _storage_options(
    args: argparse.Namespace,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | str:
    """SRC's and DST's storage options from the command line: ``--storage-option`` for
    each that is a URL, a ``--src-``/``--dst-storage-option`` of the same KEY over it;
    or the usage error (one line) where options were given for local paths only."""
    shared = args.storage_options or {}
    src_url, dst_url = local_path(args.src) is None, local_path(args.dst) is None
    if shared and not (src_url or dst_url):
        return ("--storage-option applies only to fsspec URLs (s3://bucket/prefix), and SRC "
                f"{args.src!r} and DST {args.dst!r} are local paths")
    for flag, given, path, what in (
        ("--src-storage-option", args.src_storage_options, args.src, "SRC"),
        ("--dst-storage-option", args.dst_storage_options, args.dst, "DST"),
    ):
        refused = local_path_refused(path, flag, what) if given else None
        if refused is not None:
            return refused
    src = {**shared, **(args.src_storage_options or {})} if src_url else {}
    dst = {**shared, **(args.dst_storage_options or {})} if dst_url else {}
    return src or None, dst or None
