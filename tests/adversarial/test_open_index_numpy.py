"""``reshard.open(...).read(key, index)`` of entries saved from numpy scalars, 0-d and
n-d numpy arrays, and torch tensors, table-driven against numpy's (and torch's) own
indexing of the saved value: the same type, dtype, shape and values, or, where numpy
(torch) raises, CheckpointError naming the key.

Before: a numpy scalar came back as a scalar whatever the index (``np.float32(3.5)[...]``
is a 0-d array), and a 0-d array as a 0-d array (``np.array(3.5)[()]`` is a scalar).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reshard

NUMPY_VALUES: dict[str, Any] = {
    "f32": np.float32(3.5), "i64": np.int64(7), "u8": np.uint8(200), "b": np.bool_(True),
    "c64": np.complex64(1 - 2j), "f16": np.float16(-0.25),
    "z": np.array(3.5), "zi": np.array(-9, dtype=np.int16), "zb": np.array(False),
    "v": np.arange(5, dtype=np.int32), "m": np.arange(24, dtype=np.float64).reshape(2, 3, 4),
    "e": np.zeros((0, 4), dtype=np.int8), "one": np.array([[6.5]], dtype=np.float32),
}
TORCH_VALUES: dict[str, Any] = {
    "t0": torch.tensor(2.5), "t0i": torch.tensor(-4, dtype=torch.int64),
    "tm": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4), "te": torch.zeros(0, 4),
    "tb": torch.tensor(1.5, dtype=torch.bfloat16),
}

# Every index form ck.read takes (ints, numpy and 0-d tensor ints, slices, one Ellipsis,
# None), for 0-d and n-d values alike; where numpy or torch raises, so must read.
INDEXES: list[Any] = [
    (), ..., (...,), (None,), (None, None), (..., None), (None, ...), (None, ..., None),
    0, -1, 1, 3, -5, (0,), (0, 0), (0, 0, 0), (1, 2, 3), (-1, -1, -1), (0, 0, 0, 0),
    (1, ..., 3), (..., 0), (0, ...), (0, 1, 2, ...), (..., 1, 2, 3), (1, 2, 3, None),
    (None, 1, 2, 3), (0, None, 0), np.int64(1), np.array(0), torch.tensor(1),
    (np.int32(1), slice(0, 2)), slice(None), slice(1, 3), slice(10, 20), slice(3, 1),
    slice(None, None, 2), (slice(None), slice(0, 3, 2)), (slice(1, None), ..., slice(1, 4, 2)),
    (..., slice(0, 1)), (slice(-100, 100), None, slice(None)),
]
# Backwards steps: numpy's slices take them, torch's do not.
NEGATIVE_STEPS: list[Any] = [
    slice(None, None, -1), (slice(None), slice(None, None, -2)), slice(3, 0, -2), slice(0, 3, -1),
    (slice(None, None, -1), slice(1, None, -1), slice(None, None, -3)), (..., slice(-1, 0, -2)),
    (None, slice(-2, None, -1), 0), slice(-100, 100, -1), slice(100, -100, -3),
]
# Indexes numpy takes and read refuses (by design: it reads boxes, not masks or index
# arrays; torch takes a 0-d bool tensor as a mask too); each raises naming the key.
REFUSED_BY_READ: list[Any] = [True, (False,), np.bool_(True), [0], (np.array([0]),),
                              torch.tensor(True), (..., ...)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("npidx") / "ckpt"
    reshard.save({**NUMPY_VALUES, **TORCH_VALUES}, path)
    return path


def _outcome(value: Any, index: Any) -> tuple[str, Any]:
    """``("ok", value[index])``, or ``("error", the exception)`` where indexing raises."""
    try:
        return "ok", value[index]
    except (IndexError, TypeError, ValueError, RuntimeError) as e:
        return "error", e


def _same_numpy(got: Any, want: Any) -> bool:
    return (type(got) is type(want) and np.shape(got) == np.shape(want)
            and np.asarray(got).dtype == np.asarray(want).dtype
            and np.array_equal(got, want, equal_nan=True))


def _same_torch(got: Any, want: Any) -> bool:
    return (type(got) is torch.Tensor and got.dtype == want.dtype
            and got.shape == want.shape and torch.equal(got, want))


def _index_failures(ckpt: Path, values: dict[str, Any], lib: str,
                    same: Callable[[Any, Any], bool]) -> list[str]:
    """Each ``values`` entry read back with every index: what ``lib`` gives for
    ``value[index]``, or an error naming the key where ``lib`` raises."""
    failures = []
    with reshard.open(ckpt) as ck:
        for key, value in values.items():
            for index in INDEXES + NEGATIVE_STEPS:
                status, want = _outcome(value, index)
                if status == "error":
                    try:
                        ck.read(key, index)
                    except reshard.CheckpointError as e:
                        if f"'{key}'" not in str(e):
                            failures.append(f"{key}[{index!r}]: error does not name the key: {e}")
                    else:
                        failures.append(f"{key}[{index!r}]: {lib} raises {want!r}, read did not")
                    continue
                try:
                    got = ck.read(key, index)
                except reshard.CheckpointError as e:
                    failures.append(f"{key}[{index!r}]: {lib} gives {want!r}, read raised {e}")
                    continue
                if not same(got, want):
                    failures.append(f"{key}[{index!r}]: {type(got).__name__} {got!r}, {lib} gives "
                                    f"{type(want).__name__} {want!r}")
                elif isinstance(got, np.ndarray) and not got.flags.c_contiguous:
                    failures.append(f"{key}[{index!r}]: a strided view of the box read")
    return failures


def test_numpy_entries_index_as_numpy(ckpt: Path) -> None:
    failures = []
    with reshard.open(ckpt) as ck:
        for key, value in NUMPY_VALUES.items():
            got_whole = ck.read(key)
            if not _same_numpy(got_whole, value):  # read whole: what was saved
                failures.append(f"{key} whole: {got_whole!r} != {value!r}")
    failures += _index_failures(ckpt, NUMPY_VALUES, "numpy", _same_numpy)
    assert not failures, "\n".join(failures)


def test_torch_entries_index_as_torch(ckpt: Path) -> None:
    failures = _index_failures(ckpt, TORCH_VALUES, "torch", _same_torch)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("key", ["f32", "z", "m", "t0", "tm"])
@pytest.mark.parametrize("index", REFUSED_BY_READ, ids=repr)
def test_masks_and_index_arrays_refused_naming_the_key(ckpt: Path, key: str, index: Any) -> None:
    with reshard.open(ckpt) as ck, pytest.raises(reshard.CheckpointError, match=f"key '{key}'"):
        ck.read(key, index)


def test_numpy_container_of_a_dtype_numpy_lacks_stays_a_tensor(tmp_path: Path) -> None:
    """A manifest may say ``numpy`` for a bfloat16 entry (not a save from numpy): it reads
    as a tensor, indexed as torch indexes, so a backwards step is refused by key."""
    import json

    reshard.save({"w": torch.arange(6, dtype=torch.bfloat16)}, tmp_path)
    manifest = tmp_path / "manifest.json"
    doc = json.loads(manifest.read_text())
    entries = doc["entries"]
    assert entries[0]["container"] == "torch"
    entries[0]["container"] = "numpy"
    doc.pop("manifest_crc32")  # optional: a writer other than reshard may omit it
    manifest.write_text(json.dumps(doc))
    with reshard.open(tmp_path) as ck:
        full = torch.arange(6, dtype=torch.bfloat16)
        for index in (None, (), 2, (..., slice(1, 5, 2)), (None, 3)):
            got = ck.read("w", index)
            want = full if index is None else full[index]
            assert type(got) is torch.Tensor and got.shape == want.shape and torch.equal(got, want)
        with pytest.raises(reshard.CheckpointError, match="key 'w'.*negative steps"):
            ck.read("w", slice(None, None, -1))
