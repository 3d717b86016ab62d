"""Golden checkpoints, made once by make_golden.py and committed, must load exactly forever."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reshard

from .golden_state import (
    GOLDEN_CODEC_OF_W,
    GOLDEN_COLUMN_PARTS,
    GOLDENS,
    format_version,
    full_tensors,
    nested,
    numpy_values,
    plain_values,
)

HERE = Path(__file__).parent
MANIFEST_SHA256 = {
    "golden_v1": "53a9cba51a36f45a50bd24d57b78264b4e0d346092d310346048770f10de0acc",
    "golden_v1_zstd": "9d5f5dacec0c061391270e553ab0bd0d29ea5aaa60087191565d77a2d92a7262",
    "golden_v1_shuffle_zstd": "aa1b1eb903f9faebb6ec6e2a1b0e41291de7c016d29d03f6c6acc206718787c7",
    "golden_v1_planes_zstd": "4cf22f5d382c37b87f93339cfcd4dfc837f3f8fef70ae8946edd9a60cf52c2d7",
    "golden_v1_1_columns": "918a091da1e0efdab684997968a99fbcd203dee88a89841d96f159699eabb11b",
}
"""Regenerating a golden would hide a format break: its manifest must never change."""


def _blank() -> dict[str, Any]:
    flat: dict[str, Any] = {k: torch.full_like(v, 0) if v.dtype != torch.bool else torch.zeros_like(v)
                            for k, v in full_tensors().items()}
    flat.update({k: None for k in plain_values()})
    flat.update({k: np.zeros_like(v) if isinstance(v, np.ndarray) else None
                 for k, v in numpy_values().items()})
    sd = nested(flat)
    sd["optim"]["param_groups"] = [sd["optim"]["param_groups"][0]]
    return sd


def _get(sd: dict[str, Any], dotted_name: str) -> Any:
    node: Any = sd
    for p in dotted_name.split("."):
        node = node[int(p)] if p.isdigit() else node[p]
    return node


@pytest.mark.parametrize("name", list(GOLDENS))
def test_golden_is_unchanged(name: str) -> None:
    data = (HERE / name / "manifest.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == MANIFEST_SHA256[name]


@pytest.mark.parametrize("name", list(GOLDENS))
def test_golden_loads_exactly(name: str) -> None:
    sd = _blank()
    reshard.load(sd, HERE / name)
    for key, want in full_tensors().items():
        got = _get(sd, key)
        assert got.dtype == want.dtype and torch.equal(got, want), key
    for key, want in plain_values().items():
        got = _get(sd, key)
        assert type(got) is type(want) and (got == want or (math.isinf(want) and got == want)), key
    arr = _get(sd, "np.arr")
    assert isinstance(arr, np.ndarray) and arr.dtype == np.int32
    assert np.array_equal(arr, numpy_values()["np.arr"])
    assert _get(sd, "np.scalar") == 2.5 and isinstance(_get(sd, "np.scalar"), np.float64)


@pytest.mark.parametrize("name", list(GOLDENS))
def test_golden_open_read_verify(name: str) -> None:
    path = HERE / name
    with reshard.open(path) as ck:
        assert ck.manifest.format_version == format_version(name)
        parts = {c.column_parts for c in ck.info("model.w").chunks}
        assert parts == {GOLDEN_COLUMN_PARTS.get(name, 0)}
        assert set(ck.keys()) == set(full_tensors()) | set(plain_values()) | set(numpy_values())
        w = full_tensors()["model.w"]
        assert ck.read("model.w", (slice(3, 8), slice(1, 5))).equal(w[3:8, 1:5])  # crosses both chunks
        # One column part (through its column checksums where the golden has them).
        assert ck.read("model.w", (slice(None), slice(2, 4))).equal(w[:, 2:4])
        assert ck.read("f64", (slice(None), slice(1, 2))).equal(full_tensors()["f64"][:, 1:2])
        assert ck.read("model.ids", (2,)).equal(full_tensors()["model.ids"][2])
        assert len(ck.info("model.w").chunks) == 2 and ck.read("optim.state.0.step") == 7
        assert ck.info("model.w").chunks[0].codec == GOLDEN_CODEC_OF_W[name]
        # No destination: each key comes back as the kind that was saved.
        sd: dict[str, Any] = {"np": {"arr": None}, "model": {"b": None}}
        reshard.load(sd, path)
        assert isinstance(sd["np"]["arr"], np.ndarray) and sd["model"]["b"].equal(full_tensors()["model.b"])
    report = reshard.verify(path)
    assert report.ok and report.files == 2 and not report.warnings, report
    assert sorted(os.listdir(path / "data")) == sorted(os.path.basename(f) for f in ck.manifest.files())
