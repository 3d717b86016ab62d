"""Leaves whose value is more than their memory.

- ``torch.masked.MaskedTensor`` (a wrapper subclass: no memory of its own) failed to
  save as 'CheckpointError: rank 0: TypeError: mask must have dtype bool.' (no key), and
  a load into one raised 'CorruptCheckpointError: key 'k': chunk at offsets [0] in
  data/...bin: TypeError ...' about an intact checkpoint. Both are refused by key now,
  while planning.
- ``numpy.ma.MaskedArray`` was saved as its data alone: the mask was lost without a word.
  It is refused on save; a load into one fills its data, as the checkpoint holds data.
- Subclasses with memory of their own (``as_subclass``, ``nn.Parameter``) still work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import reshard


class Sub(torch.Tensor):
    pass


def _masked_tensor() -> torch.Tensor:
    from torch.masked import masked_tensor

    return masked_tensor(torch.arange(3.0), torch.tensor([True, False, True]))


def test_masked_tensor_is_refused_by_key(tmp_path: Path) -> None:
    with pytest.raises(reshard.UnsupportedValueError,
                       match=r"key 'm\.k': a torch\.masked\..*MaskedTensor is a tensor subclass"):
        reshard.save({"m": {"k": _masked_tensor()}, "t": torch.arange(2)}, tmp_path / "a")
    assert not (tmp_path / "a" / "manifest.json").exists()
    reshard.save({"m": {"k": torch.arange(3.0)}, "t": torch.arange(2)}, tmp_path / "b")
    dest = {"m": {"k": _masked_tensor()}, "t": torch.zeros(2, dtype=torch.int64)}
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'm\.k': .*MaskedTensor"):
        reshard.load(dest, tmp_path / "b")
    assert torch.equal(dest["t"], torch.zeros(2, dtype=torch.int64))  # refused before any read


def test_masked_array_is_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'x': a numpy MaskedArray .* mask"):
        reshard.save({"x": np.ma.array([1.0, 2.0, 3.0], mask=[0, 1, 0])}, tmp_path / "a")
    with pytest.raises(reshard.UnsupportedValueError, match="key 'x'"):  # no mask set: still refused
        reshard.async_save({"x": np.ma.array([1.0, 2.0])}, tmp_path / "c")
    reshard.save({"x": np.arange(3.0)}, tmp_path / "b")
    dest = np.ma.array(np.zeros(3), mask=[0, 1, 0])
    reshard.load({"x": dest}, tmp_path / "b")
    assert np.array_equal(np.ma.getdata(dest), np.arange(3.0))
    assert np.array_equal(np.ma.getmaskarray(dest), [False, True, False])


def test_subclasses_with_their_own_memory_round_trip(tmp_path: Path) -> None:
    state = {"s": torch.arange(6.0).reshape(2, 3).as_subclass(Sub),
             "p": torch.nn.Parameter(torch.arange(4.0)),
             "g": torch.arange(3.0).requires_grad_(),
             "b": torch.tensor([True, False]), "c": torch.complex(torch.arange(2.0), -torch.arange(2.0))}
    reshard.save(state, tmp_path)
    dest = {"s": torch.zeros(2, 3).as_subclass(Sub), "p": torch.nn.Parameter(torch.zeros(4)),
            "g": torch.zeros(3, requires_grad=True), "b": torch.zeros(2, dtype=torch.bool),
            "c": torch.zeros(2, dtype=torch.complex64)}
    reshard.load(dest, tmp_path)
    assert type(dest["s"]) is Sub and type(dest["p"]) is torch.nn.Parameter and dest["g"].requires_grad
    for k, v in state.items():
        got, want = (t.detach().as_subclass(torch.Tensor) for t in (dest[k], v))
        assert torch.equal(got, want), k


def _dtensor_of_masked(rank: int, world_size: int, path: str) -> None:
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (world_size,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MaskedTensor is a prototype
        dt = DTensor.from_local(_masked_tensor(), mesh, [Shard(0)], run_check=False)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'w': .*MaskedTensor"):
        reshard.save({"w": dt}, path)


def test_dtensor_over_a_masked_tensor_is_refused_by_key(tmp_path: Path) -> None:
    """The DTensor path skipped the check for its local tensor: save failed as 'rank 0:
    TypeError: mask must have dtype bool.'"""
    from tests.helpers.world import run_world

    run_world(_dtensor_of_masked, 2, str(tmp_path / "ck"), timeout_s=60)
    assert not (tmp_path / "ck" / "manifest.json").exists()
