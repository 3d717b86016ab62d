"""Regressions from the odd-layout hunt, one process: each test names the bug it pins."""

from __future__ import annotations

import pytest
import torch

import reshard


def _one_element_views() -> dict[str, torch.Tensor]:
    # torch calls a one-element tensor contiguous whatever its strides.
    return {
        "step": torch.zeros(4, dtype=torch.int16)[::2][:1],  # (1,) stride (2,)
        "col": torch.zeros(9, dtype=torch.complex64).as_strided((1, 1), (5, 3)),
        "zero_stride": torch.zeros((), dtype=torch.float64).expand(1),  # (1,) stride (0,)
    }


@pytest.mark.parametrize("codec", [None, "zstd", reshard.ZstdCodec(planes=False),
                                   reshard.ZstdCodec(shuffle=False)])
@pytest.mark.parametrize("frame", ["3", "4096"])
def test_one_element_destination_with_a_stride(tmp_path, monkeypatch, codec, frame):
    # Bug: decoding straight into such a destination viewed it as bytes, which torch
    # refuses for a last stride other than 1: the load failed as a CorruptCheckpointError
    # ("self.stride(-1) must be 1 to view Short as Byte") for every codec but identity.
    dests = _one_element_views()
    want = {k: (torch.arange(v.numel(), dtype=torch.float64) + 7).to(v.dtype).reshape(v.shape)
            for k, v in dests.items()}
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)
    reshard.save(want, tmp_path, codec=codec)
    reshard.load(dests, tmp_path)
    for k, v in dests.items():
        assert torch.equal(v, want[k]), k


def test_protocol_shard_of_another_dtype_is_refused_at_save(tmp_path):
    # Bug: a checkpointable-protocol tensor whose shard tensors differ in dtype from the
    # dtype its write items declare was saved as the declared dtype: with another element
    # size the committed manifest was refused by every reader ("raw_nbytes: 12 != 6
    # elements x 4 bytes"), with the same size the bytes loaded as other values.
    from tests.dist.layouts import RowShardTensor

    reshard.save({"t": torch.ones(2)}, tmp_path)  # the checkpoint the failed save must keep
    for shard_dtype in (torch.bfloat16, torch.int32):
        pieces = [(0, torch.arange(6).reshape(2, 3).to(shard_dtype)),
                  (2, torch.arange(6, 12).reshape(2, 3).to(torch.float32))]
        with pytest.raises(reshard.LayoutMismatchError,
                           match=rf"key 't': shard 0 has dtype {shard_dtype} but .* float32"):
            reshard.save({"t": RowShardTensor((4, 3), torch.float32, pieces)}, tmp_path)
    out = {"t": torch.zeros(2)}
    reshard.load(out, tmp_path)
    assert torch.equal(out["t"], torch.ones(2))


def test_empty_destinations_with_zero_strides_load(tmp_path):
    # Bug: numpy gives empty arrays zero strides (np.zeros((0, 3)).strides == (0, 0)), and a
    # load refused them as "an expanded view whose elements share memory".
    import numpy as np

    saved = {"np": np.zeros((0, 3), dtype=np.float16), "t": torch.empty(0, 4),
             "full": np.arange(6, dtype=np.int32).reshape(2, 3)}
    reshard.save(saved, tmp_path)
    out = {"np": np.ones((0, 3), dtype=np.float16), "t": torch.empty(0, 1).expand(0, 4),
           "full": np.zeros((2, 3), dtype=np.int32)}
    reshard.load(out, tmp_path)
    assert out["np"].shape == (0, 3) and tuple(out["t"].shape) == (0, 4)
    assert np.array_equal(out["full"], saved["full"])
    # An expanded view holding elements is still refused.
    with pytest.raises(reshard.UnsupportedValueError, match="key 'full'.*expanded view"):
        reshard.load({"full": torch.zeros(1, 3, dtype=torch.int32).expand(2, 3)}, tmp_path)


def test_empty_tensor_with_a_dim_beyond_the_format_is_refused_at_save(tmp_path):
    # Bug: an empty tensor may have any dim size; a dim over the reader's bound (2**48) was
    # saved and committed, and every load then refused the manifest.
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'a': shape \[.*\] has a dim"):
        reshard.save({"a": torch.empty(2**50, 0)}, tmp_path)
    assert not (tmp_path / "manifest.json").exists()
