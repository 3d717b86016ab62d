"""Plain (non-tensor) values as JSON, with no pickle.

Each value is a JSON object ``{"type": ..., "value": ...}``; see docs/FORMAT.md.
Containers are flattened into keys before they get here, so only empty ones appear.
"""

from __future__ import annotations

import base64
import math
from typing import Union

from ..errors import CorruptCheckpointError, UnsupportedValueError

JsonValue = Union[None, bool, int, float, str, list["JsonValue"], dict[str, "JsonValue"]]
PlainValue = Union[None, bool, int, float, str, bytes, dict[str, object], list[object], tuple[()]]

_EMPTY = {"dict": dict, "list": list, "tuple": tuple}
_FLOAT_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_value(value: object, key: str) -> dict[str, JsonValue]:
    """The JSON form of a plain value; raises UnsupportedValueError naming ``key``."""
    if value is None:
        return {"type": "none"}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": int(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"type": "float", "value": float(value)}
        word = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return {"type": "float", "value": word}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"type": "bytes", "value": base64.b64encode(bytes(value)).decode("ascii")}
    for name, kind in _EMPTY.items():
        if type(value) is kind and not value:
            return {"type": "empty", "value": name}
    raise UnsupportedValueError(
        f"key {key!r}: a value of type {type(value).__module__}.{type(value).__qualname__} "
        "cannot be stored without pickle; store tensors, numpy arrays, None, bool, int, "
        "float, str, bytes, or dicts/lists/tuples of them"
    )


def decode_value(obj: object, where: str) -> object:
    """The Python value of a JSON value object; raises CorruptCheckpointError naming ``where``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise CorruptCheckpointError(f"{where}: expected a value object with a 'type'")
    kind = obj["type"]
    raw = obj.get("value")
    if kind == "none":
        return None
    if kind == "bool" and isinstance(raw, bool):
        return raw
    if kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind == "float":
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str) and raw in _FLOAT_WORDS:
            return _FLOAT_WORDS[raw]
    if kind == "str" and isinstance(raw, str):
        return raw
    if kind == "bytes" and isinstance(raw, str):
        try:
            return base64.b64decode(raw.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as e:
            raise CorruptCheckpointError(f"{where}: invalid base64 bytes value") from e
    if kind == "empty" and isinstance(raw, str) and raw in _EMPTY:
        return _EMPTY[raw]()
    raise CorruptCheckpointError(f"{where}: invalid value object {str(obj)[:200]}")
