"""Single-process regression tests for core bugs the scenario suite (tests/dist) found."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import reshard
from reshard.adapters.tensors import shards_of
from reshard.core.layout import Box
from reshard.core.planner import TensorDesc, plan_save
from reshard.errors import LayoutMismatchError
from tests.dist.codec_util import register_test_codecs
from tests.dist.layouts import RowShardObject, RowShardTensor


@pytest.mark.parametrize("codec", ["identity", "zstd", "test-rot"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.int16, torch.complex64])
@pytest.mark.parametrize("frame", ["7", "28", "44"])
def test_frames_not_ending_on_element_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str, dtype: torch.dtype, frame: str
) -> None:
    """A frame size that is no multiple of the itemsize used to break reads of a part."""
    register_test_codecs()
    full = torch.arange(13 * 6).reshape(13, 6).to(dtype)
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", frame)
    reshard.save({"t": full}, tmp_path / "ck", codec=codec)
    monkeypatch.setenv("RESHARD_MAX_PIECE_NBYTES", "24")  # many pieces per chunk
    with reshard.open(tmp_path / "ck") as ck:
        assert torch.equal(ck.read("t"), full)
        assert torch.equal(ck.read("t", (slice(3, 11), slice(1, 5))), full[3:11, 1:5])
        assert torch.equal(ck.read("t", (slice(None), 5)), full[:, 5])
        assert torch.equal(ck.read("t", 7), full[7])
    out = {"t": torch.zeros(13, 6, dtype=torch.float32)}
    if not dtype.is_complex:
        reshard.load(out, tmp_path / "ck")
        assert torch.equal(out["t"], full.to(torch.float32))


def _desc(dtype: str, boxes: tuple[Box, ...]) -> TensorDesc:
    return TensorDesc(key=("x",), dtype=dtype, shape=(4, 2), container="torch", boxes=boxes)


def test_ranks_without_data_do_not_decide_dtype() -> None:
    """An empty LocalShardsWrapper reports float32 whatever the tensor's dtype."""
    empty = _desc("float32", ())
    top, bottom = Box((0, 0), (2, 2)), Box((2, 0), (2, 2))
    plan = plan_save([[empty], [_desc("int64", (top,))], [empty], [_desc("int64", (bottom,))]])
    (entry,) = plan.entries
    assert isinstance(entry, TensorDesc) and entry.dtype == "int64"
    with pytest.raises(LayoutMismatchError, match="dtype"):
        plan_save([[_desc("float32", (top,))], [_desc("int64", (bottom,))]])
    with pytest.raises(LayoutMismatchError, match="shape"):
        plan_save([[_desc("int64", (top,))], [TensorDesc(key=("x",), dtype="float32", shape=(5, 2),
                                                        container="torch", boxes=())]])


def test_protocol_tensor_holding_nothing_describes_the_tensor() -> None:
    nothing = RowShardTensor((13, 6), torch.int64, [])
    for for_load in (False, True):
        s = shards_of(nothing, ("k",), for_load=for_load)
        assert (s.shape, s.dtype, s.boxes) == ((13, 6), "int64", ())


def test_protocol_object_holding_nothing_is_a_clear_error() -> None:
    with pytest.raises(reshard.UnsupportedValueError, match="'k'.*no items"):
        shards_of(RowShardObject((13, 6), torch.int64, []), ("k",), for_load=False)
    empty_piece = RowShardObject((13, 6), torch.int64, [(5, torch.zeros(0, 6, dtype=torch.int64))])
    s = shards_of(empty_piece, ("k",), for_load=False)
    assert (s.shape, s.boxes) == ((13, 6), ())


def _row_plan(rng: random.Random, n: int, parts: int) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(1, n), parts - 1))
    bounds = [0, *cuts, n]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("codec", ["identity", "zstd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_process_row_plans_with_default_frames(tmp_path: Path, codec: str, seed: int) -> None:
    """A ~1 MiB tensor saved as many uneven row chunks with the default frame size (so
    chunks span several frames and the identity fast path reads whole frames), loaded
    into another uneven plan and into column slices."""
    rng = random.Random(seed)
    shape = (1031, 257)
    full = torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape)
    save_plan = _row_plan(rng, shape[0], 5)
    pieces = [(o, full[o:o + n].clone()) for o, n in save_plan]
    reshard.save({"t": RowShardObject(shape, torch.float32, pieces)}, tmp_path / "ck", codec=codec)
    load_plan = _row_plan(rng, shape[0], 7)
    target = RowShardObject(shape, torch.float32, [(o, torch.zeros(n, shape[1])) for o, n in load_plan])
    reshard.load({"t": target}, tmp_path / "ck")
    for off, t in target._pieces:
        assert torch.equal(t, full[off:off + t.shape[0]])
    with reshard.open(tmp_path / "ck") as ck:
        assert len(ck.info("t").chunks) == 5
        lo = rng.randrange(0, 900)
        assert torch.equal(ck.read("t", (slice(lo, lo + 131), slice(7, 200))), full[lo:lo + 131, 7:200])


def test_cooperative_reads_stay_off_on_groups_that_cannot_move_host_tensors() -> None:
    from reshard.dist.collective import Collective

    class FakeDist:
        def __init__(self, backend: str) -> None:
            self.backend = backend

        def get_backend(self, group: object) -> str:
            return self.backend

    swaps = {}
    for backend in ("gloo", "nccl", "cpu:gloo,cuda:nccl", "mpi"):
        coll = Collective.__new__(Collective)
        coll._dist, coll._group = FakeDist(backend), None
        swaps[backend] = coll.swaps_host_bytes
    assert swaps == {"gloo": True, "nccl": False, "cpu:gloo,cuda:nccl": True, "mpi": True}
