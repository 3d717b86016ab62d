"""Parsing large manifests with orjson, where it gives exactly what ``json`` gives.

At 2,048 ranks x 500 tensors the manifest holds 132 MiB of JSON, and ``json.loads``
took 2.8-4.3 CPU s of a 6.5-10.9 s load plan; orjson took 1.7-2.4 s, though its
document peaks ~40% larger (``RESHARD_FAST_JSON=0`` keeps the standard parser). orjson
is a speed-up only: without it, or for a document it might read differently, the
standard parser runs and has the last word (its errors are the ones reported).
"""

from __future__ import annotations

from . import config
from .format.manifest import json_document

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    orjson = None  # type: ignore[assignment]

# orjson reads integers outside [-2**63, 2**64) as floats; every integer of at most 18
# digits is inside. A document with a run of 19 or more digits anywhere (in a number or
# not) goes to the standard parser. The scan costs ~0.25 s per 132 MiB.
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def loads(data: bytes) -> object:
    """What ``format.manifest.json_document(data)`` returns, or the error it raises."""
    if (orjson is not None and config.fast_json()
            and _LONG_DIGIT_RUN not in data.translate(_DIGITS_AS_ZERO)):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # lone surrogates, NaN, deep nesting, ...: the standard parser decides
    return json_document(data)
