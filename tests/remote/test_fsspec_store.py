"""FsspecStore on fsspec's in-process memory:// filesystem, open_store dispatch, and the
classification of transient errors. Single process, no server."""

from __future__ import annotations

import errno
import pathlib
import re
import sys
import uuid

import numpy as np
import pytest
import torch

import reshard
from reshard.storage import LocalStore, open_store
from reshard.storage.fsspec_store import FsspecStore, is_transient


def _url() -> str:
    return f"memory://reshard-tests/{uuid.uuid4().hex}"


# Dispatch


def test_local_paths_and_file_urls_open_a_local_store(tmp_path: pathlib.Path) -> None:
    for path in (str(tmp_path), tmp_path, f"file://{tmp_path}", f"file:{tmp_path}", f"FILE:{tmp_path}"):
        store = open_store(path)
        assert isinstance(store, LocalStore) and store.location == str(tmp_path)


def test_same_place_compares_folders_not_spellings(tmp_path: pathlib.Path) -> None:
    from reshard.storage.base import same_place

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    same = [(f"{tmp_path}/real", f"{tmp_path}/link/"), (f"file://{tmp_path}/real", f"{tmp_path}/real"),
            (f"file:{tmp_path}/link", f"{tmp_path}/real"), ("memory://a/b", "memory:///a/b/")]
    other = [(f"{tmp_path}/real", f"{tmp_path}/other"), ("memory://a/b", "memory://a/c"),
             ("memory://a/b", f"{tmp_path}/a/b"), ("simplecache::memory://a", "memory://a")]
    assert all(same_place(a, b) for a, b in same), [p for p in same if not same_place(*p)]
    assert not any(same_place(a, b) for a, b in other), [p for p in other if same_place(*p)]


def test_urls_open_an_fsspec_store() -> None:
    url = _url()
    store = open_store(url)
    assert isinstance(store, FsspecStore) and store.location == url


def test_storage_options_for_a_local_path_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(reshard.CheckpointError, match="storage_options.*local path"):
        open_store(tmp_path, {"key": "k"})
    # The typo the check is for: one slash makes it a local path.
    with pytest.raises(reshard.CheckpointError, match="s3:/bucket"):
        reshard.save({"x": torch.zeros(1)}, "s3:/bucket/ckpt", storage_options={"anon": True})


def test_unknown_protocol_names_the_url() -> None:
    with pytest.raises(reshard.CheckpointError, match=r"nosuchproto://b/x.*Protocol not known"):
        open_store("nosuchproto://b/x")


def test_missing_backend_gives_an_install_hint() -> None:
    pytest.importorskip("fsspec")
    if "gcsfs" in sys.modules or _importable("gcsfs"):
        pytest.skip("gcsfs is installed: no missing backend to report")
    with pytest.raises(reshard.CheckpointError, match=r'gs://b/x.*gcsfs.*pip install "reshard\[s3\]"'):
        open_store("gs://b/x")


def test_missing_fsspec_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    with pytest.raises(reshard.CheckpointError, match=r'needs fsspec.*pip install "reshard\[s3\]"'):
        reshard.open("s3://bucket/ckpt")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# Save, load, open on memory://


def test_round_trip_on_memory_fs() -> None:
    url = _url()
    state = {
        "w": torch.arange(2000, dtype=torch.float32).reshape(40, 50),
        "flags": torch.arange(7) % 2 == 0,
        "opt": {"step": 11, "lr": 0.5, "m": np.arange(12, dtype=np.int16).reshape(3, 4)},
    }
    reshard.save(state, url, codec="zstd")
    out = {"w": torch.zeros(40, 50), "flags": torch.zeros(7, dtype=torch.bool),
           "opt": {"step": 0, "lr": 0.0, "m": np.zeros((3, 4), dtype=np.int16)}}
    reshard.load(out, url)
    assert torch.equal(out["w"], state["w"]) and torch.equal(out["flags"], state["flags"])
    assert out["opt"]["step"] == 11 and out["opt"]["lr"] == 0.5
    assert np.array_equal(out["opt"]["m"], state["opt"]["m"])
    with reshard.open(url) as ck:
        assert torch.equal(ck.read("w", (slice(3, 9), 7)), state["w"][3:9, 7])
        assert ck.read("opt.step") == 11


