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
    (slice(np.int64(1), np.int64(3)),), (slice(torch.tensor(1), 3),), (slice(None, None, 1),), np.array(2),
    (slice(-100, 100), slice(2, -2), slice(6, 7)),
    # Steps, Ellipsis and None were refused ("slices with a step are not supported").
    (slice(0, 5, 2),), slice(None, None, 3), (slice(1, None, 2), slice(-1, 0, 4), slice(5, None, 9)),
    (slice(3, 1, 2),), (slice(10, 20, 2),), Ellipsis, (Ellipsis, 0), (0, Ellipsis), (1, ..., 2),
    (..., slice(0, 7, 3)), (slice(None), slice(None), slice(None), ...), (None,), (0, None),
    (None, 1, None, 2, 3, None), (..., None), (None, ..., slice(0, 6, 5), None),
]  # a bare None is read()'s default, everything: not torch's t[None]
REFUSED: list[Any] = [
    5, -6, (0, 0, 0, 0), (slice(None, None, -1),), (slice(None, None, 0),), (..., ...),
    (slice("a", 3),), (slice(0, 2.5),), (1.0,), True, [1, 2], (torch.tensor([1, 2]),),
    (0, 0, ..., 0, 0), (None, 0, 0, 0, 0), "a",
    # Read as t[1], t[0] and t[2]: torch takes a bool tensor as a mask and a 1-element
    # tensor as an index tensor (both keep or add a dim).
    torch.tensor(True), (torch.tensor(False),), (torch.tensor([2]),), (0, np.array([1])),
    np.array(True), (slice(None), torch.tensor([[1]])),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("idx") / "ckpt"
    reshard.save({"t": T, "s": torch.tensor(3.0), "e": torch.empty(0, 4), "v": 5, "n": T.numpy()},
                 path, codec="zstd")
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
        assert torch.equal(ck.read("s", (None, ...)), torch.tensor([3.0]))
        assert ck.read("e").shape == (0, 4) and ck.read("e", (slice(None), 1)).shape == (0,)
        assert ck.read("e", (..., slice(0, 4, 2), None)).shape == (0, 2, 1)
        assert ck.read("v") == 5
        for key, index in (("s", 0), ("e", 0), ("v", 0)):
            with pytest.raises(reshard.CheckpointError, match=f"'{key}'"):
                ck.read(key, index)
        with pytest.raises(reshard.MissingKeysError, match="'nokey'"):
            ck.read("nokey")


def test_random_indexes_across_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps, Ellipsis and None over a tensor cut into small frames
    (some frames cutting elements), raw and compressed, against torch and numpy."""
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "52")
    rng = np.random.default_rng(0)
    full = torch.arange(7 * 9 * 4, dtype=torch.float32).reshape(7, 9, 4)
    for codec in ("identity", "zstd"):
        path = tmp_path / codec
        reshard.save({"t": full, "n": full.numpy().astype(np.int16)}, path, codec=codec)
        with reshard.open(path) as ck:
            for _ in range(150):
                index = _random_index(rng, full.shape)
                got, want = ck.read("t", index), full[index]
                assert got.shape == want.shape and torch.equal(got, want), index
                got_n, want_n = ck.read("n", index), full.numpy().astype(np.int16)[index]
                assert type(got_n) is type(want_n) and np.array_equal(got_n, want_n), index


def test_numpy_entries_index_as_numpy(ckpt: Path) -> None:
    """Scalars for an int in every dim, 0-d arrays where an Ellipsis or None is there too."""
    a = T.numpy()
    with reshard.open(ckpt) as ck:
        for index in ((1, 2, 3), (1, ..., 2, 3), (1, 2, 3, ...), (..., 1, 2, 3), (1, 2, 3, None),
                      (None, 1, 2, 3), -1, (1, slice(0, 6, 4), 2), ..., (slice(None, None, 2), ...)):
            got, want = ck.read("n", index), a[index]
            assert type(got) is type(want) and np.array_equal(got, want), index
            assert np.shape(got) == np.shape(want), index


def test_random_indexes_across_column_block_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same over a tensor stored as three chunks along dim 1 (column_blocks=3), in
    frames that cut elements."""
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "4098")
    rng = np.random.default_rng(1)
    full = torch.arange(70 * 4100, dtype=torch.float32).reshape(70, 4100)
    reshard.save({"m": full}, tmp_path, column_blocks=3)
    with reshard.open(tmp_path) as ck:
        assert len(ck.info("m").chunks) == 3
        for _ in range(60):
            index = _random_index(rng, full.shape)
            got, want = ck.read("m", index), full[index]
            assert got.shape == want.shape and torch.equal(got, want), index


def _random_index(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, ...]:
    parts: list[Any] = []
    for n in shape:
        r = rng.integers(4)
        if r == 0:
            parts.append(int(rng.integers(-n, n)))
        else:
            lo, hi = sorted(int(x) for x in rng.integers(-n - 2, n + 3, size=2))
            parts.append(slice(lo if r != 3 else None, hi, int(rng.integers(1, 5))))
        if rng.integers(5) == 0:
            parts.append(None)
    if rng.integers(3) == 0:  # an Ellipsis in place of a run of parts: those dims whole
        i = int(rng.integers(len(parts) + 1))
        parts[i:int(rng.integers(i, len(parts) + 1))] = [...]
    return tuple(parts)


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
