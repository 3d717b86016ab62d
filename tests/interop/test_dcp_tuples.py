"""Tuples in DCP checkpoints, read without allow_pickle.

DCP's planner walks dicts and lists only: a tuple is saved whole, as one torch.save'd
value, tensors and all. Plain tuples (an optimizer's ``betas``, nested tuples, empty ones)
already loaded as DCP's own load gives them; a tuple holding a tensor was refused ("a
torch.Tensor has no plain-value form; load it with allow_pickle=True"), although
``torch.load(weights_only=True)`` reads tensors safely. Now each tensor inside a value is a
tensor key of its own (``tup.0``) that reads from the value's bytes: load fills the
destination's tensors (as DCP's load gives equal ones), open reads and slices it,
convert writes it, verify checks it once. A namedtuple (its class needs pickle) and a
``torch.Size`` stay refused, naming the key.

Each case compares with what ``dcp.load`` gives into the same state dict: equal values and
equal container types (a tuple stays a tuple, a Parameter a Parameter).
"""

from __future__ import annotations

import collections
import glob
import os
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.interop.convert import convert
from tests.helpers.world import run_world

Pair = collections.namedtuple("Pair", "a b")


def _values() -> dict[str, Any]:
    return {
        "ints": (1, 2, 3),
        "mixed": (1, 2.5, "s", None, True, b"x"),
        "nested": ((1, 2), (3, (4.0, "x")), [5, (6,)]),
        "empty": (),
        "single": (7,),
        "in_dict": {"betas": (0.9, 0.999), "eps": 1e-8},
        "list_of": [(1, 2), (3, 4)],
        "tensors": (torch.arange(6, dtype=torch.int64).reshape(2, 3), torch.arange(4.0)),
        "mixed_tensor": (torch.arange(5, dtype=torch.int32), 5, "x"),
        "deep_tensor": ({"a": torch.arange(3).to(torch.bfloat16)}, [torch.arange(2.0), 9]),
        "ordered": (collections.OrderedDict(b=torch.arange(4, dtype=torch.int16), a=2),),
        "param": (torch.nn.Parameter(torch.arange(3.0)),),
        "views": (torch.arange(10)[2:7], torch.arange(10).reshape(2, 5)[:, 1]),
        "zero_d": (torch.tensor(3.5), torch.tensor(True)),
        "no_elements": (torch.zeros(0, 3), 1),
        "big": (torch.arange(150_000, dtype=torch.float32).reshape(300, 500) + 0.5, 1),
        "python_rng": random.Random(5).getstate(),  # (3, (625 ints), None)
    }


def _zero(v: Any) -> Any:
    """A state dict shaped like ``v`` holding other values (tensors zero-filled)."""
    if isinstance(v, torch.nn.Parameter):
        return torch.nn.Parameter(torch.zeros_like(v))
    if isinstance(v, torch.Tensor):
        return torch.zeros_like(v)
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return type(v)(*[_zero(x) for x in v])
    if isinstance(v, (tuple, list)):
        return type(v)(_zero(x) for x in v)
    if isinstance(v, dict):
        return type(v)((k, _zero(x)) for k, x in v.items())
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return type(v)(0)
    return {str: "", bytes: b""}.get(type(v), v)