def test_overwrite_commits_the_new_manifest_then_removes_old_data() -> None:
    url = _url()
    store = FsspecStore.from_url(url, {})
    reshard.save({"t": torch.arange(10)}, url)
    first = store.list("data")
    reshard.save({"t": torch.arange(10) * 2}, url)
    second = store.list("data")
    assert len(first) == len(second) == 1 and first != second
    assert store.list("") == ["manifest.json"]
    assert torch.equal(reshard.open(url).read("t"), torch.arange(10) * 2)


def test_missing_checkpoint_on_memory_fs_names_the_url() -> None:
    url = _url()
    with pytest.raises(reshard.CheckpointNotFoundError, match=re.escape(url)):
        reshard.open(url)
    with pytest.raises(FileNotFoundError):  # CheckpointNotFoundError is one
        reshard.load({"x": torch.zeros(1)}, url)


def test_large_files_stream_in_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_UPLOAD_PART_NBYTES", "4096")
    url = _url()
    t = torch.arange(100_000, dtype=torch.int64)
    reshard.save({"t": t, "u": torch.arange(3)}, url)
    assert torch.equal(reshard.open(url).read("t", slice(50_000, 50_100)), t[50_000:50_100])
    out = {"t": torch.zeros_like(t), "u": torch.zeros(3, dtype=torch.int64)}
    reshard.load(out, url)
    assert torch.equal(out["t"], t) and torch.equal(out["u"], torch.arange(3))


def test_writer_checks_size_and_abort_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_UPLOAD_PART_NBYTES", "1024")
    store = FsspecStore.from_url(_url(), {})
    for nbytes in (10, 5000):  # one PUT; streamed parts
        w = store.open_writer(f"data/f{nbytes}")
        w.write(bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256))
        assert w.tell() == nbytes
        w.close()
        assert store.size(f"data/f{nbytes}") == nbytes
    for nbytes in (10, 5000):
        w = store.open_writer(f"data/g{nbytes}")
        w.write(bytes(nbytes))
        w.abort()  # type: ignore[attr-defined]
    assert store.list("data") == ["data/f10", "data/f5000"]
    buf = bytearray(4)
    store.read_into("data/f5000", 256 + 3, memoryview(buf))
    assert bytes(buf) == bytes([3, 4, 5, 6])


def test_truncated_and_missing_data_files_are_corruption() -> None:
    url = _url()
    store = FsspecStore.from_url(url, {})
    store.write_atomic("data/short", b"abc")
    with pytest.raises(reshard.CorruptCheckpointError, match=re.escape(f"{url}/data/short") + ".*truncated"):
        store.read_into("data/short", 1, memoryview(bytearray(10)))
    with pytest.raises(reshard.CorruptCheckpointError, match=re.escape(f"{url}/data/gone") + ".*missing"):
        store.read_into("data/gone", 0, memoryview(bytearray(1)))
    with pytest.raises(reshard.CorruptCheckpointError, match="refusing"):
        store.read_bytes("../escape")


# Transient or not


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("status,code,transient", [
    (503, "SlowDown", True), (503, "ServiceUnavailable", True), (500, "InternalError", True),
    (429, "TooManyRequests", True), (400, "RequestTimeout", True),
    (403, "AccessDenied", False), (404, "NoSuchKey", False), (400, "InvalidArgument", False),
])
def test_client_errors_by_status_and_code(status: int, code: str, transient: bool) -> None:
    pytest.importorskip("botocore")
    error = _client_error(status, code)
    assert is_transient(error) is transient
    # s3fs re-raises a ClientError as an OSError caused by it.
    wrapped = OSError(errno.EIO, "wrapped")
    wrapped.__cause__ = error
    assert is_transient(wrapped) is transient


def test_builtin_errors() -> None:
    assert is_transient(TimeoutError("t"))
    assert is_transient(ConnectionResetError())
    assert is_transient(OSError(errno.EBUSY, "SlowDown as s3fs maps it"))
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(PermissionError("no"))
    assert not is_transient(ValueError("bad"))
    assert not is_transient(OSError(errno.EINVAL, "bad request"))
    # A missing object is final even if the chain holds a timeout from an earlier try.
    missing = FileNotFoundError("gone")
    missing.__context__ = TimeoutError()
    assert not is_transient(missing)
