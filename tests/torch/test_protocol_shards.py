"""One-process checks of DCP checkpointable-protocol leaves that return odd shard
tensors from ``__get_tensor_shard__`` (the worlds are in tests/dist/protocol_worlds.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from tests.dist.protocol_worlds import SHAPE, BoxTensor, full


def _save(tmp_path: Path, leaf: Any) -> str:
    path = str(tmp_path / "ck")
    reshard.save({"t": leaf}, path)
    return path


@pytest.mark.parametrize("returned, words", [
    (lambda: None, "returned a NoneType for chunk 0 at [0, 0], not a torch.Tensor"),
    (lambda: full().numpy(), "returned a ndarray"),
    (lambda: full().to_sparse(), "layout torch.sparse_coo is not supported"),
    (lambda: torch.empty(SHAPE, device="meta"), "meta device"),
])
def test_save_refuses_shards_it_cannot_read_by_key(tmp_path: Path, returned: Any, words: str) -> None:
    leaf = BoxTensor([((0, 0), full())], shard=lambda i, index: returned())
    with pytest.raises(reshard.UnsupportedValueError) as e:
        _save(tmp_path, leaf)
    assert "key 't'" in str(e.value) and words in str(e.value), str(e.value)
    assert not (tmp_path / "ck" / "manifest.json").exists()


def test_save_refuses_a_nonempty_chunk_of_other_dims(tmp_path: Path) -> None:
    """Such a chunk was skipped: covered elsewhere, its values were never checked."""
    leaf = BoxTensor([((0, 0), full()), ((0,), full().reshape(-1))])
    with pytest.raises(reshard.LayoutMismatchError, match=r"key 't': chunk 1 at \[0\] of sizes "
                       r"\[48\] does not have the 2 dims of shape \[6, 8\]"):
        _save(tmp_path, leaf)


def test_chunk_list_raising_names_the_key(tmp_path: Path) -> None:
    class NoChunks(BoxTensor):
        def __create_chunk_list__(self) -> list[Any]:
            raise RuntimeError("chunks unavailable")

    path = _save(tmp_path, full())
    with pytest.raises(reshard.UnsupportedValueError,
                       match="key 't': __create_chunk_list__ failed: chunks unavailable"):
        reshard.load({"t": NoChunks([((0, 0), torch.zeros(SHAPE))])}, path)


@pytest.mark.parametrize("dest, words", [
    # Parts outside the shape were left unfilled without a word.
    (lambda: BoxTensor([((3, 4), torch.zeros(3, 8))]),
     "chunk 0 at [3, 4] of sizes [3, 8] lies outside shape [6, 8]"),
    (lambda: BoxTensor([((-1, 0), torch.zeros(2, 8))]), "lies outside shape"),
    # Skipped: nothing was loaded into it.
    (lambda: BoxTensor([((0,), torch.zeros(48))]), "does not have the 2 dims"),
    # Loaded nothing, silently.
    (lambda: BoxTensor([((0, 0), torch.empty(SHAPE, device="meta"))]), "meta device"),
    # Elements sharing memory kept whichever value came last.
    (lambda: BoxTensor([((0, 0), torch.zeros(60).as_strided(SHAPE, (2, 1)))]), "share memory"),
    (lambda: BoxTensor([((0, 0), torch.zeros(1, 8).expand(SHAPE))]), "expanded view"),
])
def test_load_refuses_destination_shards_it_cannot_fill(tmp_path: Path, dest: Any, words: str) -> None:
    path = _save(tmp_path, full())
    with pytest.raises(reshard.CheckpointError) as e:
        reshard.load({"t": dest()}, path)
    assert "key 't'" in str(e.value) and words in str(e.value), str(e.value)


def test_load_fills_non_contiguous_views_out_of_order_and_converts_dtype(tmp_path: Path) -> None:
    path = _save(tmp_path, full())
    buf = torch.zeros(SHAPE, dtype=torch.float64).t().contiguous().t()
    dest = BoxTensor([((0, 5), buf[:, 5:]), ((2, 0), torch.zeros(0, 5)), ((0, 0), buf[:, :5])])
    reshard.load({"t": dest}, path)
    assert torch.equal(buf, full(torch.float64))


def test_write_items_must_describe_one_tensor(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

    class BytesItem(BoxTensor):
        def __create_write_items__(self, fqn: str, obj: Any) -> list[Any]:
            return [WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO)]

    class SecondItemOtherSize(BoxTensor):
        def __create_write_items__(self, fqn: str, obj: Any) -> list[Any]:
            first, second = super().__create_write_items__(fqn, obj)
            data = TensorWriteData(chunk=second.tensor_data.chunk,
                                   properties=TensorProperties(dtype=torch.float32),
                                   size=torch.Size((7, 8)))
            return [first, WriteItem(index=second.index, type=second.type, tensor_data=data)]

    src = full()
    with pytest.raises(reshard.UnsupportedValueError,
                       match="key 't': __create_write_items__ must return SHARD items.*no tensor_data"):
        _save(tmp_path, BytesItem([((0, 0), src)]))
    with pytest.raises(reshard.UnsupportedValueError,
                       match=r"key 't': .*got size \[6, 8\] dtype torch.float32, size \[7, 8\]"):
        _save(tmp_path, SecondItemOtherSize([((0, 0), src[:3].clone()), ((3, 0), src[3:].clone())]))


class _LoadSideOnly(BoxTensor):
    """Only the methods DCP's load asks of a tensor subclass: no write items."""

    def __getattribute__(self, name: str) -> Any:
        if name == "__create_write_items__":
            raise AttributeError(name)
        return super().__getattribute__(name)


class _ChunksOnlyObject:
    def __create_chunk_list__(self) -> list[Any]:
        return []


def test_subclass_without_write_items_saves_and_loads_by_its_chunks(tmp_path: Path) -> None:
    src = full()
    leaf = _LoadSideOnly([((3, 0), src[3:].clone()), ((0, 0), src[:3].clone())])
    assert not hasattr(leaf, "__create_write_items__")
    path = _save(tmp_path, leaf)
    out = {"t": torch.zeros(SHAPE)}
    reshard.load(out, path)
    assert torch.equal(out["t"], src)
    buf = torch.zeros(SHAPE, dtype=torch.float64).t().contiguous().t()
    reshard.load({"t": _LoadSideOnly([((0, 4), buf[:, 4:]), ((0, 0), buf[:, :4])])}, path)
    assert torch.equal(buf, full(torch.float64))
    with pytest.raises(reshard.UnsupportedValueError,
                       match="key 't': a _ChunksOnlyObject has __create_chunk_list__ but no "
                             "__create_write_items__"):
        reshard.load({"t": _ChunksOnlyObject()}, path)
