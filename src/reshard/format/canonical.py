"""Writing manifest.json in canonical form, and checking its CRC over the file's bytes.

docs/FORMAT.md defines ``manifest_crc32`` as the CRC-32 of the canonical JSON of the
manifest without that field (keys sorted, no spaces, ASCII only). The writer emits
exactly that canonical text, computes the CRC over it once, and appends the field as the
last member. So the CRC also covers the file's own bytes up to the field: a reader checks
those bytes (``crc_of_bytes_matches``) without rebuilding the canonical text, which took
as long as parsing for a manifest of a million chunks, and falls back to the canonical
form only for files that are not laid out so (re-indented ones, or ones written before).

Chunks are formatted from plain rows rather than through ``json``: they are most of a
large manifest, and a fixed template is several times cheaper than building a dict per
chunk and encoding it. Everything else goes through ``json`` with canonical settings, so
the text is byte for byte what ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` gives (tests/unit/test_manifest.py checks this).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate, chain
from operator import attrgetter, sub
from typing import Any, Protocol

CHECKSUM_FIELD = "manifest_crc32"

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
canonical_json = _CANONICAL.encode
"""The canonical JSON text of a value (keys sorted, no spaces, ASCII only, no NaN)."""

_FRAME_FIELDS = attrgetter("nbytes", "crc32c")
_TAIL = re.compile(rb',"' + CHECKSUM_FIELD.encode() + rb'":([0-9]{1,10})\}[ \t\r\n]*\Z')


class FrameLike(Protocol):
    @property
    def nbytes(self) -> int: ...

    @property
    def crc32c(self) -> int | None: ...


def chunk_json(
    offsets: Sequence[int], sizes: Sequence[int], file: int, offset: int, nbytes: int,
    raw_nbytes: int, codec: int, frame_raw_nbytes: int, frames: Sequence[FrameLike],
    column_crcs: Any = None,
) -> str:
    """The canonical JSON of one chunk (``file`` and ``codec`` are indices; all ints;
    ``column_crcs`` has ``to_json``, or is None)."""
    text = _chunk_json(offsets, sizes, file, offset, nbytes, raw_nbytes, codec,
                       frame_raw_nbytes, frames)
    return text if column_crcs is None else with_column_crcs(text, column_crcs.to_json())


def with_column_crcs(text: str, column_crcs: Mapping[str, object]) -> str:
    """A chunk's canonical text with its ``column_crcs`` member added, in key order
    (right after ``codec``, the first key)."""
    head, rest = text.split(",", 1)
    return f'{head},"column_crcs":{canonical_json(column_crcs)},{rest}'


def _chunk_json(
    offsets: Sequence[int], sizes: Sequence[int], file: int, offset: int, nbytes: int,
    raw_nbytes: int, codec: int, frame_raw_nbytes: int, frames: Sequence[FrameLike],
) -> str:
    form = (len(offsets), len(frames))
    template = _TEMPLATES.get(form)
    if template is None:
        if len(frames) > _MAX_TEMPLATE_FRAMES:
            frames_text = ",".join([f"[{n:d},{c:d}]" for n, c in map(_FRAME_FIELDS, frames)])
            return _chunk_template(len(offsets), None) % (
                codec, file, frame_raw_nbytes, frames_text, nbytes, offset, *offsets, raw_nbytes, *sizes)
        template = _TEMPLATES[form]
    return template % (
        codec, file, frame_raw_nbytes, *chain.from_iterable(map(_FRAME_FIELDS, frames)),
        nbytes, offset, *offsets, raw_nbytes, *sizes,
    )


def chunk_texts(
    *, codec: Iterable[int], file: int, frame_raw_nbytes: int, frame_count: Sequence[int],
    frame_nbytes: Sequence[int], frame_crc32c: Sequence[int], nbytes: Iterable[int],
    offset: Iterable[int], offsets: Iterable[Sequence[int]], raw_nbytes: Iterable[int],
    sizes: Iterable[Sequence[int]],
) -> list[str]:
    """``chunk_json`` of many chunks of one data file, given column by column (chunk
    ``i`` has the next ``frame_count[i]`` frames): the same texts.

    Formatting ints is most of the cost (~0.2 us each), and most of a chunk's ints repeat
    across the chunks of a file: the codec part is the same for every chunk of a dtype,
    and a rank holds the same box of every tensor of a shape and placement. Those parts
    are formatted once per distinct value; only each chunk's offset, stored size and
    frames are formatted every time. Everything runs through ``map``, without a Python
    call per chunk.
    """
    if not frame_count:
        return []
    heads = _Memo(lambda c: _HEAD % (c, file, frame_raw_nbytes))
    frame_texts = list(map(_FRAME.__mod__, zip(frame_nbytes, frame_crc32c)))
    frames: Iterable[str]
    if min(frame_count) == 1 == max(frame_count):
        frames = frame_texts
    else:
        ends = list(accumulate(frame_count))
        frames = map(",".join, map(frame_texts.__getitem__, map(slice, map(sub, ends, frame_count), ends)))
    middles = map(_MIDDLE.__mod__, zip(nbytes, offset))
    boxes = _Memo(_box_text)
    tails = map(boxes.__getitem__, zip(map(tuple, offsets), raw_nbytes, map(tuple, sizes)))
    return list(map("".join, zip(map(heads.__getitem__, codec), frames, middles, tails)))


_HEAD = '{"codec":%d,"file":%d,"frame_raw_nbytes":%d,"frames":['
_FRAME = "[%d,%d]"
_MIDDLE = '],"nbytes":%d,"offset":%d,"offsets":['


def _box_text(box: tuple[tuple[int, ...], int, tuple[int, ...]]) -> str:
    offsets, raw_nbytes, sizes = box
    return (f'{",".join([f"{v:d}" for v in offsets])}],"raw_nbytes":{raw_nbytes:d},'
            f'"sizes":[{",".join([f"{v:d}" for v in sizes])}]}}')


class _Memo(dict):  # type: ignore[type-arg]
    """A dict that computes a missing value from its key (``make(key)``), once."""

    def __init__(self, make: Callable[[Any], str]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> str:
        value = self[key] = self.make(key)
        return value


class _Templates(dict[tuple[int, int], str]):
    """%-templates by (dims, frames), made on first use: at most 65 x 17 of them."""

    def __missing__(self, form: tuple[int, int]) -> str:
        template = self[form] = _chunk_template(*form)
        return template


_MAX_TEMPLATE_FRAMES = 16
_TEMPLATES = _Templates()


def _chunk_template(ndim: int, n_frames: int | None) -> str:
    """A %-template of a chunk's canonical JSON (keys in sorted order) for ``ndim`` dims
    and ``n_frames`` frames (None: the frames are one %s): one formatting of a flat tuple
    of ints per chunk, several times cheaper than a dict per chunk through ``json``."""
    ints = ",".join(["%d"] * ndim)
    return ('{"codec":%d,"file":%d,"frame_raw_nbytes":%d,"frames":['
            + ("%s" if n_frames is None else ",".join(["[%d,%d]"] * n_frames))
            + f'],"nbytes":%d,"offset":%d,"offsets":[{ints}],"raw_nbytes":%d,"sizes":[{ints}]}}')


def tensor_entry_json(
    *, key: Sequence[str | int], dtype: str, shape: Sequence[int], container: str,
    chunks: Iterable[str],
) -> str:
    """The canonical JSON of a tensor entry; ``chunks`` are chunk_json texts, in order."""
    return (f'{{"chunks":[{",".join(chunks)}],"container":{canonical_json(container)},'
            f'"dtype":{canonical_json(dtype)},"key":{canonical_json(list(key))},'
            f'"kind":"tensor","shape":{canonical_json(list(shape))}}}')


def value_entry_json(*, key: Sequence[str | int], value: object) -> str:
    """The canonical JSON of a value entry holding the encoded plain ``value``."""
    return f'{{"key":{canonical_json(list(key))},"kind":"value","value":{canonical_json(value)}}}'


def manifest_json(
    *, format_name: str, format_version: tuple[int, int], save_id: str, world_size: int,
    created_unix_s: float, library_version: str, files: Sequence[str],
    codecs: Sequence[Mapping[str, object]], entries: Iterable[str],
) -> bytes:
    """The manifest file: the canonical JSON of its fields and ``entries`` (canonical
    entry texts, in order), then ``manifest_crc32``, the CRC-32 of that text, as the last
    member."""
    head = f'{{"codecs":{canonical_json(list(codecs))},' \
        f'"created_unix_s":{canonical_json(created_unix_s)},"entries":['
    tail = (
        f'],"files":{canonical_json(list(files))},"format":{canonical_json(format_name)},'
        f'"format_version":{canonical_json(list(format_version))},'
        f'"library_version":{canonical_json(library_version)},'
        f'"save_id":{canonical_json(save_id)},"world_size":{canonical_json(world_size)}'
    )
    # ASCII by construction; encoding as ASCII also asserts it. Pieces, not one string,
    # so the large middle is copied once less.
    parts = [head.encode("ascii"), ",".join(entries).encode("ascii"), tail.encode("ascii")]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    crc = zlib.crc32(b"}", crc)
    parts.append(b',"%s":%d}' % (CHECKSUM_FIELD.encode("ascii"), crc))
    return b"".join(parts)


def crc_of_bytes_matches(data: bytes, expected: int) -> bool:
    """Whether ``data`` ends with ``,"manifest_crc32":<expected>}`` and the CRC-32 of the
    bytes before it, closed with ``}``, is ``expected``: the layout the writer produces,
    where those bytes are the canonical text. False says nothing about the file; the
    caller then checks the canonical form."""
    tail = _TAIL.search(data, max(0, len(data) - 64))
    if tail is None or int(tail.group(1)) != expected:
        return False
    return zlib.crc32(b"}", zlib.crc32(memoryview(data)[: tail.start()])) == expected
