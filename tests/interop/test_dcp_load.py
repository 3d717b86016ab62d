"""Real DCP checkpoints (torch.distributed.checkpoint.save on 4 gloo ranks: DTensors on
1-D and 2-D meshes, uneven and empty shards, zstd extension, non-tensor values) loaded
by reshard on 2 ranks with other placements and in one process; exact comparison."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest
import torch

import reshard
from reshard.interop.convert import convert
from tests.helpers.world import run_world
from tests.interop import dcp_worlds as W

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def dcp_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("dcp"))
    run_world(W.save_dcp_world, 4, root, timeout_s=180)
    # DCP -> reshard -> safetensors (sharded) -> reshard, loaded by the 2-rank world too.
    convert(os.path.join(root, "zstd"), os.path.join(root, "converted_reshard"), codec="zstd")
    convert(os.path.join(root, "converted_reshard"), os.path.join(root, "st"),
            max_shard_nbytes=300)
    convert(os.path.join(root, "st"), os.path.join(root, "converted"))
    return root


def test_load_on_two_ranks_with_other_placements(dcp_root: str) -> None:
    results = run_world(W.load_dcp_world, 2, dcp_root, timeout_s=180)
    failures = [f"rank {r}: {f}" for r, fs in enumerate(results) for f in fs]
    assert not failures, "\n".join(failures)


def _zeros_sd() -> dict[str, Any]:
    flat: dict[str, Any] = {n: torch.zeros(s, dtype=d) for n, s, d, _, _ in W.TENSORS}
    flat.update({n: torch.zeros(s, dtype=d) for n, (s, d) in W.PLAIN.items()})
    sd = W._nest(flat)
    sd["extra"] = {k: None for k in W.VALUES}
    sd["extra"]["betas"] = (0.0, 0.0)
    sd["extra"]["flags"] = [None, None]
    return sd


@pytest.mark.parametrize("scenario", W.SCENARIOS + ("converted_reshard", "converted"))
def test_load_in_one_process(dcp_root: str, scenario: str) -> None:
    sd = _zeros_sd()
    reshard.load(sd, os.path.join(dcp_root, scenario))
    assert W.check(sd, scenario, dtensor=False) == []


def test_open_lists_and_reads_slices(dcp_root: str) -> None:
    with reshard.open(os.path.join(dcp_root, "zstd")) as ck:
        assert "model.grid" in ck and "extra.betas.1" in ck and "extra.step" in ck
        info = ck.info("model.grid")
        assert info.shape == (9, 7) and info.dtype == torch.float32
        assert len(info.chunks) == 4 and {c.codec for c in info.chunks} == {"dcp-torch-save"}
        assert len(ck.info("model.tiny").chunks) == 3  # the empty shard holds no chunk
        full = W.expected("model.grid", (9, 7), torch.float32)
        assert torch.equal(ck.read("model.grid", (slice(2, 8), slice(1, 6))), full[2:8, 1:6])
        assert torch.equal(ck.read("model.grid", 4), full[4])
        assert ck.read("extra.name") == "adamw"
        assert ck.read("extra.blob") == b"\x00\x01bytes"


def test_dcp_reader_agrees(dcp_root: str) -> None:
    """Our reading matches DCP's own loader on the same files (one process)."""
    import torch.distributed.checkpoint as dcp

    sd = _zeros_sd()
    sd["extra"] = dict(W.VALUES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=os.path.join(dcp_root, "plain"))
    assert W.check(sd, "dcp.load", dtensor=False) == []


def test_converted_chain_files(dcp_root: str) -> None:
    from safetensors.torch import load_file

    st = os.path.join(dcp_root, "st")
    names = sorted(os.listdir(st))
    assert "model.safetensors.index.json" in names and len(names) > 3
    loaded: dict[str, torch.Tensor] = {}
    for n in names:
        if n.endswith(".safetensors"):
            loaded.update(load_file(os.path.join(st, n)))
    want = {n: W.expected(n, s, d) for n, s, d, _, _ in W.TENSORS}
    want.update({n: W.expected(n, s, d) for n, (s, d) in W.PLAIN.items()})
    assert sorted(loaded) == sorted(want)
    for n, t in want.items():
        assert loaded[n].dtype == t.dtype and torch.equal(loaded[n], t), n
