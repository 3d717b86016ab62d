"""An fsspec backend that fails while it is being set up (its constructor connects, opens
a file, or simply raises) is a CheckpointError naming the URL, from the API and the CLI:
never a traceback of the backend's own exception."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import torch

import reshard
from reshard.cli import main
from reshard.storage import open_store

fsspec = pytest.importorskip("fsspec")
from fsspec.spec import AbstractFileSystem  # noqa: E402


class _RefusingFS(AbstractFileSystem):
    """Connects in its constructor, as ftp:// and sftp:// do, and is refused."""

    protocol = "reshardtestrefused"
    cachable = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


class _BrokenFS(AbstractFileSystem):
    protocol = "reshardtestbroken"
    cachable = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("backend exploded while starting")


@pytest.fixture(autouse=True, scope="module")
def _registered() -> None:
    fsspec.register_implementation(_RefusingFS.protocol, _RefusingFS, clobber=True)
    fsspec.register_implementation(_BrokenFS.protocol, _BrokenFS, clobber=True)


@pytest.mark.parametrize(("url", "words"), [
    ("reshardtestrefused://host/ckpt", "Connection refused"),
    ("reshardtestbroken://host/ckpt", "backend exploded"),
])
def test_failing_backend_constructor(url: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(reshard.CheckpointError, match=f"{url}.*{words}"):
        open_store(url)
    with pytest.raises(reshard.CheckpointError, match=url):
        reshard.open(url)
    with pytest.raises(reshard.CheckpointError, match=url):
        reshard.load({"x": None}, url)
    with pytest.raises(reshard.CheckpointError, match=url):
        reshard.save({"x": 1}, url)
    with pytest.raises(reshard.CheckpointError, match=url):
        reshard.verify(url)
    for command in ("inspect", "verify"):
        capsys.readouterr()
        assert main([command, url]) == 1
        captured = capsys.readouterr()
        text = captured.err + captured.out
        assert url in text and words in text and "Traceback" not in text


def test_a_filesystem_with_real_folders_names_the_fix(tmp_path: Any) -> None:
    """sftp/hdfs-like filesystems do not create folders with files: the save fails with a
    StorageError that names the URL and says how to make the folders."""
    from tests.helpers import sharedfs

    sharedfs.register()
    path = sharedfs.url(str(tmp_path / "ckpt"))
    with pytest.raises(reshard.StorageError, match="auto_mkdir") as e:
        reshard.save({"w": torch.ones(3)}, path, storage_options={"auto_mkdir": False})
    assert "ckpt" in str(e.value)
    (tmp_path / "ckpt" / "data").mkdir(parents=True)  # as the message says
    reshard.save({"w": torch.ones(3)}, path, storage_options={"auto_mkdir": False})
    loaded = {"w": torch.zeros(3)}
    reshard.load(loaded, path, storage_options={"auto_mkdir": False})
    assert torch.equal(loaded["w"], torch.ones(3))
