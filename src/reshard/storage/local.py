"""A checkpoint directory on a local or mounted file system."""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
import sys
import threading
import uuid
from typing import Any, BinaryIO

from .. import config
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError


class _DurableFile:
    """A write-only file whose ``close()`` flushes and fsyncs.

    Every ``config.writeback_nbytes()`` written, the new dirty pages are queued for
    writing (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait): the
    disk then writes while the caller encodes and writes the rest, and the final fsync
    only waits for the tail. Without it nothing reaches the disk until the fsync, which
    then takes as long as writing the whole file. Durability rests on that fsync alone.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "wb", buffering=0)  # noqa: SIM115
        self._written = 0
        self._queued = 0
        self._writeback = config.writeback_nbytes() if _SYNC_FILE_RANGE is not None else 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self._f.write(view[done:])
        except OSError as e:
            # A bare "OSError: [Errno 28] No space left on device" named no file or disk.
            raise StorageError(f"cannot write {self.path}: {e}") from e
        self._written += done
        if self._writeback and self._written - self._queued >= self._writeback:
            _writeback(self._f.fileno(), self._queued, self._written - self._queued)
            self._queued = self._written
        return done

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            os.fsync(self._f.fileno())
        except OSError as e:  # a disk that fills up or fails on flushing (delayed allocation)
            raise StorageError(f"cannot write {self.path} to disk (fsync): {e}") from e
        finally:
            self._f.close()

    def abort(self) -> None:
        self._f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> _DurableFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStore:
    """Files under one directory. Reads use ``pread`` on cached descriptors (thread-safe);
    ``view`` maps a data file once and hands out slices of the mapping.

    Names never leave the directory: ``..``, absolute names, and symlinks (of a file or of
    a folder such as ``data/``) that resolve outside the checkpoint's real path are refused,
    for reads, writes and deletes alike. The root itself may be a symlink (``latest ->
    step-1000``). Only regular files are read, so a FIFO or device cannot block or flood a load.
    """

    def __init__(self, root: str) -> None:
        self.location = os.path.abspath(root)
        self.bytes_read = 0  # by this store: manifest and data, read or mapped
        self.bytes_mapped = 0  # of which through ``view``
        self._fds: dict[str, int] = {}
        self._maps: dict[str, tuple[mmap.mmap, memoryview]] = {}
        self._map_reads = config.map_reads()
        self._lock = threading.Lock()

    def _count(self, nbytes: int, *, mapped: bool = False) -> None:
        with self._lock:
            self.bytes_read += nbytes
            if mapped:
                self.bytes_mapped += nbytes

    def _path(self, name: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise CorruptCheckpointError(f"{self.location}: refusing file name {name!r}")
        path = os.path.join(self.location, *parts)
        root = os.path.realpath(self.location)
        real = os.path.realpath(path)
        if real != root and not real.startswith(root + os.sep):
            raise CorruptCheckpointError(
                f"{self.location}: refusing {name!r}: it resolves to {real}, outside the checkpoint"
            )
        return path

    def prepare(self, folder: str) -> None:
        if os.path.exists(self.location) and not os.path.isdir(self.location):
            raise StorageError(f"cannot save to {self.location}: it is a file, not a directory")
        path = os.path.join(self.location, folder)
        # A save deletes every file in the folder that the new manifest does not name: a
        # folder that is a symlink to somewhere else would have that place emptied.
        if os.path.islink(path) or (
            os.path.exists(path)
            and os.path.dirname(os.path.realpath(path)) != os.path.realpath(self.location)
        ):
            raise StorageError(
                f"cannot save to {self.location}: {path} is a symlink; it must be a plain folder "
                "inside the checkpoint (a save removes every file there that it did not write)"
            )
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create checkpoint directory {self.location}: {e}") from e

    def sync(self, folder: str) -> None:
        # New files' directory entries are durable only once their folder is fsynced.
        try:
            _fsync_dir(self._path(folder))
        except OSError as e:
            raise StorageError(f"cannot sync {self._path(folder)}: {e}") from e

    def open_writer(self, name: str) -> BinaryIO:
        path = self._path(name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return _DurableFile(path)  # type: ignore[return-value]
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e}") from e

    def _fd(self, name: str) -> int:
        with self._lock:
            fd = self._fds.get(name)
            if fd is None:
                path = self._path(name)
                fd = _open_regular(path, missing=CorruptCheckpointError)
                self._fds[name] = fd
            return fd

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        fd = self._fd(name)
        view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        done = 0
        while done < len(view):
            try:
                n = os.preadv(fd, [view[done:]], offset + done)
            except OverflowError as e:
                raise CorruptCheckpointError(
                    f"data file {self._path(name)}: offset {offset} is out of range"
                ) from e
            except OSError as e:
                raise StorageError(f"reading {self._path(name)}: {e}") from e
            if n == 0:
                raise CorruptCheckpointError(
                    f"data file {self._path(name)} is truncated: needed bytes "
                    f"[{offset}, {offset + len(view)}), the file ends at {offset + done}"
                )
            done += n
        self._count(done)

    @property
    def maps(self) -> bool:
        return self._map_reads

    def view(self, name: str, offset: int, nbytes: int, *, counted: int | None = None) -> memoryview | None:
        """Bytes ``[offset, offset + nbytes)`` of ``name`` without a copy, or None when
        mapped reads are off (``RESHARD_MAP_READS=0``) or there is nothing to map.
        ``counted``: the bytes of it the caller touches (column reads take part of each
        row), counted as read instead of ``nbytes``.

        A piece that is checksummed and then cut (a column of row-major frames) or
        decoded used to be read into a buffer first: a copy of every byte at memory
        speed, which was half the time of a resharded load from the page cache. The
        mapping is private (copy-on-write): the view is writable for torch, and no
        write ever reaches the file. A file truncated by another process while it is
        mapped makes its pages unreadable (SIGBUS); checkpoint files are never
        rewritten in place, and ``RESHARD_MAP_READS=0`` avoids mappings altogether.
        """
        if not self._map_reads or nbytes <= 0:
            return None
        whole = self._mapped(name)
        if offset < 0 or offset + nbytes > len(whole):
            raise CorruptCheckpointError(
                f"data file {self._path(name)} is truncated: needed bytes "
                f"[{offset}, {offset + nbytes}), the file ends at {len(whole)}"
            )
        self._count(nbytes if counted is None else counted, mapped=True)
        return whole[offset:offset + nbytes]

    def let_go(self, name: str, offset: int, nbytes: int) -> None:
        """Unmap the whole pages of a view that is done with (they stay in the page cache).

        Without this every mapped page a load touched stayed in the process's resident
        set until the end of the load: up to the size of the files read.
        """
        with self._lock:
            hit = self._maps.get(name)
        if hit is None:
            return
        lo = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        hi = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            # A private mapping that was never written: the pages drop back to the file's.
            hit[0].madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def _mapped(self, name: str) -> memoryview:
        with self._lock:
            hit = self._maps.get(name)
        if hit is not None:
            return hit[1]
        fd = self._fd(name)
        try:
            size = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else None
        except OSError as e:
            raise StorageError(f"cannot map {self._path(name)}: {e}") from e
        if mapping is None:
            return memoryview(b"")
        with self._lock:
            hit = self._maps.setdefault(name, (mapping, memoryview(mapping)))
        if hit[0] is not mapping:
            mapping.close()  # another thread mapped it first
        return hit[1]

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        fd = _open_regular(path, missing=CheckpointNotFoundError)
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e}") from e
        self._count(len(data))
        return data

    def size(self, name: str) -> int:
        path = self._path(name)
        try:
            return os.stat(path).st_size
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(f"{path} does not exist") from e
        except OSError as e:  # a file where a folder should be, a folder it may not enter
            raise StorageError(f"cannot stat {path}: {e}") from e

    def write_atomic(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path))
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageError(f"cannot commit {path}: {e}") from e

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix) if prefix else self.location
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as e:  # data/ replaced by a file, a folder it may not read
            raise StorageError(f"cannot list {folder}: {e}") from e
        return [f"{prefix}/{n}" if prefix else n for n in sorted(names)]

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {self._path(name)}: {e}") from e

    def close(self) -> None:
        with self._lock:
            for mapping, whole in self._maps.values():
                try:
                    whole.release()
                    mapping.close()
                except BufferError:
                    pass  # a view is still referenced: unmapped when the last one goes
            self._maps.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _open_regular(path: str, *, missing: type[Exception]) -> int:
    """A read-only descriptor of the regular file at ``path``.

    O_NONBLOCK keeps a FIFO planted in a checkpoint from blocking the open; it has no
    effect on regular files.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise missing(f"{path} does not exist") from e
    except OSError as e:
        raise StorageError(f"cannot open {path}: {e}") from e
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot stat {path}: {e}") from e
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CorruptCheckpointError(f"{path} is not a regular file")
    return fd


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages; do not wait


def _writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to disk, without waiting. A hint
    only: its errors are left to the fsync that ends the file."""
    _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
