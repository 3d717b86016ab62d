"""``reshard.open(...).read(key, index)`` with the indexes users type: every one either
returns exactly what the same index of the saved tensor gives, or raises CheckpointError
naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reshard

T = torch.arange(5 * 6 * 7).reshape(5, 6, 7)

SAME_AS_TORCH: list[Any] = [
    0, -1, 4, (1,), (slice(1, 3),), (slice(-3, None), 2), (slice(None), slice(None), -1),
    (slice(10, 20),), (slice(3, 1),), np.int64(2), torch.tensor(1), (np.int32(1), slice(0, 2)),
    (slice(np.int64(1), np.int64(3)),), (slice(torch.tensor(1), 3),), (slice(None, None, 1),),
    (slice(-100, 100), slice(2, -2), slice(6, 7)),
]
REFUSED: list[Any] = [
    5, -6, (0, 0, 0, 0), (slice(0, 5, 2),), (slice(None, None, -1),), (slice(None, None, 0),),
    (slice("a", 3),), (slice(0, 2.5),), (1.0,), True, (None,), Ellipsis, [1, 2], (torch.tensor([1, 2]),),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("idx") / "ckpt"
    reshard.save({"t": T, "s": torch.tensor(3.0), "e": torch.empty(0, 4), "v": 5}, path, codec="zstd")
    return path


def test_indexes_like_torch(ckpt: Path) -> None:
    with reshard.open(ckpt) as ck:
        assert torch.equal(ck.read("t"), T) and torch.equal(ck.read("t", None), T)  # None: all
        for index in SAME_AS_TORCH:
            got, want = ck.read("t", index), T[index]
            assert got.shape == want.shape and torch.equal(got, want), index


@pytest.mark.parametrize("index", REFUSED, ids=repr)
def test_refused_indexes_name_the_key(ckpt: Path, index: Any) -> None:
    """A zero step or non-int slice bounds raised ValueError/TypeError from slice.indices."""
    with reshard.open(ckpt) as ck, pytest.raises(reshard.CheckpointError, match="key 't'"):
        ck.read("t", index)


def test_zero_dim_empty_and_values(ckpt: Path) -> None:
    with reshard.open(ckpt) as ck:
        assert torch.equal(ck.read("s"), torch.tensor(3.0))
        assert torch.equal(ck.read("s", ()), torch.tensor(3.0))
        assert ck.read("e").shape == (0, 4) and ck.read("e", (slice(None), 1)).shape == (0,)
        assert ck.read("v") == 5
        for key, index in (("s", 0), ("e", 0), ("v", 0)):
            with pytest.raises(reshard.CheckpointError, match=f"'{key}'"):
                ck.read(key, index)
        with pytest.raises(reshard.MissingKeysError, match="'nokey'"):
            ck.read("nokey")


def test_key_forms(tmp_path: Path) -> None:
    """``in`` took only str keys (``0 in ck`` was False while ``ck.read(0)`` read), and
    read(None) or read(1.5) raised TypeError from joining the key's parts."""
    reshard.save({0: torch.arange(2), "a": {"b": 1, 2: 3}}, tmp_path)
    with reshard.open(tmp_path) as ck:
        for key in (0, "0", "a.b", ("a", "b"), ["a", "b"], ("a", 2), "a.2"):
            assert key in ck and ck.info(key).key in ("0", "a.b", "a.2"), key
        assert torch.equal(ck.read(0), torch.arange(2)) and ck.read(("a", 2)) == 3
        for key in ("a", "1", 1, ("a",), ("a", "c")):
            assert key not in ck
            with pytest.raises(reshard.MissingKeysError, match="has no key"):
                ck.read(key)
        for key in (True, None, (), 1.5, ("a", None), b"a"):
            assert key not in ck
            with pytest.raises(reshard.MissingKeysError, match="is not a key"):
                ck.read(key)