def _diff(a: Any, b: Any, at: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ in value or type (types compared exactly)."""
    if type(a) is not type(b):
        return [f"{at}: {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{at}: {a} vs {b}"]
    if isinstance(a, (tuple, list)):
        if len(a) != len(b):
            return [f"{at}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{at}.{i}")]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{at}: keys {sorted(a)} vs {sorted(b)}"]
        return [d for k in a for d in _diff(a[k], b[k], f"{at}.{k}")]
    return [] if a == b else [f"{at}: {a!r} vs {b!r}"]


def _dcp_save(state: dict[str, Any], path: Path, **kw: Any) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(state, checkpoint_id=None if "storage_writer" in kw else str(path), **kw)


def _dcp_load(state: dict[str, Any], path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(path))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tuples")
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    _dcp_save({"v": _values(), "w": torch.arange(4)}, root / "dcp")
    _dcp_save({"v": _values(), "w": torch.arange(4)}, root / "zstd",
              storage_writer=FileSystemWriter(str(root / "zstd"), _extensions=[ZStandard()]))
    convert(str(root / "dcp"), str(root / "converted"))
    return root


@pytest.mark.parametrize("source", ["dcp", "zstd", "converted"])
def test_load_gives_what_dcp_load_gives(saved: Path, source: str) -> None:
    want = _values()
    ref = {"v": _zero(want), "w": torch.zeros(4, dtype=torch.int64)}
    _dcp_load(ref, saved / "dcp")
    assert _diff(ref["v"], want) == []  # DCP's own load, the reference
    got = {"v": _zero(want), "w": torch.zeros(4, dtype=torch.int64)}
    dest = got["v"]["tensors"][0]
    reshard.load(got, saved / source)
    assert _diff(got["v"], ref["v"]) == []
    assert torch.equal(got["w"], torch.arange(4))
    assert got["v"]["tensors"][0] is dest  # filled in place, as reshard fills tensors
    # An empty tuple in the state dict receives the saved tuple, tensors included.
    empty: dict[str, Any] = {"v": {"tensors": (), "ints": (), "deep_tensor": ()}}
    reshard.load(empty, saved / source)
    assert _diff(empty["v"]["tensors"], want["tensors"]) == []
    assert _diff(empty["v"]["ints"], want["ints"]) == []
    assert _diff(empty["v"]["deep_tensor"], want["deep_tensor"]) == []


def test_container_type_follows_the_state_dict(saved: Path) -> None:
    """reshard's keys record no container type: a list where DCP saved a tuple gets a list
    (dcp.load puts the saved tuple there); the destination decides, as documented."""
    got: dict[str, Any] = {"v": {"ints": [0, 0, 0], "tensors": [torch.zeros(2, 3, dtype=torch.int64),
                                                                 torch.zeros(4)]}}
    reshard.load(got, saved / "dcp")
    assert got["v"]["ints"] == [1, 2, 3]
    assert type(got["v"]["tensors"]) is list and torch.equal(got["v"]["tensors"][1], torch.arange(4.0))


def test_open_reads_tensors_inside_tuples(saved: Path) -> None:
    want = _values()
    with reshard.open(saved / "dcp") as ck:
        assert {"v.tensors.0", "v.tensors.1", "v.in_dict.betas.1", "v.deep_tensor.0.a",
                "v.no_elements.0"} <= set(ck.keys())
        info = ck.info("v.big.0")
        assert info.kind == "tensor" and info.shape == (300, 500) and info.dtype == torch.float32
        assert info.refused is None
        assert torch.equal(ck.read("v.big.0", (slice(100, 250), slice(7, 400, 3))),
                           want["big"][0][100:250, 7:400:3])
        assert torch.equal(ck.read("v.views.1"), torch.tensor([1, 6]))
        assert ck.read("v.deep_tensor.0.a").dtype == torch.bfloat16
        assert ck.read("v.zero_d.1").item() is True and ck.read("v.no_elements.0").shape == (0, 3)
        assert ck.read("v.in_dict.betas.0") == 0.9 and ck.read("v.empty") == ()
        # Tensors stored as one C-order run of their storage are read in place, a part at
        # a time (CRC-32C per 1 MiB frame, from bytes that passed the zip's CRC-32s);
        # a strided view is decoded from its whole value item.
        for name, codec in (("v.big.0", "identity"), ("v.tensors.1", "identity"),
                            ("v.views.0", "identity"), ("v.views.1", "dcp-torch-save")):
            (chunk,) = ck.info(name).chunks
            assert chunk.codec == codec, name
            assert (chunk.nbytes == chunk.raw_nbytes) == (codec == "identity"), name
        assert ck.info("v.big.0").chunks[0].nbytes == 600_000
        assert len(ck.manifest.by_dotted()["v.big.0"].chunks[0].frames) == 1  # type: ignore[union-attr]
    with reshard.open(saved / "zstd") as ck:  # compressed: decoded whole
        assert {c.codec for c in ck.info("v.big.0").chunks} == {"dcp-torch-save"}
        assert torch.equal(ck.read("v.big.0", (slice(7, 9), slice(None, None, 100))),
                           want["big"][0][7:9, ::100])


@pytest.mark.parametrize("source", ["dcp", "zstd"])
def test_verify_checks_each_item_once(saved: Path, source: str) -> None:
    report = reshard.verify(saved / source)
    assert report.intact, report
    (data,) = glob.glob(str(saved / source / "*.distcp"))
    # One value item per value (DCP walks the dict "in_dict": two), one tensor item 'w':
    # every stored byte once, though the tuples' tensors are keys of their own.
    assert report.bytes_checked == os.path.getsize(data)
    assert report.chunks == len(_values()) + 1 + 1 and report.keys > report.chunks
    assert reshard.verify(saved / "converted").intact


def test_adam_with_tensor_betas(tmp_path: Path) -> None:
    """Adam takes tensor hyperparameters (``betas=(tensor(0.9), tensor(0.999))``, for
    capturable or compiled steps): its param_groups then hold a tuple of tensors, which
    was refused without allow_pickle. It loads as dcp.load gives it, and the optimizer
    resumes from it."""
    def make(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 2)
        optim = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01 * (seed + 1)),
                                 betas=(torch.tensor(0.9 - seed / 10), torch.tensor(0.999)))
        model(torch.ones(2, 3)).sum().backward()
        optim.step()
        optim.zero_grad()
        return model, optim

    _, saved_optim = make(0)
    _dcp_save({"optim": saved_optim.state_dict()}, tmp_path / "dcp")
    _, ref_optim = make(1)
    ref = {"optim": ref_optim.state_dict()}
    _dcp_load(ref, tmp_path / "dcp")
    _, optim = make(1)
    got = {"optim": optim.state_dict()}
    reshard.load(got, tmp_path / "dcp")
    assert _diff(got, ref) == [] and _diff(got, {"optim": saved_optim.state_dict()}) == []
    optim.load_state_dict(got["optim"])
    assert [b.item() for b in optim.param_groups[0]["betas"]] == [0.8999999761581421, 0.9990000128746033]


def test_unflattened_save_keeps_nested_tensors_in_values(tmp_path: Path) -> None:
    """With ``DefaultSavePlanner(flatten_state_dict=False)`` DCP writes each top-level
    dict whole, as one value item holding its tensors: such a checkpoint was refused key
    by key ("a torch.Tensor has no plain-value form"). Its tensors now load as saved.
    (torch 2.13's own dcp.load with that planner replaces the values in a copy of the
    state dict, so the caller's nested dicts keep their old tensors: no reference here.)"""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    saved = {"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.arange(2)},
             "opt": {"betas": (0.9, 0.99), "state": {0: {"m": torch.arange(3.0)}}}, "x": torch.arange(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(saved, checkpoint_id=str(tmp_path), planner=DefaultSavePlanner(flatten_state_dict=False))
    got = _zero(saved)
    reshard.load(got, tmp_path)
    assert _diff(got, saved) == []
    with reshard.open(tmp_path) as ck:
        assert torch.equal(ck.read("model.w", 1), torch.tensor([3.0, 4.0, 5.0]))
    assert reshard.verify(tmp_path).intact


def test_classes_stay_refused_naming_the_key(tmp_path: Path) -> None:
    """A namedtuple needs its class (arbitrary pickle); a torch.Size inside a tuple has no
    plain form. Both are refused by key, the other keys load; allow_pickle gives what
    dcp.load gives."""
    state = {"pair": Pair(1, torch.arange(2)), "plain": Pair(3, 4), "size": (torch.Size([2, 3]), 1),
             "ok": (1, torch.arange(3)), "sparse": (torch.eye(2).to_sparse(),)}
    _dcp_save(state, tmp_path / "dcp")
    with pytest.raises(reshard.UnsupportedValueError, match=r"'sparse': .*sparse_coo, on cpu\) has no plain"):
        reshard.load({"sparse": None}, tmp_path / "dcp")
    for key in ("pair", "plain", "size"):
        with pytest.raises(reshard.UnsupportedValueError, match=rf"DCP key '{key}'.*allow_pickle=True"):
            reshard.load({key: None}, tmp_path / "dcp")
        with reshard.open(tmp_path / "dcp") as ck:
            refused = ck.info(key).refused
            assert refused is not None and f"'{key}'" in refused
    got: dict[str, Any] = {"ok": (0, torch.zeros(3, dtype=torch.int64))}
    reshard.load(got, tmp_path / "dcp")
    assert _diff(got["ok"], state["ok"]) == []
    with pytest.raises(reshard.UnsupportedValueError, match="'pair', 'plain', 'size', 'sparse'"):
        convert(str(tmp_path / "dcp"), str(tmp_path / "out"))
    del state["sparse"]  # _diff compares dense tensors only
    ref = {k: _zero(v) for k, v in state.items()}
    _dcp_load(ref, tmp_path / "dcp")
    mine = {k: _zero(v) if k == "ok" else None for k, v in state.items()}
    reshard.load(mine, tmp_path / "dcp", allow_pickle=True)
    assert _diff(mine, ref) == []


def test_damaged_tensor_inside_a_tuple(tmp_path: Path) -> None:
    """A flipped byte in a tensor held by a tuple value fails the load naming the key
    (its zip CRC-32), and verify reports it by key without hiding the other items."""
    data = torch.arange(100, 164, dtype=torch.uint8)
    _dcp_save({"t": (data, 1), "lr": 0.5, "w": torch.arange(5.0)}, tmp_path)
    (file,) = glob.glob(str(tmp_path / "*.distcp"))
    good = Path(file).read_bytes()
    at = good.find(bytes(range(100, 164)))
    assert at > 0
    bad = bytearray(good)
    bad[at + 9] ^= 0x04
    Path(file).write_bytes(bytes(bad))
    with pytest.raises(reshard.CorruptCheckpointError, match=r"DCP key 't'.*CRC-32"):
        reshard.load({"t": (torch.zeros(64, dtype=torch.uint8), 0)}, tmp_path)
    report = reshard.verify(tmp_path)
    assert [(d.key, d.file) for d in report.damaged] == [("t", os.path.basename(file))], report
    assert "CRC-32" in report.damaged[0].message and report.chunks == 3
    # Damage to 'lr' too: both named; the tensor item 'w' is still checked.
    lr_at = good.find(b"G?\xe0\x00\x00\x00\x00\x00\x00")  # BINFLOAT 0.5
    assert lr_at > 0
    bad[lr_at + 2] ^= 0x01
    Path(file).write_bytes(bytes(bad))
    report = reshard.verify(tmp_path)
    assert sorted(d.key or "" for d in report.damaged) == ["lr", "t"], report
    assert report.chunks == 3 and report.bytes_checked > 0
    # The data file gone: every item is named, none hides the others (it was one line,
    # "manifest.json: ... is missing", with 0 keys).
    os.remove(file)
    report = reshard.verify(tmp_path)
    assert sorted((d.key or "", d.message) for d in report.damaged) == [
        (k, "the data file is missing") for k in ("lr", "t", "w")], report
    assert report.bytes_checked == 0


# A 2-rank gloo world: Adam and AdamW state from get_state_dict on FSDP2, tuple values
# with tensors, and a float8_e8m0fnu DTensor sharded over both ranks (checked by verify).

ODD = getattr(torch, "float8_e8m0fnu", None)


def _model_and_optim(cls: type, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    optim = cls(model.parameters(), lr=0.01 * (seed + 1), betas=(0.8 + seed / 100, 0.95))
    _step(model, optim)
    return model, optim


def _step(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
    model(torch.arange(21, dtype=torch.float32).reshape(3, 7) / 21).square().sum().backward()
    optim.step()
    optim.zero_grad()


def _full(state: Any) -> Any:
    from torch.distributed.tensor import DTensor

    if isinstance(state, DTensor):
        return state.full_tensor()
    if isinstance(state, dict):
        return {k: _full(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_full(v) for v in state)
    return state


def _optimizer_world(rank: int, world: int, root: str) -> list[str]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    problems: list[str] = []
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        path = os.path.join(root, cls.__name__)
        model, optim = _model_and_optim(cls, 0)
        msd, osd = get_state_dict(model, optim)
        state: dict[str, Any] = {"model": msd, "optim": osd, "extra": _values()}
        if ODD is not None:
            # gloo cannot scatter float8: each rank makes its own rows.
            rows = torch.arange(100 + 24 * rank, 124 + 24 * rank, dtype=torch.uint8).view(ODD)
            state["odd"] = DTensor.from_local(rows.reshape(3, 8), init_device_mesh("cpu", (2,)),
                                              [Shard(0)], run_check=False)
        dcp.save(state, checkpoint_id=path)

        def fresh(cls: type = cls) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
            m, o = _model_and_optim(cls, 1)  # other values everywhere, betas included
            ms, os_ = get_state_dict(m, o)
            return m, o, {"model": ms, "optim": os_, "extra": _zero(_values())}

        _, _, ref = fresh()
        dcp.load(ref, checkpoint_id=path)
        model2, optim2, got = fresh()
        # A tuple's tensor may land in a DTensor: each rank gets its rows.
        mesh = init_device_mesh("cpu", (2,))
        sharded = DTensor.from_local(torch.zeros(150, 500), mesh, [Shard(0)], run_check=False)
        got["extra"]["big"] = (sharded, 0)
        reshard.load(got, path)  # no allow_pickle
        if not torch.equal(sharded.to_local(), _values()["big"][0][150 * rank:150 * (rank + 1)]):
            problems.append(f"{cls.__name__}: the DTensor in 'big' got other rows")
        got["extra"]["big"] = (sharded.full_tensor(), got["extra"]["big"][1])
        groups = got["optim"]["param_groups"]
        if [type(g["betas"]) for g in groups] != [tuple] or groups[0]["betas"] != (0.8, 0.95):
            problems.append(f"{cls.__name__}: betas {[g['betas'] for g in groups]}")
        problems += [f"{cls.__name__}: {d}" for d in _diff(_full(got), _full(ref))]
        problems += [f"{cls.__name__} vs saved: {d}" for d in _diff(got["extra"], _values())]
        set_state_dict(model2, optim2, model_state_dict=got["model"], optim_state_dict=got["optim"])
        _step(model, optim)
        _step(model2, optim2)  # resumes exactly where the saved run goes on
        for (name, a), b in zip(model.named_parameters(), model2.parameters()):
            if not torch.equal(a.full_tensor(), b.full_tensor()):  # type: ignore[attr-defined]
                problems.append(f"{cls.__name__}: {name} differs after a step")
    return problems


@pytest.mark.dist
def test_optimizer_tuples_on_two_ranks(tmp_path: Path) -> None:
    results = run_world(_optimizer_world, 2, str(tmp_path), timeout_s=240)
    failures = [f"rank {r}: {p}" for r, ps in enumerate(results) for p in ps]
    assert not failures, "\n".join(failures)
    for name in ("Adam", "AdamW"):
        path = tmp_path / name
        report = reshard.verify(path)
        assert report.intact, report
        assert report.bytes_checked == sum(p.stat().st_size for p in path.glob("*.distcp"))
        if ODD is None:
            continue
        # Each rank wrote its half of 'odd' (rows 3..5 by rank 1): a flip there is named
        # by key and chunk, and nothing else is damaged.
        for rank, offsets in ((0, (0, 0)), (1, (3, 0))):
            file = path / f"__{rank}_0.distcp"
            good = file.read_bytes()
            at = good.find(bytes(range(100 + 24 * rank, 124 + 24 * rank)))
            assert at > 0
            file.write_bytes(good[:at + 3] + bytes([good[at + 3] ^ 0x10]) + good[at + 4:])
            report = reshard.verify(path)
            file.write_bytes(good)
            assert [(d.key, d.chunk_offsets) for d in report.damaged] == [("odd", offsets)], report
            assert not report.unchecked


def test_tuple_tensor_read_in_place_is_checked(tmp_path: Path) -> None:
    """A tensor in a tuple value is read in place, by 1 MiB frames whose CRC-32Cs reshard
    computed from bytes that passed the archive's CRC-32s: a byte changed after the
    directory was opened fails the read naming the key, never reads silently."""
    big = torch.arange(3 * 2**18, dtype=torch.float64).reshape(3, 2**18)  # 6 MiB
    _dcp_save({"ema": (big, big[1].clone(), 0.999)}, tmp_path)
    (file,) = glob.glob(str(tmp_path / "*.distcp"))
    with reshard.open(tmp_path) as ck:
        entry = ck.manifest.by_dotted()["ema.0"]
        (chunk,) = entry.chunks  # type: ignore[union-attr]
        assert chunk.codec.name == "identity" and len(chunk.frames) == 6
        assert torch.equal(ck.read("ema.0", (slice(1, 3), slice(2**18 - 5, None))), big[1:, -5:])
        assert torch.equal(ck.read("ema.1"), big[1]) and ck.read("ema.2") == 0.999
        data = bytearray(Path(file).read_bytes())
        data[chunk.offset + 4 * 2**20 + 3] ^= 0x01  # in frame 4
        Path(file).write_bytes(bytes(data))
        with pytest.raises(reshard.CorruptCheckpointError, match=r"key 'ema\.0'.*frame 4.*CRC-32C"):
            ck.read("ema.0", (2, slice(None)))
        assert torch.equal(ck.read("ema.0", (0, slice(0, 10))), big[0, :10])  # frame 0 is intact
    report = reshard.verify(tmp_path)  # the archive's CRC-32 fails too
    assert [d.key for d in report.damaged] == ["ema"]
