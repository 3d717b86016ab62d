"""Hostile DCP input: nothing beyond the metadata allowlist and weights_only loads runs."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.errors import CheckpointError, CorruptCheckpointError, UnsupportedValueError


class _Payload:
    """Unpickling this runs ``os.system`` (what a hostile checkpoint would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class Custom:
    """A value only arbitrary pickle can restore."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.x == self.x


def _dcp_save(sd: dict[str, Any], path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(sd, checkpoint_id=str(path))


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "dcp"
    _dcp_save({"w": torch.arange(6.0).reshape(2, 3), "step": 3}, path)
    return path


def test_metadata_with_reduce_payload_runs_nothing(ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(f"touch {marker}")))
    with pytest.raises(CorruptCheckpointError, match="os.system|posix.system"):
        reshard.load({"w": torch.zeros(2, 3)}, ckpt)
    with pytest.raises(CheckpointError):
        reshard.open(ckpt)
    with pytest.raises(CheckpointError):
        reshard.load({"w": torch.zeros(2, 3)}, ckpt, allow_pickle=True)
    assert not marker.exists()


def test_metadata_payload_nested_inside_real_metadata(ckpt: Path, tmp_path: Path) -> None:
    """A payload hidden in planner_data of otherwise valid metadata is refused too."""
    from torch.distributed.checkpoint import FileSystemReader

    marker = tmp_path / "pwned2"
    meta = FileSystemReader(str(ckpt)).read_metadata()
    meta.planner_data = {"w": _Payload(f"touch {marker}")}
    (ckpt / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match="not a DCP metadata class"):
        reshard.open(ckpt)
    assert not marker.exists()


def test_tensor_item_with_payload_runs_nothing(ckpt: Path, tmp_path: Path) -> None:
    """A .distcp tensor blob replaced by a pickle payload fails weights_only loading."""
    from torch.distributed.checkpoint import FileSystemReader

    marker = tmp_path / "pwned3"
    meta = FileSystemReader(str(ckpt)).read_metadata()
    bad = io.BytesIO()
    torch.save(_Payload(f"touch {marker}"), bad)
    path = ckpt / "__0_0.distcp"
    data = path.read_bytes()
    [(index, info)] = [(i, s) for i, s in meta.storage_data.items() if i.fqn == "w"]
    path.write_bytes(data + bad.getvalue())
    info.offset, info.length = len(data), len(bad.getvalue())
    (ckpt / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match="weights_only"):
        reshard.load({"w": torch.zeros(2, 3)}, ckpt)
    assert not marker.exists()


def test_storage_path_escape_is_refused(ckpt: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt)).read_metadata()
    for info in meta.storage_data.values():
        info.relative_path = "../../etc/passwd"
    (ckpt / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match="refusing data file name"):
        reshard.open(ckpt)


def test_truncated_and_garbage_metadata(ckpt: Path) -> None:
    data = (ckpt / ".metadata").read_bytes()
    for bad in (data[: len(data) // 2], b"", b"not a pickle", pickle.dumps({"a": 1})):
        (ckpt / ".metadata").write_bytes(bad)
        with pytest.raises(CorruptCheckpointError):
            reshard.open(ckpt)


def test_non_plain_value_needs_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "dcp"
    _dcp_save({"w": torch.arange(4), "obj": Custom(5), "step": 2}, path)
    sd: dict[str, Any] = {"w": torch.zeros(4, dtype=torch.int64), "obj": None, "step": 0}
    with pytest.raises(UnsupportedValueError, match="allow_pickle=True"):
        reshard.load(sd, path)
    # Keys that do not need pickle still load when the refused key is not asked for.
    part: dict[str, Any] = {"w": torch.zeros(4, dtype=torch.int64), "step": 0}
    reshard.load(part, path)
    assert part["step"] == 2 and torch.equal(part["w"], torch.arange(4))
    reshard.load(sd, path, allow_pickle=True)
    assert sd["obj"] == Custom(5) and sd["step"] == 2
    with reshard.open(path, allow_pickle=True) as ck:
        assert ck.read("obj") == Custom(5)


def test_corrupt_zstd_tensor_item(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    path = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = FileSystemWriter(str(path), _extensions=[ZStandard()])
        dcp.save({"w": torch.arange(1000)}, storage_writer=writer)
    data = bytearray((path / "__0_0.distcp").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "__0_0.distcp").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="key 'w'"):
        reshard.load({"w": torch.zeros(1000, dtype=torch.int64)}, path)


class _Global:
    """Pickles as a bare reference to ``module.name`` (what find_class is asked for)."""

    def __init__(self, module: str, name: str, args: tuple[Any, ...] = ()) -> None:
        self.module, self.name, self.args = module, name, args

    def __reduce__(self) -> tuple[Any, ...]:
        import importlib

        return (getattr(importlib.import_module(self.module), self.name), self.args)


@pytest.mark.parametrize(
    ("module", "name", "args"),
    [
        ("builtins", "eval", ("1+1",)),
        ("builtins", "getattr", ("x", "upper")),
        ("torch", "load", ("/nonexistent",)),
        ("subprocess", "call", (["true"],)),
        ("torch.serialization", "_get_layout", ("torch.float32",)),
    ],
)
def test_metadata_allowlist_refuses(ckpt: Path, module: str, name: str, args: tuple[Any, ...]) -> None:
    from reshard.interop._dcp_pickle import read_metadata

    with pytest.raises(CorruptCheckpointError, match="refusing to load"):
        read_metadata(pickle.dumps(_Global(module, name, args)), source="x/.metadata")


def test_real_metadata_parses(ckpt: Path) -> None:
    from reshard.interop._dcp_pickle import read_metadata

    tensors, values = read_metadata((ckpt / ".metadata").read_bytes(), source="m")
    assert [t.fqn for t in tensors] == ["w"] and tensors[0].shape == (2, 3)
    assert [v.fqn for v in values] == ["step"]


def test_fuzzed_metadata_raises_only_checkpoint_errors(tmp_path: Path) -> None:
    import random

    path = tmp_path / "dcp"
    _dcp_save({"w": torch.arange(6.0).reshape(2, 3), "v": [1, "a"], "s": torch.tensor(2)}, path)
    good = (path / ".metadata").read_bytes()
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        (path / ".metadata").write_bytes(bytes(data))
        try:
            with reshard.open(path) as ck:
                for key in ck.keys():
                    ck.read(key)
            outcomes["ok"] += 1
        except CheckpointError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100


def test_flipped_tensor_byte_is_detected(tmp_path: Path) -> None:
    """DCP has no checksums of its own; the torch.save archive's CRC-32s catch this."""
    path = tmp_path / "dcp"
    _dcp_save({"w": torch.arange(1000)}, path)
    f = path / "__0_0.distcp"
    data = bytearray(f.read_bytes())
    i = data.find(torch.arange(1000)[500:501].numpy().tobytes())
    data[i] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        reshard.load({"w": torch.zeros(1000, dtype=torch.int64)}, path)


@pytest.mark.parametrize("change", ["length", "offset", "file"])
def test_item_ranges_are_checked_before_reading(ckpt: Path, change: str) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt)).read_metadata()
    for index, info in meta.storage_data.items():
        if index.fqn == "w":
            if change == "length":
                info.length = 2**45
            elif change == "offset":
                info.offset = 2**40
            else:
                info.relative_path = "__9_9.distcp"
    (ckpt / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match="past its end|missing"):
        reshard.open(ckpt)


