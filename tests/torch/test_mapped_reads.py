"""Mapped reads of local data files (LocalStore.view) and the bytes a load reports."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

import reshard
from reshard.errors import CorruptCheckpointError
from reshard.storage.local import LocalStore


def _file(tmp_path: Any, data: bytes, name: str = "data.bin") -> LocalStore:
    (tmp_path / name).write_bytes(data)
    return LocalStore(str(tmp_path))


def test_view_is_the_file_bytes_and_is_counted(tmp_path: Any) -> None:
    data = bytes(range(256)) * 64
    store = _file(tmp_path, data)
    try:
        view = store.view("data.bin", 1000, 3000)
        assert view is not None and bytes(view) == data[1000:4000]
        assert store.read_bytes("data.bin") == data
        assert (store.bytes_read, store.bytes_mapped) == (3000 + len(data), 3000)
        assert store.view("data.bin", 5, 0) is None  # nothing to map
    finally:
        store.close()


def test_view_past_the_end_names_the_file(tmp_path: Any) -> None:
    store = _file(tmp_path, b"x" * 100)
    (tmp_path / "empty.bin").write_bytes(b"")
    try:
        with pytest.raises(CorruptCheckpointError, match=r"data\.bin is truncated.*ends at 100"):
            store.view("data.bin", 90, 20)
        with pytest.raises(CorruptCheckpointError, match=r"empty\.bin is truncated"):
            store.view("empty.bin", 0, 1)
    finally:
        store.close()


def test_view_after_let_go_and_close_still_reads_the_file(tmp_path: Any) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    data = os.urandom(8 * page)
    store = _file(tmp_path, data)
    view = store.view("data.bin", 10, 6 * page)
    assert view is not None
    store.let_go("data.bin", 10, 6 * page)  # pages dropped from this process, not lost
    assert bytes(view) == data[10:10 + 6 * page]
    view[0] = (view[0] + 1) % 256  # private mapping: the file never changes
    store.close()  # a view still held: the mapping goes when it does
    assert bytes(view[1:]) == data[11:10 + 6 * page]
    assert (tmp_path / "data.bin").read_bytes() == data


def test_map_reads_off(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_MAP_READS", "0")
    store = _file(tmp_path, b"abc")
    assert store.view("data.bin", 0, 3) is None
    store.close()
    monkeypatch.setenv("RESHARD_MAP_READS", "yes")
    with pytest.raises(ValueError, match="RESHARD_MAP_READS"):
        LocalStore(str(tmp_path))


@pytest.mark.parametrize("codec", ["identity", "zstd"])
@pytest.mark.parametrize("mapped", ["1", "0"])
def test_loads_and_cuts_report_bytes(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                     codec: str, mapped: str) -> None:
    monkeypatch.setenv("RESHARD_MAP_READS", mapped)
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", "4000")  # not a multiple of a row
    full = torch.arange(512 * 300, dtype=torch.float32).reshape(512, 300)
    path = str(tmp_path / "ck")
    reshard.save({"w": full, "b": torch.arange(10)}, path, codec=codec)
    host = torch.zeros(512, 400)
    b = torch.zeros(10, dtype=torch.int64)
    stats = reshard.load({"w": host[:, 50:350], "b": b}, path)  # non-contiguous: staged
    assert torch.equal(host[:, 50:350], full) and torch.equal(b, torch.arange(10))
    assert torch.count_nonzero(host[:, :50]) == 0 and torch.count_nonzero(host[:, 350:]) == 0
    assert isinstance(stats, reshard.LoadStats)
    assert stats.bytes_read >= (full.nbytes if codec == "identity" else 1)
    assert (stats.bytes_mapped > 0) == (mapped == "1")
    assert stats.bytes_mapped <= stats.bytes_read
    # A column cut of row-major chunks: every frame checksummed whole, then cut.
    ck = reshard.open(path)
    try:
        assert torch.equal(ck.read("w", (slice(None), slice(120, 170))), full[:, 120:170])
        assert torch.equal(ck.read("w", (slice(7, 9), 3)), full[7:9, 3])
    finally:
        ck.close()
