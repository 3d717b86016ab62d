"""A small training-like state whose every element is distinct, and exact checks of it.

``make_state(version)`` gives different values per version, so a load that mixes two
saves (old and new) or misplaces any chunk fails ``assert_state``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

import reshard

FRAME_RAW_NBYTES = 512
"""Tiny frames, so even small tensors span many frames (set via RESHARD_FRAME_RAW_NBYTES)."""


def make_state(version: int) -> dict[str, Any]:
    v = version
    return {
        "w": torch.arange(40 * 30, dtype=torch.float32).reshape(40, 30) + 10_000 * v,
        "ids": torch.arange(700, dtype=torch.int64) * (v + 1),
        "half": (torch.arange(300, dtype=torch.float32) / 7 + v).to(torch.bfloat16),
        "mask": torch.arange(33) % 3 == v % 3,
        "np": np.arange(90, dtype=np.int16).reshape(9, 10) + v,
        "step": 1000 + v,
        "name": f"run-{v}",
        "optim": {"lr": 0.125 * (v + 1), "state": {0: {"m": torch.arange(64.0) - v}}},
    }


def blank_state() -> dict[str, Any]:
    """Destinations of the right shapes, filled with a value no saved state holds."""
    return {
        "w": torch.full((40, 30), -1.0),
        "ids": torch.full((700,), -1, dtype=torch.int64),
        "half": torch.full((300,), -1.0, dtype=torch.bfloat16),
        "mask": torch.zeros(33, dtype=torch.bool),
        "np": np.full((9, 10), -1, dtype=np.int16),
        "step": None,
        "name": None,
        "optim": {"lr": None, "state": {0: {"m": torch.full((64,), -1.0)}}},
    }


def state_version(sd: dict[str, Any]) -> int | None:
    """The version whose values ``sd`` holds exactly, or None if it matches none (a mix)."""
    for v in range(8):
        if states_equal(sd, make_state(v)):
            return v
    return None


def states_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def load_version(path: str | os.PathLike[str]) -> int | None:
    """Load ``path`` into a blank state; the version it holds (None: a mix of versions)."""
    sd = blank_state()
    reshard.load(sd, path)
    return state_version(sd)


def data_files(path: str | os.PathLike[str]) -> list[str]:
    folder = os.path.join(path, "data")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Files at ``path`` that its committed manifest does not account for."""
    with reshard.open(path) as ck:
        keep = {os.path.join(ck.path, f) for f in ck.manifest.files()}
    extra = [f for f in data_files(path) if f not in keep]
    extra += [n for n in os.listdir(path) if n not in ("manifest.json", "data")]
    return extra


class RotCodec:
    """A user codec: adds 13 to every byte and prepends a 4-byte tag (sizes differ from raw)."""

    name = "test-rot13"

    def encode(self, data: memoryview) -> bytes:
        arr = np.frombuffer(data, dtype=np.uint8)
        return b"ROT!" + (arr + np.uint8(13)).tobytes()

    def decode(self, data: memoryview) -> bytes:
        raw = bytes(data)
        if raw[:4] != b"ROT!":
            raise ValueError("missing ROT! tag")
        return (np.frombuffer(raw[4:], dtype=np.uint8) - np.uint8(13)).tobytes()


def rewrite_manifest(path: str | os.PathLike[str], edit: Any, *, fix_checksum: bool = True) -> None:
    """Apply ``edit(doc)`` to the manifest at ``path`` (as a hostile writer would), and give it
    a valid whole-manifest checksum so the parser's other checks are what is exercised."""
    import json

    from reshard.format.manifest import CHECKSUM_FIELD, _doc_crc32

    file = os.path.join(path, "manifest.json")
    with open(file, "rb") as f:
        doc = json.loads(f.read())
    edit(doc)
    if fix_checksum and isinstance(doc, dict):
        doc.pop(CHECKSUM_FIELD, None)
        try:
            doc[CHECKSUM_FIELD] = _doc_crc32(doc)
        except ValueError:
            pass
    with open(file, "w") as f:
        json.dump(doc, f)


def chunk_map(path: str | os.PathLike[str]) -> list[tuple[str, int, int, str]]:
    """``(file basename, start, stop, key)`` of every chunk's stored bytes."""
    out = []
    with reshard.open(path) as ck:
        for e in ck.manifest.entries:
            for c in getattr(e, "chunks", ()):
                out.append((os.path.basename(c.file), c.offset, c.offset + c.nbytes,
                            ".".join(str(p) for p in e.key)))
    return out