def test_deeply_nested_value_is_refused_by_key(tmp_path: Path) -> None:
    """A value item whose pickle nests a tuple 50000 deep (unpickling builds it without
    recursing; no torch.save writes one): walking it raised RecursionError out of open,
    load and verify. It is refused by key like any value without a plain form; the other
    keys load and verify checks its bytes."""
    import glob
    import zipfile

    path = tmp_path / "dcp"
    _dcp_save({"v": (1,), "w": torch.arange(3.0)}, path)
    plain = io.BytesIO()
    torch.save((1,), plain)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as zin, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):  # PROTO 2, (), then TUPLE1 50000 times
                data = b"\x80\x02)" + b"\x85" * 50_000 + b"."
            zout.writestr(info.filename, data)
    blob = out.getvalue()
    (data_file,) = glob.glob(str(path / "*.distcp"))
    good = Path(data_file).read_bytes()
    meta = pickle.loads((path / ".metadata").read_bytes())
    (index,) = [i for i in meta.storage_data if i.fqn == "v"]
    meta.storage_data[index].offset = len(good)  # appended after the real items
    meta.storage_data[index].length = len(blob)
    (path / ".metadata").write_bytes(pickle.dumps(meta))
    Path(data_file).write_bytes(good + blob)
    with pytest.raises(UnsupportedValueError, match=r"DCP key 'v': it nests deeper than the 256 levels"):
        reshard.load({"v": None}, path)
    got = {"w": torch.zeros(3)}
    reshard.load(got, path)
    assert torch.equal(got["w"], torch.arange(3.0))
    report = reshard.verify(path)
    assert report.intact and report.chunks == 2, report
