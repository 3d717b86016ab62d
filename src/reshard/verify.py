"""Check every byte of a checkpoint: ``reshard.verify`` and ``reshard verify PATH``.

A load already checks the CRC-32C of every frame it reads; ``verify`` reads *all* frames of
every chunk, checks each checksum, decodes each compressed frame (to its recorded raw size),
and checks that no data file is missing or shorter than its chunks need. In a
torch.distributed.checkpoint directory every item (tensor chunk or value) is checked
against the CRC-32s of its ``torch.save`` archive (docs/INTEROP.md, "Verifying a DCP
directory"). It never raises for
a damaged checkpoint: it returns a report naming each damaged chunk or frame by key and file.
Where there is no checkpoint at all (no manifest.json and no DCP .metadata, or the path is
a file) it raises CheckpointNotFoundError, as ``reshard.open`` does: a mistyped path is not
a damaged checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codecs import crc32c, decode_frame, get_codec
from .codecs.registry import Codec
from .core.column_checks import segments
from .errors import CheckpointError, CheckpointNotFoundError
from .format.manifest import (
    DATA_DIR,
    MANIFEST_NAME,
    Chunk,
    CodecSpec,
    Manifest,
    TensorEntry,
    dotted,
    is_saved_data_file,
)
from .manifest_io import load_manifest
from .storage import Store, open_store
from .transfer.column_reads import stored_tile_crcs, tile_name

READ_BATCH_NBYTES = 8 * 1024 * 1024
"""Stored bytes read at once (whole frames; one frame may exceed it)."""

Progress = Callable[[int, int], None]
"""``progress(done_nbytes, total_nbytes)``, called as stored bytes are checked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Damage:
    """One damaged part of a checkpoint.

    ``key`` is None for a problem with the manifest itself; ``frame`` is None when the whole
    chunk is affected (a missing or truncated file).
    """

    file: str
    message: str
    key: str | None = None
    chunk_offsets: tuple[int, ...] | None = None
    frame: int | None = None

    def __str__(self) -> str:
        where = self.file if self.key is None else f"key {self.key!r}, {self.file}"
        if self.chunk_offsets is not None:
            where += f", chunk at offsets {list(self.chunk_offsets)}"
        if self.frame is not None:
            where += f", frame {self.frame}"
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unchecked:
    """A key whose bytes ``verify`` could not check: a DCP value item larger than reshard
    reads into memory for one value (1 GiB; its key is refused by loads too). A DCP
    tensor of a dtype reshard does not read is no longer one: its items are checked
    against the CRC-32s of their ``torch.save`` archives."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"key {self.key!r}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What ``verify`` checked and what it found damaged.

    ``ok``: nothing damaged was found. ``unchecked`` names the keys whose bytes could not
    be checked at all; the checkpoint is ``intact`` only when it is ok and that is empty.
    ``damaged`` holds a ``Damage`` (file, key, chunk offsets, frame, message) per problem;
    ``warnings`` what is odd but not damage (data files no manifest names); the counts
    are what was checked.
    """

    path: str
    keys: int = 0
    chunks: int = 0
    frames: int = 0
    files: int = 0
    bytes_checked: int = 0
    damaged: tuple[Damage, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    unchecked: tuple[Unchecked, ...] = ()

    @property
    def ok(self) -> bool:
        """No damage found (see ``intact``: some keys may not have been checked)."""
        return not self.damaged

    @property
    def intact(self) -> bool:
        """No damage found, and every key's bytes were checked."""
        return not self.damaged and not self.unchecked

    def summary(self) -> str:
        """One line: the path, intact / DAMAGED / NOT CHECKED, and what was checked (the
        first line ``reshard verify`` prints; the str of each warning, damaged and
        unchecked item follows)."""
        n, u = len(self.damaged), len(self.unchecked)
        if self.intact:
            head = "intact"
        else:
            parts = [f"DAMAGED ({n} problem{'s' if n != 1 else ''})" if n else "no damage found"]
            if u:
                parts.append(f"{u} key{'s' if u != 1 else ''} NOT CHECKED")
            head = ", ".join(parts)
        return (f"{self.path}: {head}: {self.keys} keys, {self.chunks} chunks, {self.frames} "
                f"frames, {self.bytes_checked} stored bytes checked in {self.files} data files")


@dataclass(slots=True)
class _Tally:
    chunks: int = 0
    frames: int = 0
    done: int = 0
    damaged: list[Damage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Keyed by the whole spec: a codec may be configured per chunk (DCP items record
    # their dtype and shape in it), so one name can mean several codecs.
    codecs: dict[CodecSpec, Codec | None] = field(default_factory=dict)
    total: int = 0
    checked: int = 0
    progress: Progress | None = None

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.progress is not None and nbytes:
            self.progress(self.done, self.total)


def verify(
    path: str | os.PathLike[str], *, progress: Progress | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Read and check every frame of the checkpoint at ``path``; return a VerifyReport.

    Every frame of every chunk is read, its CRC-32C checked and, if compressed, decoded
    to its recorded raw size; missing or short data files are found too. A damaged
    checkpoint does not raise: the report's ``damaged`` names each problem by key and
    file (``report.ok``, ``report.intact``, ``report.summary()``). ``path`` may also be a
    torch.distributed.checkpoint directory or an fsspec URL (``storage_options`` go to
    fsspec, as in ``reshard.load``).

    Raises CheckpointNotFoundError (naming the path) when ``path`` holds no checkpoint; a
    manifest that is there but unreadable or invalid is reported as damage.
    """
    from .async_save import wait_for_inflight

    store = open_store(path, storage_options)
    try:
        wait_for_inflight(store.location)  # as in load: its commit deletes the files read here
        try:
            # A damaged DCP value is reported with the rest, not instead of it.
            manifest = load_manifest(store, keep_damaged=True)
        except CheckpointNotFoundError:
            # Nothing was saved here (or the path is mistyped): "DAMAGED" would send the
            # user looking for damage in a checkpoint that does not exist.
            raise
        except CheckpointError as e:  # unreadable or invalid: nothing else to check
            damage = Damage(file=_manifest_file(store), message=str(e))
            return VerifyReport(path=store.location, damaged=(damage,))
        return _verify(store, manifest, progress)
    finally:
        store.close()


def _manifest_file(store: Store) -> str:
    """The file that describes the checkpoint in ``store``: a DCP directory's is .metadata."""
    from .interop.dcp import METADATA_NAME, is_dcp_checkpoint

    try:
        store.size(MANIFEST_NAME)
    except CheckpointError:
        return METADATA_NAME if is_dcp_checkpoint(store) else MANIFEST_NAME
    return MANIFEST_NAME


def _verify(store: Store, manifest: Manifest, progress: Progress | None) -> VerifyReport:
    from .interop.dcp import UnsupportedTensorEntry

    tally = _Tally()
    by_file: dict[str, list[tuple[str, Chunk]]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    unchecked: list[Unchecked] = []
    odd: list[UnsupportedTensorEntry] = []
    values = _value_ranges(manifest)
    for entry in manifest.entries:
        if isinstance(entry, UnsupportedTensorEntry):
            odd.append(entry)
        if isinstance(entry, TensorEntry):
            shapes[dotted(entry.key)] = entry.shape
            for chunk in entry.chunks:
                # A tensor inside a DCP value (a tuple of tensors) reads the value's
                # bytes, which were checked when the manifest was built: counted there.
                if not _inside(values, chunk):
                    by_file.setdefault(chunk.file, []).append((dotted(entry.key), chunk))
    tally.total = (sum(c.nbytes for chunks in by_file.values() for _, c in chunks)
                   + sum(info.length for e in odd for _, info in e.items))
    tally.progress = progress
    for file, chunks in by_file.items():
        chunks.sort(key=lambda kc: kc[1].offset)
        size = _file_size(store, file, chunks, tally)
        for key, chunk in chunks:
            start = tally.done
            _check_chunk(store, key, chunk, size, tally)
            if chunk.column_crcs is not None:
                _check_columns(store, key, chunk, shapes[key], size, tally)
            tally.advance(start + chunk.nbytes - tally.done)  # bytes it could not read count too
        end = max(c.offset + c.nbytes for _, c in chunks)
        if size > end and is_saved_data_file(file):
            # A save writes its chunks back to back and nothing after them: bytes past the
            # last one are not damage to any key, but the file is not as it was written.
            tally.warnings.append(f"{file} has {size - end} bytes after its last chunk "
                                  f"(it ends at byte {end}); no key reads them")
    files = set(by_file) | _check_dcp_items(store, manifest, odd, tally, unchecked)
    _note_strays(store, set(by_file), tally)
    return VerifyReport(
        path=store.location, keys=len(manifest.entries), chunks=tally.chunks, frames=tally.frames,
        files=len(files), bytes_checked=tally.checked, damaged=tuple(tally.damaged),
        warnings=tuple(tally.warnings), unchecked=tuple(unchecked),
    )


def _value_ranges(manifest: Manifest) -> dict[str, list[tuple[int, int]]]:
    """The byte ranges of a DCP directory's value items, by file, sorted."""
    out: dict[str, list[tuple[int, int]]] = {}
    for v in getattr(manifest, "value_items", ()):
        out.setdefault(v.file, []).append((v.offset, v.offset + v.nbytes))
    for ranges in out.values():
        ranges.sort()
    return out


def _inside(values: dict[str, list[tuple[int, int]]], chunk: Chunk) -> bool:
    """Whether ``chunk``'s bytes lie inside one of the value items ``values``."""
    import bisect

    ranges = values.get(chunk.file)
    if not ranges:
        return False
    i = bisect.bisect_right(ranges, (chunk.offset, float("inf"))) - 1
    return i >= 0 and chunk.offset + chunk.nbytes <= ranges[i][1]


def _check_dcp_items(
    store: Store, manifest: Manifest, odd: list[Any], tally: _Tally, unchecked: list[Unchecked]
) -> set[str]:
    """Count a DCP directory's value items (checked, CRC-32s and load, when its manifest
    was built) and check the stored chunks of its tensors of dtypes reshard does not
    read, without decoding them: the CRC-32 of each record of their ``torch.save``
    archive covers every byte. Each such item is one chunk of one frame. Returns the
    data files they lie in."""
    from .interop.dcp import check_tensor_item, extent_problem, is_dcp_manifest

    files: set[str] = set()
    if not is_dcp_manifest(manifest):
        return files
    for item in getattr(manifest, "value_items", ()):
        files.add(item.file)
        if item.unchecked is not None:
            unchecked.append(Unchecked(key=item.key, message=item.unchecked))
            continue
        tally.chunks += 1
        tally.frames += 1
        if item.damage is None:
            tally.checked += item.nbytes
        else:
            tally.damaged.append(Damage(file=item.file, key=item.key, message=item.damage))
    sizes: dict[str, int] = {}
    for entry in odd:
        key = dotted(entry.key)
        for offsets, info in entry.items:
            files.add(info.file)
            tally.chunks += 1
            tally.frames += 1
            problem = extent_problem(store, info, sizes)
            if problem is None:
                problem = check_tensor_item(store, entry, info)
            if problem is None:
                tally.checked += info.length
            else:
                tally.damaged.append(Damage(file=info.file, key=key, chunk_offsets=offsets,
                                            message=problem))
            tally.advance(info.length)
    return files


def _file_size(store: Store, file: str, chunks: list[tuple[str, Chunk]], tally: _Tally) -> int:
    try:
        return store.size(file)
    except CheckpointError as e:
        message = "the data file is missing" if isinstance(e, CheckpointNotFoundError) else str(e)
        for key, chunk in chunks:
            tally.damaged.append(Damage(file=file, key=key, chunk_offsets=chunk.box.offsets,
                                        message=message))
        return -1


def _check_chunk(store: Store, key: str, chunk: Chunk, size: int, tally: _Tally) -> None:
    tally.chunks += 1
    if size < 0:
        return
    offs = chunk.frame_offsets()
    if offs[-1] > size:
        tally.damaged.append(Damage(
            file=chunk.file, key=key, chunk_offsets=chunk.box.offsets,
            message=f"the data file is truncated: the chunk needs bytes [{offs[0]}, {offs[-1]}), "
                    f"the file has {size}",
        ))
    codec = _codec(chunk, tally)
    lo = 0
    while lo < len(chunk.frames):
        hi = lo + 1
        while hi < len(chunk.frames) and offs[hi + 1] - offs[lo] <= READ_BATCH_NBYTES:
            hi += 1
        if offs[hi] > size:
            return  # reported above; frames past the end cannot be read
        try:
            buf = bytearray(offs[hi] - offs[lo])
            store.read_into(chunk.file, offs[lo], memoryview(buf))
        except CheckpointError as e:
            tally.damaged.append(Damage(file=chunk.file, key=key, chunk_offsets=chunk.box.offsets,
                                        frame=lo, message=str(e)))
            return
        for i in range(lo, hi):
            _check_frame(chunk, i, memoryview(buf)[offs[i] - offs[lo]:offs[i + 1] - offs[lo]],
                         codec, key, tally)
        tally.checked += offs[hi] - offs[lo]
        tally.advance(offs[hi] - offs[lo])
        lo = hi


def _check_columns(
    store: Store, key: str, chunk: Chunk, shape: tuple[int, ...], size: int, tally: _Tally
) -> None:
    """Check the chunk's column checksums too (column readers check those, not frames);
    its bytes are read again, a run of rows at a time."""
    crcs = chunk.column_crcs
    assert crcs is not None
    if chunk.offset + chunk.nbytes > size:
        return  # reported with the frames
    box = chunk.box
    segs = segments(box.offsets[1], box.sizes[1], shape[1], crcs.parts)
    try:
        for lo, got in stored_tile_crcs(store, chunk, segs, crcs.rows, batch_nbytes=READ_BATCH_NBYTES):
            expected = crcs.crc32c[lo * len(segs):lo * len(segs) + len(got)]
            bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
            if bad is not None:
                run, seg = lo + bad // len(segs), bad % len(segs)
                rows = run * crcs.rows, min((run + 1) * crcs.rows, box.sizes[0])
                tally.damaged.append(Damage(
                    file=chunk.file, key=key, chunk_offsets=box.offsets,
                    message=f"{tile_name(chunk, *rows, *segs[seg])} fails its CRC-32C check",
                ))
                return
    except CheckpointError as e:
        tally.damaged.append(Damage(file=chunk.file, key=key, chunk_offsets=box.offsets,
                                    message=str(e)))


def _check_frame(
    chunk: Chunk, i: int, data: memoryview, codec: Codec | None, key: str, tally: _Tally
) -> None:
    tally.frames += 1
    expected = chunk.frames[i].crc32c
    if expected is not None and crc32c(data) != expected:
        tally.damaged.append(Damage(file=chunk.file, key=key, chunk_offsets=chunk.box.offsets,
                                    frame=i, message="fails its CRC-32C check"))
        return
    if codec is None or chunk.codec.name == "identity":
        return
    raw = min(chunk.frame_raw_nbytes, chunk.raw_nbytes - i * chunk.frame_raw_nbytes)
    try:
        got = len(memoryview(decode_frame(codec, data, raw)).cast("B"))
    except Exception as e:  # noqa: BLE001 - any decode failure is damage to report
        got, problem = -1, f"does not decode with codec {chunk.codec.name!r}: {e}"
    else:
        problem = f"decodes to {got} bytes, expected {raw}"
    if got != raw:
        tally.damaged.append(Damage(file=chunk.file, key=key, chunk_offsets=chunk.box.offsets,
                                    frame=i, message=problem))


def _codec(chunk: Chunk, tally: _Tally) -> Codec | None:
    spec = chunk.codec
    if spec not in tally.codecs:
        try:
            tally.codecs[spec] = get_codec(spec)
        except CheckpointError as e:
            tally.codecs[spec] = None
            warning = f"checksums checked, decoding skipped: {e}"
            if warning not in tally.warnings:
                tally.warnings.append(warning)
    return tally.codecs[spec]


def _note_strays(store: Store, referenced: set[str], tally: _Tally) -> None:
    try:
        names = store.list(DATA_DIR)
    except CheckpointError:
        return
    # Only files a save wrote: a save never removes other files (they are the user's).
    strays = [n for n in names if n not in referenced and is_saved_data_file(n)]
    if strays:
        tally.warnings.append(
            f"{len(strays)} file(s) in {DATA_DIR}/ are not part of this checkpoint (left by an "
            f"interrupted save, or a save still running; a save to this path removes them once "
            f"they are an hour old, RESHARD_LEFTOVER_AGE_S): {', '.join(strays[:5])}"
        )
