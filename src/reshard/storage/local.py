"""A checkpoint directory on a local or mounted file system."""

from __future__ import annotations

import os
import threading
import uuid
from typing import BinaryIO

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError


class _DurableFile:
    """A write-only file whose ``close()`` flushes and fsyncs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "wb", buffering=0)  # noqa: SIM115

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += self._f.write(view[done:])
        return done

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            os.fsync(self._f.fileno())
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
    """Files under one directory. Reads use ``pread`` on cached descriptors (thread-safe)."""

    def __init__(self, root: str) -> None:
        self.location = os.path.abspath(root)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise CorruptCheckpointError(f"{self.location}: refusing file name {name!r}")
        return os.path.join(self.location, *parts)

    def prepare(self, folder: str) -> None:
        if os.path.exists(self.location) and not os.path.isdir(self.location):
            raise StorageError(f"cannot save to {self.location}: it is a file, not a directory")
        try:
            os.makedirs(self._path(folder), exist_ok=True)
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
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError as e:
                    raise CorruptCheckpointError(f"data file {path} is missing") from e
                except OSError as e:
                    raise StorageError(f"cannot open {path}: {e}") from e
                self._fds[name] = fd
            return fd

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        fd = self._fd(name)
        view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        done = 0
        while done < len(view):
            try:
                n = os.preadv(fd, [view[done:]], offset + done)
            except OSError as e:
                raise StorageError(f"reading {self._path(name)}: {e}") from e
            if n == 0:
                raise CorruptCheckpointError(
                    f"data file {self._path(name)} is truncated: needed bytes "
                    f"[{offset}, {offset + len(view)}), the file ends at {offset + done}"
                )
            done += n

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(f"{path} does not exist") from e
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e}") from e

    def size(self, name: str) -> int:
        path = self._path(name)
        try:
            return os.stat(path).st_size
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(f"{path} does not exist") from e

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
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
