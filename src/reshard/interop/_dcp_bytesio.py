"""An ``io.BytesIO`` value of a DCP checkpoint, read without unpickling.

DCP's default save planner writes every non-tensor value, an ``io.BytesIO`` included,
as ``torch.save(value)`` (``DefaultSavePlanner.transform_object``), and its load runs
``torch.load(weights_only=False)`` on it, so a BytesIO comes back as a BytesIO holding the
same bytes at the same position. ``torch.load(weights_only=True)`` refuses the global
``_io.BytesIO``, and allowing it (with ``_codecs.encode``, which rebuilds the bytes)
would run pickle's BUILD on untrusted state. Instead the pickle of a BytesIO, which
``torch.save`` (protocol 2) writes as one fixed opcode sequence, is matched opcode by
opcode with ``pickletools.genops``, which only tokenizes: nothing is imported, called or
built. Anything else (another protocol, a BytesIO with attributes of its own, a BytesIO
inside a list) does not match and stays refused as needing arbitrary pickle.

The sequence, memo opcodes (BINPUT, ...) left out::

    PROTO 2; GLOBAL '_io BytesIO'; EMPTY_TUPLE; NEWOBJ          # BytesIO.__new__
    GLOBAL '_codecs encode'; BINUNICODE s; BINUNICODE 'latin1'; TUPLE2; REDUCE
        (or, for no bytes: GLOBAL '__builtin__ bytes'; EMPTY_TUPLE; REDUCE)
    BININT1|BININT2|BININT position; NONE|EMPTY_DICT; TUPLE3; BUILD; STOP
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass
from typing import Any

from ..format.manifest import ValueEntry

_MEMO = frozenset({"BINPUT", "LONG_BINPUT", "MEMOIZE", "PUT"})
_INTS = frozenset({"BININT1", "BININT2", "BININT"})


@dataclass(frozen=True, slots=True)
class BytesIOState:
    """What a pickled BytesIO restores: its bytes and its position."""

    data: bytes
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BytesIOValueEntry(ValueEntry):
    """An ``io.BytesIO`` DCP saved, read without unpickling (``bytesio_state``).

    In-memory only: reshard's value form has no BytesIO, so ``convert`` refuses it. Each
    decode gives a new BytesIO holding ``data`` at ``position``, as DCP's load restores it
    (a load must not hand two state dicts one buffer whose position both move).
    """

    data: bytes = b""
    position: int = 0

    def decoded(self) -> object:
        buf = io.BytesIO(self.data)
        buf.seek(self.position)
        return buf


def bytesio_state(blob: bytes) -> BytesIOState | None:
    """The state of the ``io.BytesIO`` that the ``torch.save`` archive ``blob`` holds,
    or None when it holds anything else (or is not an archive of that shape).

    ``blob``'s zip CRCs are checked by the caller.
    """
    pickled = _data_pkl(blob)
    if pickled is None:
        return None
    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickled) if op.name not in _MEMO]
    except Exception:  # noqa: BLE001 - not a well-formed pickle: not a BytesIO we read
        return None
    return _match(ops)


def _data_pkl(blob: bytes) -> bytes | None:
    """The pickle of a ``torch.save`` archive that holds no tensor storages."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl")]
            # A storage record (<archive>/data/<n>) means tensors inside: not a BytesIO.
            if len(pkl) != 1 or any("/data/" in n for n in names):
                return None
            return zf.read(pkl[0])
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return None


def _match(ops: list[tuple[str, Any]]) -> BytesIOState | None:
    head = [("PROTO", 2), ("GLOBAL", "_io BytesIO"), ("EMPTY_TUPLE", None), ("NEWOBJ", None)]
    if ops[:4] != head:
        return None
    rest = ops[4:]
    data: bytes
    if rest[:1] == [("GLOBAL", "_codecs encode")]:
        if (len(rest) < 5 or rest[1][0] != "BINUNICODE" or rest[2] != ("BINUNICODE", "latin1")
                or rest[3:5] != [("TUPLE2", None), ("REDUCE", None)]):
            return None
        try:
            # codecs.encode(s, "latin1"), as unpickling runs it: the str holds one
            # character per byte, so any character past U+00FF is not a bytes value.
            data = str(rest[1][1]).encode("latin1")
        except UnicodeEncodeError:
            return None
        rest = rest[5:]
    elif rest[:3] == [("GLOBAL", "__builtin__ bytes"), ("EMPTY_TUPLE", None), ("REDUCE", None)]:
        data, rest = b"", rest[3:]
    else:
        return None
    # Its __dict__: None, or empty; attributes of its own would be set by BUILD.
    tail = [("TUPLE3", None), ("BUILD", None), ("STOP", None)]
    if (len(rest) != 5 or rest[0][0] not in _INTS or rest[1] not in (("NONE", None), ("EMPTY_DICT", None))
            or rest[2:] != tail):
        return None
    position = rest[0][1]
    if type(position) is not int or position < 0:  # BytesIO refuses a negative position
        return None
    return BytesIOState(data=data, position=position)
