"""State dicts a demanding user writes: numpy arrays of every dtype name numpy has, keys
and containers of odd kinds, destinations that differ from what was saved. Each either
round-trips exactly or raises a CheckpointError subclass naming the key."""

from __future__ import annotations

import collections
import functools
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import reshard

# Every name numpy gives a dtype torch holds: aliases such as ulonglong equal uint64
# but carry another type number, which torch.from_numpy refused (a TypeError naming
# no key, from save and from load).
NUMPY_NAMES = ["bool", "byte", "ubyte", "short", "ushort", "intc", "uintc", "int_", "uint",
               "longlong", "ulonglong", "intp", "uintp", "half", "single", "double", "csingle",
               "cdouble", "=i4", "<u2", "|b1"]


def _values(dtype: np.dtype) -> np.ndarray:
    base = np.arange(24).reshape(4, 6)
    if dtype.kind == "b":
        return base % 3 == 0
    if dtype.kind == "c":
        return (base + 1j * (base + 100)).astype(dtype)
    return base.astype(dtype)


def test_numpy_arrays_of_every_dtype_name(tmp_path: Path) -> None:
    saved = {}
    for i, name in enumerate(NUMPY_NAMES):
        a = _values(np.dtype(name))
        saved[f"a{i}"] = a[:, ::2]  # strided too
        saved[f"s{i}"] = a.flat[5]  # a numpy scalar of that type
    reshard.save(saved, tmp_path)
    dest = {k: (np.zeros_like(v) if isinstance(v, np.ndarray) else type(v)(0)) for k, v in saved.items()}
    reshard.load(dest, tmp_path)
    for k, v in saved.items():
        assert type(dest[k]) is type(v) and dest[k].dtype == v.dtype, k
        assert np.array_equal(dest[k], v), k
    # Into arrays of the alias types, strided: written in place.
    for i, name in enumerate(NUMPY_NAMES):
        room = np.zeros((4, 6), dtype=name)
        into = {f"a{i}": room[:, ::2]}
        reshard.load(into, tmp_path, strict=False)
        assert into[f"a{i}"].base is room and np.array_equal(room[:, ::2], saved[f"a{i}"]), name


@pytest.mark.parametrize("dtype", ["longdouble", "clongdouble", ">f8", ">i4", "datetime64[s]",
                                   "timedelta64[ms]", "U3", "S3", "V8", "object"])
def test_numpy_arrays_torch_cannot_hold_are_refused_by_key(tmp_path: Path, dtype: str) -> None:
    """longdouble and clongdouble (float128/complex256 on x86) passed the dtype-kind test
    and failed in torch.from_numpy: 'CheckpointError: rank 0: TypeError: can't convert
    np.ndarray of type numpy.longdouble', naming no key. Big-endian arrays are refused
    too, with the same message."""
    if np.dtype(dtype) in (np.dtype("float64"), np.dtype("complex128")):
        pytest.skip("longdouble is float64 on this platform")
    bad = np.zeros(4, dtype=dtype)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'opt\.x'.*numpy dtype"):
        reshard.save({"opt": {"x": bad}}, tmp_path / "a")
    scalar = bad[0]  # a numpy scalar of that dtype, where numpy keeps it (not for >f8)
    if isinstance(scalar, np.generic) and scalar.dtype == bad.dtype:
        with pytest.raises(reshard.UnsupportedValueError, match=r"key 'opt\.x'.*numpy dtype"):
            reshard.save({"opt": {"x": scalar}}, tmp_path / "b")
    reshard.save({"opt": {"x": np.arange(4.0)}}, tmp_path / "c")
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'opt\.x'.*numpy dtype"):
        reshard.load({"opt": {"x": bad}}, tmp_path / "c")


