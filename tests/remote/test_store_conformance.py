"""What every Store must do, run on each implementation: a local directory, fsspec's
memory://, and S3 (moto on loopback)."""

from __future__ import annotations

import pathlib
import uuid

import pytest

import reshard
from reshard.storage import Store, open_store


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "ck")
    if request.param == "memory":
        return open_store(f"memory://conformance/{uuid.uuid4().hex}")
    bucket = request.getfixturevalue("s3_bucket")
    options = request.getfixturevalue("s3_options")
    return open_store(f"s3://{bucket}/ck", options)


def test_write_read_list_delete(store: Store) -> None:
    store.prepare("data")
    payload = bytes(range(256)) * 40
    w = store.open_writer("data/a.bin")
    w.write(payload[:1000])
    w.write(memoryview(payload)[1000:])
    w.close()
    w = store.open_writer("data/b.bin")
    w.write(b"xyz")
    w.close()
    store.sync("data")
    assert store.size("data/a.bin") == len(payload)
    buf = bytearray(300)
    store.read_into("data/a.bin", 5000, memoryview(buf))
    assert bytes(buf) == payload[5000:5300]
    store.read_into("data/b.bin", 0, memoryview(bytearray(0)))  # empty reads are fine
    assert store.list("data") == ["data/a.bin", "data/b.bin"]
    assert store.list("nothing-here") == []
    store.write_atomic("manifest.json", b"{}")
    store.write_atomic("manifest.json", b'{"v": 2}')
    assert store.read_bytes("manifest.json") == b'{"v": 2}'
    assert "manifest.json" in store.list("")
    store.delete("data/b.bin")
    store.delete("data/b.bin")  # deleting what is gone is fine
    assert store.list("data") == ["data/a.bin"]
    store.close()


def test_missing_and_short(store: Store) -> None:
    with pytest.raises(reshard.CheckpointNotFoundError, match="manifest.json"):
        store.read_bytes("manifest.json")
    with pytest.raises(reshard.CheckpointNotFoundError):
        store.size("data/none.bin")
    with pytest.raises(reshard.CorruptCheckpointError, match="none.bin"):
        store.read_into("data/none.bin", 0, memoryview(bytearray(1)))
    store.prepare("data")
    w = store.open_writer("data/short.bin")
    w.write(b"12345")
    w.close()
    with pytest.raises(reshard.CorruptCheckpointError, match="truncated"):
        store.read_into("data/short.bin", 2, memoryview(bytearray(10)))
    for bad in ("../x", "/abs", "a//b", "./a"):
        with pytest.raises(reshard.CorruptCheckpointError, match="refusing"):
            store.read_bytes(bad)
    store.close()
