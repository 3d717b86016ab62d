"""On 2 ranks: a DCP checkpoint with io.BytesIO values loads them on every rank (the
in-memory manifest travels between ranks with its buffers' bytes), and the conversion of
a DCP checkpoint saved with a fresh optimizer's empty state loads strictly, as the
directory does. One spawned world for both."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import pytest
import torch

import reshard
from reshard.interop.convert import convert
from tests.helpers.world import run_world


def _fresh() -> dict[str, Any]:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return {"model": model.state_dict(), "optim": opt.state_dict(), "buf": io.BytesIO(),
            "extra": {}}


def _load_world(rank: int, world_size: int, root: str) -> None:
    failures = []
    for name in ("dcp", "converted"):
        got = _fresh()
        try:
            if name == "converted":
                del got["buf"]  # convert refuses BytesIO values: the source had none
            reshard.load(got, os.path.join(root, name))
        except reshard.CheckpointError as e:
            failures.append(f"{name}: {e}")
            continue
        if not torch.equal(got["model"]["weight"], torch.arange(12.0).reshape(3, 4)):
            failures.append(f"{name}: weight")
        if got["optim"]["state"] != {} or got["optim"]["param_groups"][0]["lr"] != 0.25:
            failures.append(f"{name}: optim {got['optim']}")
        if name == "dcp" and (got["buf"].getvalue() != b"rank-free bytes" or got["buf"].tell() != 5):
            failures.append(f"{name}: buf {got['buf'].getvalue()!r} at {got['buf'].tell()}")
    if failures:
        raise AssertionError(f"rank {rank}: " + "; ".join(failures))


@pytest.mark.dist
def test_two_ranks(tmp_path: Any) -> None:
    import torch.distributed.checkpoint as dcp

    state = _fresh()
    state["model"]["weight"] = torch.arange(12.0).reshape(3, 4)
    state["optim"]["param_groups"][0]["lr"] = 0.25
    state["buf"] = io.BytesIO(b"rank-free bytes")
    state["buf"].seek(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"))
        del state["buf"]
        dcp.save(state, checkpoint_id=str(tmp_path / "plain"))
    convert(str(tmp_path / "plain"), str(tmp_path / "converted"))
    run_world(_load_world, 2, str(tmp_path), timeout_s=120)