def _nested(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    return functools.reduce(lambda inner, _: {"x": inner}, range(depth - 1), leaf)


def test_cycles_and_deep_nesting_are_refused_by_key(tmp_path: Path) -> None:
    """A state dict that contains itself, or containers nested thousands deep, raised
    'CheckpointError: rank 0: RecursionError: maximum recursion depth exceeded', naming
    no key; a state dict holding one container twice (not a cycle) saves."""
    loop: dict[str, Any] = {"a": 1}
    loop["me"] = {"b": [loop]}
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'me\.b\.0'.*cycle"):
        reshard.save(loop, tmp_path / "loop")
    items: list[Any] = [1]
    items.append(items)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'l\.1'.*cycle"):
        reshard.save({"l": items}, tmp_path / "loop")
    with pytest.raises(reshard.UnsupportedValueError, match="nested more than 256 deep"):
        reshard.save(_nested(5000, {"v": 1}), tmp_path / "deep")
    assert not (tmp_path / "loop").exists() and not (tmp_path / "deep").exists()

    shared = [torch.arange(2)]
    reshard.save({"a": shared, "b": shared, "c": (shared, shared)}, tmp_path / "shared")
    with reshard.open(tmp_path / "shared") as ck:
        assert ck.keys() == ["a.0", "b.0", "c.0.0", "c.1.0"]
    with pytest.raises(reshard.UnsupportedValueError, match="nested more than 256 deep"):
        reshard.load(_nested(5000, {"v": 1}), tmp_path / "shared")
    deepest = _nested(256, {"t": torch.arange(3), "v": 1})
    reshard.save(deepest, tmp_path / "deepest")
    back = _nested(256, {"t": torch.zeros(3, dtype=torch.int64), "v": 0})
    reshard.load(back, tmp_path / "deepest")
    inner = functools.reduce(lambda d, _: d["x"], range(255), back)
    assert torch.equal(inner["t"], torch.arange(3)) and inner["v"] == 1


class _Pair(tuple):  # a plain tuple subclass: built from one iterable, not from fields
    pass


_Named = collections.namedtuple("_Named", "x y")


class _NamedSub(_Named):
    pass


def test_values_inside_odd_containers(tmp_path: Path) -> None:
    """A tuple subclass in the destination raised 'CheckpointError: rank 0: TypeError:
    tuple expected at most 1 argument' when its values were replaced; a read-only mapping
    (MappingProxyType) raised a TypeError after the tensors were filled. Tuples of any
    kind are rebuilt as their own type; a read-only mapping is refused while the load
    plans, naming the key, with nothing filled."""
    reshard.save({"t": (1, "a"), "n": (2, "b"), "s": (3, "c"), "m": {"a": 1, "w": torch.arange(2)},
                  "w": torch.arange(3)}, tmp_path)
    got: dict[str, Any] = {"t": _Pair((0, "")), "n": _Named(0, ""), "s": _NamedSub(0, ""),
                           "m": {"a": 0, "w": torch.zeros(2, dtype=torch.int64)}}
    reshard.load(got, tmp_path, strict=False)
    assert type(got["t"]) is _Pair and got["t"] == (1, "a")
    assert type(got["n"]) is _Named and got["n"] == (2, "b")
    assert type(got["s"]) is _NamedSub and got["s"] == (3, "c")
    assert got["m"]["a"] == 1 and torch.equal(got["m"]["w"], torch.arange(2))

    w = torch.zeros(3, dtype=torch.int64)
    frozen = {"w": w, "m": types.MappingProxyType({"a": 0})}
    with pytest.raises(reshard.LayoutMismatchError, match=r"key 'm\.a'.*mappingproxy"):
        reshard.load(frozen, tmp_path, strict=False)
    assert not w.any()  # refused before anything was read
    # Tensors inside it are filled in place (nothing is assigned), and a read-only mapping
    # at the root whose values are containers changes nothing it holds.
    inner = torch.zeros(2, dtype=torch.int64)
    ok = types.MappingProxyType({"m": types.MappingProxyType({"w": inner}), "t": [0, ""]})
    reshard.load(ok, tmp_path, strict=False)
    assert torch.equal(inner, torch.arange(2)) and ok["t"] == [1, "a"]


def test_other_dtypes_convert_as_copy_does(tmp_path: Path) -> None:
    """README: a destination of another dtype receives the values as Tensor.copy_
    converts them, numpy destinations included; but complex into real, which drops the
    imaginary parts, is refused by key (it loaded with only torch's warning)."""
    saved = {"f": torch.tensor([0.5, 1.75, -2.5, 300.0]), "i": torch.tensor([1, 2**40 + 3, -1]),
             "c": torch.complex(torch.arange(3.0), torch.ones(3))}
    reshard.save(saved, tmp_path)
    got = {"f": torch.zeros(4, dtype=torch.bfloat16), "i": torch.zeros(3, dtype=torch.int32),
           "c": np.zeros(3, dtype=np.float64)}
    with pytest.raises(reshard.LayoutMismatchError, match="key 'c'.*complex64.*float64.*imaginary"):
        reshard.load(got, tmp_path)
    assert not got["f"].any() and not got["i"].any() and not got["c"].any()  # nothing written
    got["c"] = np.zeros(3, dtype=np.complex128)
    reshard.load(got, tmp_path)
    assert torch.equal(got["f"], saved["f"].to(torch.bfloat16))
    assert torch.equal(got["i"], saved["i"].to(torch.int32)) and got["i"].tolist() == [1, 3, -1]
    assert got["c"].tolist() == [0.0 + 1j, 1.0 + 1j, 2.0 + 1j]


def test_missing_key_with_a_saved_subtree_says_so(tmp_path: Path) -> None:
    """A state dict holding one value where a subtree was saved got only "has no key
    'model'", which read as if the checkpoint lacked the model altogether."""
    reshard.save({"model": {"w": torch.arange(2)}, "step": 1}, tmp_path)
    with pytest.raises(reshard.MissingKeysError,
                       match=r"no key 'model'; it holds keys below 'model', such as 'model\.w'"):
        reshard.load({"model": torch.zeros(2), "step": 0}, tmp_path)
    with pytest.raises(reshard.MissingKeysError, match=r"no key 'other' \(load with strict=False"):
        reshard.load({"other": torch.zeros(2)}, tmp_path)
    got = {"model": torch.zeros(2), "step": 0}
    reshard.load(got, tmp_path, strict=False)  # documented: the missing key is skipped
    assert got["step"] == 1 and not got["model"].any()


def test_open_reads_numpy_entries_as_numpy(tmp_path: Path) -> None:
    """reshard.open(path).read(key) of an entry saved from a numpy array returned a torch
    tensor, though the manifest records container "numpy" and load gives an array back:
    now arrays come back as arrays (slices too), numpy scalars as numpy scalars, tensors as
    tensors."""
    arr = np.arange(24, dtype=np.int16).reshape(4, 6)
    saved = {"arr": arr, "cplx": (np.arange(6) + 1j).astype(np.complex64), "flag": np.bool_(True),
             "half": np.float16(1.5), "t": torch.arange(6.0).reshape(2, 3),
             "bf": torch.arange(4.0, dtype=torch.bfloat16), "empty": np.zeros((0, 3), np.float32)}
    reshard.save(saved, tmp_path, codec="zstd")
    with reshard.open(tmp_path) as ck:
        got = ck.read("arr")
        assert type(got) is np.ndarray and got.dtype == np.int16 and np.array_equal(got, arr)
        part = ck.read("arr", (slice(1, 3), 2))
        assert type(part) is np.ndarray and np.array_equal(part, arr[1:3, 2])
        one = ck.read("arr", (3, 5))  # every dim indexed: a scalar, as arr[3, 5] gives
        assert type(one) is np.int16 and one == arr[3, 5]
        row = ck.read("arr", -1)
        assert type(row) is np.ndarray and np.array_equal(row, arr[-1])
        c = ck.read("cplx")
        assert type(c) is np.ndarray and c.dtype == np.complex64 and np.array_equal(c, saved["cplx"])
        for key in ("flag", "half"):
            value = ck.read(key)
            assert type(value) is type(saved[key]) and value == saved[key], key
        e = ck.read("empty")
        assert type(e) is np.ndarray and e.shape == (0, 3) and e.dtype == np.float32
        t = ck.read("t", (1,))
        assert type(t) is torch.Tensor and torch.equal(t, saved["t"][1])
        assert torch.equal(ck.read("bf"), saved["bf"])
    # The same kinds as load gives into a state dict with no object of its own.
    dest: dict[str, Any] = {"all": {}}
    reshard.save({"all": saved}, tmp_path / "nested")
    reshard.load(dest, tmp_path / "nested")
    with reshard.open(tmp_path / "nested") as ck:
        for key, value in dest["all"].items():
            assert type(ck.read(("all", key))) is type(value), key
