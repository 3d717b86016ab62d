"""A real full disk and a real read-only file system (a small tmpfs, mounted as root).

A save that does not fit raises a StorageError naming the file and ENOSPC on every rank,
from save, save with zstd and async_save, whether the data or only the manifest does not
fit; the earlier checkpoint loads intact, the failed save leaves no file behind (it
would hold the space the next save needs: young leftovers stay an hour), and a save
after space is freed succeeds. ``reshard convert`` into a full disk leaves no DST. A
read-only mount refuses saves on every rank, by path, and loads.

Skipped where tmpfs cannot be mounted (not root, or a container that forbids it).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from tests.helpers.world import run_world

from ._state import blank_state, leftovers, load_version, make_state

MIB = 1 << 20


def _mount(where: Path, size: str) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs mounts need Linux")
    where.mkdir(exist_ok=True)
    try:
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot run mount: {e}")
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root, and a container that allows it): "
                    f"{run.stderr.strip()}")


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "disk"
    _mount(where, "4m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=30)


def _free(where: str | Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def _random(n: int, seed: int) -> torch.Tensor:
    """Values zstd cannot shrink much: a save of them needs about their size."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _too_big(seed: int) -> dict[str, Any]:
    state = make_state(2)
    state["big"] = _random(2 * MIB, seed)  # 8 MiB on a 4 MiB disk
    return state


