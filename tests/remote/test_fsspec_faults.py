"""Saves over an fsspec filesystem that fails its n-th call of one kind (memory:// with
injected OSErrors, retries off), for every call a save makes: the save raises a
StorageError naming the URL, or succeeds when the failure came after the commit; either
way the checkpoint at the URL loads whole and exactly (the previous one when the save
raised before its commit). A failed data upload leaves no object of its own behind;
a save whose manifest PUT failed removes its data objects, unless the manifest landed
(a lost reply): then they stay, and the checkpoint they make loads."""

from __future__ import annotations

import uuid
from typing import Any

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

import reshard

PROTOCOL = "faultmem"


class FaultFS(MemoryFileSystem):
    """memory:// whose ``fail_at = (call, n)`` raises on the n-th such call after
    ``counts`` was reset. ``open`` counts only writes; ``write`` is a streamed part."""

    protocol = PROTOCOL
    fail_at: tuple[str, int] | None = None
    counts: dict[str, int] = {}

    def _hit(self, call: str) -> None:
        FaultFS.counts[call] = FaultFS.counts.get(call, 0) + 1
        if FaultFS.fail_at == (call, FaultFS.counts[call]):
            raise OSError(5, f"injected failure of {call} #{FaultFS.counts[call]}")

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kw: Any) -> None:
        self._hit("pipe_file")
        super().pipe_file(path, value, mode=mode, **kw)
        self._hit("pipe_file landed")  # the object is there, the reply is lost

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if "w" not in mode or "data" in kw:  # reads, and pipe_file's own open
            return super()._open(path, mode, **kw)
        self._hit("open")
        f = super()._open(path, mode, **kw)
        write = f.write

        def failing_write(data: Any) -> int:
            self._hit("write")
            return int(write(data))

        f.write = failing_write
        return f

    def info(self, path: str, **kw: Any) -> dict[str, Any]:
        self._hit("info")
        return dict(super().info(path, **kw))

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
        self._hit("ls")
        return super().ls(path, detail=detail, **kw)

    def rm_file(self, path: str) -> None:
        self._hit("rm_file")
        super().rm_file(path)


@pytest.fixture(autouse=True)
def _faultmem(monkeypatch: pytest.MonkeyPatch) -> None:
    fsspec.register_implementation(PROTOCOL, FaultFS, clobber=True)
    monkeypatch.setenv("RESHARD_REMOTE_ATTEMPTS", "1")
    monkeypatch.setenv("RESHARD_UPLOAD_PART_NBYTES", "8192")  # "w" streams in parts
    FaultFS.fail_at, FaultFS.counts = None, {}


def _state(version: int) -> dict[str, Any]:
    noise = torch.rand(4096, generator=torch.Generator().manual_seed(version))  # zstd keeps it large
    return {"w": torch.arange(6000, dtype=torch.float32).reshape(60, 100) + version, "noise": noise,
            "flags": torch.arange(9) % (version + 1) == 0,
            "opt": {"step": version, "m": torch.arange(12, dtype=torch.int8) * version}}


def _load(url: str) -> int:
    """The version of the checkpoint at ``url``, after checking every element."""
    out = {"w": torch.zeros(60, 100), "noise": torch.zeros(4096), "flags": torch.zeros(9, dtype=torch.bool),
           "opt": {"step": -1, "m": torch.zeros(12, dtype=torch.int8)}}
    reshard.load(out, url)
    version = out["opt"]["step"]
    want = _state(version)
    for got, exp in ((out["w"], want["w"]), (out["noise"], want["noise"]), (out["flags"], want["flags"]),
                     (out["opt"]["m"], want["opt"]["m"])):
        assert torch.equal(got, exp), f"{url}: version {version} does not load exactly"
    return int(version)


def _objects(url: str) -> list[str]:
    prefix = url + "/"
    return sorted(k[len(prefix):] for k in FaultFS.store if k.startswith(prefix))


CALLS = ["pipe_file", "open", "write", "info", "ls", "rm_file"]


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_every_failing_call_leaves_a_whole_checkpoint(codec: str | None) -> None:
    outcomes: list[str] = []
    for call in CALLS:
        for n in range(1, 9):
            url = f"{PROTOCOL}://faults/{uuid.uuid4().hex}"
            reshard.save(_state(1), url, codec=codec)
            before = _objects(url)
            FaultFS.fail_at, FaultFS.counts = (call, n), {}
            error: Exception | None = None
            try:
                reshard.save(_state(2), url, codec=codec)
            except Exception as e:  # noqa: BLE001 - checked below
                error = e
            hit = FaultFS.counts.get(call, 0) >= n
            FaultFS.fail_at = None
            version = _load(url)
            where = f"{call} #{n}"
            if not hit:
                assert error is None and version == 2, where
                break  # later calls of this kind are not made
            outcomes.append(f"{where}: {'raised' if error else 'ok'} v{version}")
            if error is None:
                assert version == 2, where
                continue
            assert isinstance(error, reshard.StorageError) and url in str(error), (where, error)
            committed = call in ("pipe_file", "open", "info") and version == 2
            if not committed:
                assert version == 1, where
            if call in ("open", "write") and not committed:
                # An upload that failed removed its own object.
                assert _objects(url) == before, (where, _objects(url), before)
    # Each kind of call failed at least once and some failures were raised.
    assert {o.split(" ")[0] for o in outcomes} == set(CALLS), outcomes
    assert any("raised v1" in o for o in outcomes), outcomes


def test_objects_of_a_save_whose_commit_failed_go_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """They stayed until a save an hour later (young leftovers are kept), holding the
    space the next save needed (a full disk fails the commit just so)."""
    url = f"{PROTOCOL}://faults/{uuid.uuid4().hex}"
    reshard.save(_state(1), url)
    first = _objects(url)
    FaultFS.fail_at, FaultFS.counts = ("pipe_file", 1), {}  # the manifest PUT ("w" is streamed)
    with pytest.raises(reshard.StorageError, match="manifest.json"):
        reshard.save(_state(2), url)
    FaultFS.fail_at = None
    assert _load(url) == 1 and _objects(url) == first
    # The manifest landed and its reply was lost: the save raised, its objects stay, and
    # the checkpoint at the URL is the new one, whole.
    FaultFS.fail_at, FaultFS.counts = ("pipe_file landed", 1), {}
    with pytest.raises(reshard.StorageError, match="manifest.json"):
        reshard.save(_state(2), url)
    FaultFS.fail_at = None
    assert _load(url) == 2
    # Version 1's objects, which that commit did not get to remove, go with a later save
    # once old enough.
    monkeypatch.setenv("RESHARD_LEFTOVER_AGE_S", "0")
    reshard.save(_state(3), url)
    assert _load(url) == 3 and len(_objects(url)) == 2  # manifest + 1 data file
