"""Real FSDP models, as users save them.

FSDP2 over tensor parallelism: a model and its Adam state, as torch's state-dict helpers
give them (first-layer weights carry ``_StridedShard`` placements), saved with reshard and
loaded back into the same parallelism, into FSDP2 alone on another mesh, and into plain
tensors in one process. FSDP1: a sharded state dict (legacy ``ShardedTensor``s) loaded
into FSDP1 again and into FSDP2.

One world of 4 ranks; values are compared exactly with the full saved state.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

import reshard
from tests.helpers.world import run_world

pytestmark = pytest.mark.dist


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(10, 14), torch.nn.ReLU(), torch.nn.Linear(14, 6), torch.nn.ReLU(),
        torch.nn.Linear(6, 9),
    )


def _parallel(mesh: Any, *, tp: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = _model()
    if tp:
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel(),
                                               "4": ColwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
    else:
        fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


def _state(model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optim)
    return {"model": msd, "optim": osd}


def _full(obj: Any) -> Any:
    """The state with every DTensor gathered into a plain tensor."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, dict):
        return {k: _full(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_full(v) for v in obj]
    if isinstance(obj, DTensor):
        return obj.full_tensor()
    return obj.clone() if isinstance(obj, torch.Tensor) else obj


def _diff(got: Any, want: Any, where: str = "") -> list[str]:
    if isinstance(want, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(map(str, got))} != {sorted(map(str, want))}"]
        return [p for k in want for p in _diff(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list):
        return [p for i, (g, w) in enumerate(zip(got, want)) for p in _diff(g, w, f"{where}[{i}]")]
    if isinstance(want, torch.Tensor):
        return [] if torch.equal(got, want) else [f"{where}: values differ"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def _placements(state: dict[str, Any]) -> set[str]:
    return {str(p) for v in state["model"].values() for p in getattr(v, "placements", ())}


def _world(rank: int, world: int, root: str) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import set_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model, optim = _parallel(mesh, tp=True)
    x = torch.arange(30, dtype=torch.float32).reshape(3, 10) / 30
    for _ in range(2):
        model(x).square().sum().backward()
        optim.step()
        optim.zero_grad()
    saved = _state(model, optim)
    path = os.path.join(root, "ckpt")
    reshard.save(saved, path)
    want = _full(saved)
    problems: list[str] = []

    # Back into FSDP2 + TP: fresh parameters, then the loaded state set into the modules.
    model2, optim2 = _parallel(mesh, tp=True)
    target = _state(model2, optim2)
    reshard.load(target, path)
    set_state_dict(model2, optim2, model_state_dict=target["model"],
                   optim_state_dict=target["optim"])
    problems += _diff(_full(_state(model2, optim2)), want, "fsdp+tp")
    out = model2(x)
    problems += [] if torch.equal(out, model(x)) else ["fsdp+tp: forward outputs differ"]

    # Into FSDP2 alone over all 4 ranks.
    flat = init_device_mesh("cpu", (4,), mesh_dim_names=("dp",))
    model3, optim3 = _parallel(flat, tp=False)
    target3 = _state(model3, optim3)
    reshard.load(target3, path)
    problems += _diff(_full(target3), want, "fsdp4")
    problems += _fsdp1(root, flat)
    return {"problems": problems, "placements": sorted(_placements(saved)),
            "want": _mapped(want, lambda t: t.numpy()) if rank == 0 else None}


def _fsdp1(root: str, mesh: Any) -> list[str]:
    from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

    def wrapped() -> Any:
        return FullyShardedDataParallel(_model(), device_id=torch.device("cpu"),
                                        use_orig_params=True)

    def sharded(model: Any) -> dict[str, Any]:
        with FullyShardedDataParallel.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
            return dict(model.state_dict())

    model = wrapped()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(i + 1)  # not the seed's values, so a load that does nothing fails
    saved = sharded(model)
    kinds = sorted({type(v).__name__ for v in saved.values()})
    if kinds != ["ShardedTensor"]:
        return [f"fsdp1: the sharded state dict holds {kinds}"]
    want = {k: _gathered(v) for k, v in saved.items()}
    path = os.path.join(root, "fsdp1")
    reshard.save(saved, path)
    target = sharded(wrapped())
    reshard.load(target, path)
    problems = _diff({k: _gathered(v) for k, v in target.items()}, want, "fsdp1")
    model2, _ = _parallel(mesh, tp=False)
    target2 = dict(model2.state_dict())
    reshard.load(target2, path)
    return problems + _diff(_full(target2), want, "fsdp1 -> fsdp2")


def _gathered(st: Any) -> torch.Tensor:
    """A ShardedTensor's full value on every rank: each element has one owner, the other
    ranks add zeros."""
    import torch.distributed as dist

    full = torch.zeros(tuple(st.size()), dtype=st.metadata().tensor_properties.dtype)
    for shard in st.local_shards():
        index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets,
                                                       shard.metadata.shard_sizes))
        full[index] = shard.tensor
    dist.all_reduce(full)
    return full


def test_fsdp_over_tp_state_round_trips(tmp_path: Any) -> None:
    results = run_world(_world, 4, str(tmp_path), timeout_s=180)
    problems = [f"rank {r}: {p}" for r, res in enumerate(results) for p in res["problems"]]
    assert not problems, "\n".join(problems)
    assert "_S(0, 2)" in results[0]["placements"], results[0]["placements"]

    # One process, no torch.distributed: plain tensors of the full shapes.
    want = _mapped(results[0]["want"], torch.from_numpy)
    plain = _mapped(want, torch.zeros_like)
    reshard.load(plain, str(tmp_path / "ckpt"))
    assert not _diff(plain, want, "plain")


def _mapped(obj: Any, fn: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor or numpy array (tensors leave a spawned
    rank as numpy arrays: torch's own pickling shares memory the exiting rank frees)."""
    if isinstance(obj, dict):
        return {k: _mapped(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mapped(v, fn) for v in obj]
    return fn(obj) if isinstance(obj, (torch.Tensor, np.ndarray)) else obj