def _fill_to(where: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the disk."""
    filler = where / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, _free(where) - leave))
    return filler


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_save_into_a_full_disk(small_disk: Path) -> None:
    path = small_disk / "ckpt"
    reshard.save(make_state(1), path)
    files, free = _files(path), _free(small_disk)
    saves = {
        "save": lambda s: reshard.save(s, path),
        "save zstd": lambda s: reshard.save(s, path, codec="zstd"),
        "async_save": lambda s: reshard.async_save(s, path).result(),
        "async_save zstd": lambda s: reshard.async_save(s, path, codec="zstd").result(),
    }
    for i, (name, save) in enumerate(saves.items()):
        with pytest.raises(reshard.StorageError) as info:
            save(_too_big(i))
        # Was "CheckpointError: rank 0: OSError: [Errno 28] No space left on device".
        message = str(info.value)
        assert f"cannot write {path}{os.sep}data{os.sep}" in message, (name, message)
        assert os.strerror(errno.ENOSPC) in message, (name, message)
        assert load_version(path) == 1, name
        assert _files(path) == files, name  # the partial data file is gone
        assert _free(small_disk) == free, name

    # The data fits, the manifest does not: the commit fails, and the data file written
    # for it went with it (it stayed, young leftovers are kept for an hour).
    many = {f"k{i:04d}": torch.full((4,), i) for i in range(3000)}
    data_nbytes = 3000 * 4 * 8
    filler = _fill_to(small_disk, data_nbytes + 64 * 1024)
    with pytest.raises(reshard.StorageError, match=rf"cannot commit {path}{os.sep}manifest\.json: "
                                                   rf".*{os.strerror(errno.ENOSPC)}"):
        reshard.save(many, path)
    assert load_version(path) == 1
    assert _files(path) == files

    os.unlink(filler)  # space freed: the next save succeeds and takes the old one's place
    state = _too_big(9)
    state["big"] = state["big"][: MIB // 2]
    reshard.save(state, path)
    sd = blank_state()
    sd["big"] = torch.zeros(MIB // 2)
    reshard.load(sd, path)
    assert torch.equal(sd["big"], state["big"]) and torch.equal(sd["w"], state["w"])
    assert not leftovers(path)
    assert reshard.verify(path).ok


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_convert_into_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    from reshard.cli import main

    src = tmp_path / "src"
    reshard.save({f"k{i}": _random(MIB // 4, i) for i in range(6)}, src)  # 6 MiB
    (small_disk / "empty").mkdir()
    before = _tree(small_disk)
    outputs = [
        [str(small_disk / "dst")],
        [str(small_disk / "dstz"), "--codec", "zstd"],
        [str(small_disk / "empty")],
        [str(small_disk / "m.safetensors")],
        [str(small_disk / "one"), "--to", "safetensors"],
        # Shard 3 of 6 does not fit: shards 1 and 2 stayed, and read as a model of two
        # tensors (convert takes a folder of safetensors files), and the next run refused
        # them as an earlier conversion's.
        [str(small_disk / "shards"), "--to", "safetensors", "--max-shard-size", "1MiB"],
        [str(small_disk / "empty"), "--to", "safetensors", "--max-shard-size", "1MiB"],
    ]
    for args in outputs:
        assert main(["convert", str(src), *args, "--quiet"]) == 1, args
        assert _tree(small_disk) == before, args
    # After freeing space (a smaller source), the same commands succeed.
    small = tmp_path / "small"
    reshard.save({f"k{i}": _random(1024, i) for i in range(6)}, small)
    for args in outputs:
        assert main(["convert", str(small), *args, "--quiet"]) == 0, args
    out = {f"k{i}": torch.zeros(1024) for i in range(6)}
    reshard.load(out, small_disk / "dstz")
    assert all(torch.equal(out[f"k{i}"], _random(1024, i)) for i in range(6))


def test_read_only_mount(small_disk: Path) -> None:
    path = small_disk / "ckpt"
    reshard.save(make_state(1), path)
    _remount(small_disk, "ro")
    try:
        for save in (lambda: reshard.save(make_state(2), path),
                     lambda: reshard.save(make_state(2), path, codec="zstd"),
                     lambda: reshard.async_save(make_state(2), path).result(),
                     lambda: reshard.save(make_state(2), small_disk / "new")):
            with pytest.raises(reshard.StorageError, match=os.strerror(errno.EROFS)) as info:
                save()
            assert str(small_disk) in str(info.value)
        assert load_version(path) == 1
        with reshard.open(path) as ck:
            assert torch.equal(ck.read("w"), make_state(1)["w"])
        assert reshard.verify(path).ok
        from reshard.cli import main
        from reshard.interop.convert import convert

        for dst in ("out", "out.safetensors", "a/b", "shards"):
            with pytest.raises(reshard.StorageError, match=os.strerror(errno.EROFS)) as info:
                convert(str(path), str(small_disk / dst), max_shard_nbytes=1000 if dst == "shards" else None)
            assert str(small_disk / dst) in str(info.value)
        assert main(["convert", str(path), str(small_disk / "o"), "--quiet"]) == 1
        assert main(["convert", str(path), str(small_disk.parent / "copy"), "--quiet"]) == 0
        assert _tree(small_disk) == ["ckpt", *sorted(f"ckpt{os.sep}{f}" for f in _files(path))]
    finally:
        _remount(small_disk, "rw")
    reshard.save(make_state(3), path)
    assert load_version(path) == 3 and not leftovers(path)


def _world(rank: int, world_size: int, disk: str) -> list[str]:
    """Every scenario in one world; returns the problems this rank saw, and each error
    text by scenario (the ranks must agree)."""
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ["RESHARD_FRAME_RAW_NBYTES"] = "4096"
    mesh = init_device_mesh("cpu", (world_size,))
    problems: list[str] = []
    seen: list[str] = []
    path = os.path.join(disk, "ckpt")

    def big(seed: int, share: int) -> dict[str, Any]:
        state = make_state(2)
        # Sharded: each rank writes its own 8 MiB share on a 4 MiB disk.
        state["big"] = distribute_tensor(_random(share * world_size, seed), mesh, [Shard(0)])
        return state

    def expect_failure(name: str, call: Any, *needles: str) -> None:
        try:
            call()
            problems.append(f"{name}: rank {rank}: no error")
        except reshard.CheckpointError as e:
            seen.append(f"{name}: {type(e).__name__}: {e}")
            if not isinstance(e, reshard.StorageError) or not all(n in str(e) for n in needles):
                problems.append(f"{name}: rank {rank}: {type(e).__name__}: {e}")
        except BaseException as e:  # noqa: BLE001 - a non-CheckpointError is the failure
            problems.append(f"{name}: rank {rank}: {type(e).__name__}: {e}")

    reshard.save(make_state(1), path)
    torch.distributed.barrier()
    files, free = _files(Path(path)), _free(disk)
    enospc = os.strerror(errno.ENOSPC)
    cases = [
        ("save", lambda: reshard.save(big(0, 2 * MIB), path)),
        ("save zstd", lambda: reshard.save(big(1, 2 * MIB), path, codec="zstd")),
        ("async_save", lambda: reshard.async_save(big(2, 2 * MIB), path).result()),
        # Only rank 1's share does not fit (rank 0's is small).
        # Only rank 1 holds a large tensor (a key of its own): rank 0's file fits.
        ("save, rank 1 full", lambda: reshard.save(
            {"x": torch.ones(4), **({"big": _random(2 * MIB, 3)} if rank == 1 else {})}, path)),
    ]
    for name, call in cases:
        expect_failure(name, call, f"cannot write {path}{os.sep}data{os.sep}", enospc)
        if load_version(path) != 1:
            problems.append(f"{name}: rank {rank}: the earlier checkpoint does not load")
        torch.distributed.barrier()
        if _files(Path(path)) != files or _free(disk) != free:
            problems.append(f"{name}: rank {rank}: files left: {_files(Path(path))}, "
                            f"free {_free(disk)} of {free}")
        torch.distributed.barrier()

    # The manifest does not fit: both ranks' data files go.
    if rank == 0:
        _fill_to(Path(disk), 3000 * 32 + 64 * 1024)
    torch.distributed.barrier()
    many = {f"k{i:04d}": torch.full((4,), i) for i in range(3000)}
    expect_failure("commit", lambda: reshard.save(many, path), "manifest.json", enospc)
    torch.distributed.barrier()
    if _files(Path(path)) != files:
        problems.append(f"commit: rank {rank}: files left: {_files(Path(path))}")
    if load_version(path) != 1:
        problems.append(f"commit: rank {rank}: the earlier checkpoint does not load")
    torch.distributed.barrier()
    if rank == 0:
        os.unlink(os.path.join(disk, "filler"))
    torch.distributed.barrier()
    reshard.save(make_state(3), path)  # space freed
    if load_version(path) != 3:
        problems.append(f"rank {rank}: the save after freeing space does not load")

    # Read-only: every rank refuses by path; loads work.
    torch.distributed.barrier()
    if rank == 0:
        _remount(Path(disk), "ro")
    torch.distributed.barrier()
    try:
        erofs = os.strerror(errno.EROFS)
        expect_failure("read-only save", lambda: reshard.save(make_state(4), path), path, erofs)
        expect_failure("read-only async_save",
                       lambda: reshard.async_save(make_state(4), path).result(), path, erofs)
        if load_version(path) != 3:
            problems.append(f"read-only: rank {rank}: the checkpoint does not load")
        torch.distributed.barrier()
    finally:
        if rank == 0:
            _remount(Path(disk), "rw")
    torch.distributed.barrier()
    return problems + ["SEEN " + s for s in seen]


@pytest.mark.dist
def test_full_and_read_only_disk_in_a_world_of_two(small_disk: Path) -> None:
    results = run_world(_world, 2, str(small_disk), timeout_s=240)
    problems = [p for r in results for p in r if not p.startswith("SEEN ")]
    assert not problems, "\n".join(problems)
    seen = [[p for p in r if p.startswith("SEEN ")] for r in results]
    assert seen[0] == seen[1], seen  # the same error on every rank
    assert len(seen[0]) == 7


def test_a_commit_that_raised_after_its_rename_keeps_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files of a save whose commit raised are removed only when the manifest there
    is seen not to name it: a write_atomic that failed after its rename (the folder's
    fsync) committed, and when the manifest cannot even be read back, nothing goes."""
    from reshard.storage.local import LocalStore

    path = tmp_path / "ckpt"
    reshard.save(make_state(1), path)
    real_write, real_read = LocalStore.write_atomic, LocalStore.read_bytes
    unreadable = {"on": False}

    def landed_then_failed(self: LocalStore, name: str, data: bytes) -> None:
        real_write(self, name, data)
        unreadable["on"] = True
        raise reshard.StorageError(f"cannot commit {name}: injected: fsync of the folder failed")

    def read_bytes(self: LocalStore, name: str) -> bytes:
        if unreadable["on"] and name == "manifest.json":
            raise reshard.StorageError(f"cannot read {name}: injected")
        return real_read(self, name)

    monkeypatch.setattr(LocalStore, "write_atomic", landed_then_failed)
    # Twice each: the new manifest is often as long as the one it replaced, and read
    # through the descriptor cached before the commit, it looked like the old one (its
    # files were then removed from under the committed manifest).
    for cannot_read in (False, False, True, True):
        monkeypatch.setattr(LocalStore, "read_bytes", read_bytes if cannot_read else real_read)
        unreadable["on"] = False
        with pytest.raises(reshard.StorageError, match="injected: fsync"):
            reshard.save(make_state(2 + cannot_read), path)
        unreadable["on"] = False
        assert load_version(path) == 2 + cannot_read  # committed, and whole
