"""A checkpoint directory in an fsspec filesystem: object stores (s3://, gs://, az://), memory://.

The commit rule on an object store. A checkpoint is its manifest object: loaders find
data only through the manifest, never by listing. Every rank closes its data object and
checks the stored size before reporting success; the coordinator PUTs the manifest only
after every rank reported, as a single whole-object PUT, which S3-protocol stores apply
atomically and with read-after-write consistency. So a listing may show data objects of
a save still in progress (or of one that died), but never a manifest that names an
incomplete object: a half-written checkpoint never looks complete. Old data objects are
deleted only after the new manifest is committed (save.py).

Requests that fail with a transient error (timeouts, dropped connections, HTTP 5xx,
throttling) are retried a bounded number of times with jittered exponential backoff
(``RESHARD_REMOTE_ATTEMPTS``, ``RESHARD_REMOTE_BACKOFF_S``); any other failure, or the
last transient one, becomes a StorageError naming the URL. Files larger than one upload
part stream through the filesystem's multipart writer, whose parts the client library
retries itself (s3fs and botocore do); a failure it gives up on fails the save, which
is safe since nothing is committed.
"""

from __future__ import annotations

import builtins
import errno
import posixpath
import random
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from .. import config
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, StorageError

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestTimeout",
    "RequestTimeoutException", "ServiceUnavailable", "InternalError", "InternalFailure",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "503", "500", "502", "504",
})
# s3fs maps SlowDown/503 to EBUSY and InternalError/500 to EREMOTEIO.
_TRANSIENT_ERRNOS = frozenset(
    e for e in (errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                errno.EPIPE, getattr(errno, "EREMOTEIO", None)) if e is not None
)
# Transport failures of the usual clients (botocore, aiohttp, urllib3, http.client, fsspec).
_TRANSIENT_NAMES = frozenset({
    "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "ServerDisconnectedError", "ClientConnectorError", "ClientOSError", "ClientPayloadError",
    "IncompleteRead", "ResponseStreamingError", "FSTimeoutError", "ProtocolError",
    "RemoteDisconnected",
})
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              FileExistsError)
_MAX_BACKOFF_S = 10.0


def is_transient(error: BaseException) -> bool:
    """Whether retrying the request that raised ``error`` may succeed."""
    if isinstance(error, _PERMANENT):
        return False
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _is_transient_one(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _is_transient_one(e: BaseException) -> bool:
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(e).__mro__):
        return True
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
            return True
    for attr in ("status", "status_code", "code"):
        value = getattr(e, attr, None)
        if isinstance(value, int) and value in _TRANSIENT_STATUS:
            return True
    return False


def _is_range_error(error: BaseException) -> bool:
    """Whether ``error`` says the requested byte range starts past the end (HTTP 416)."""
    if isinstance(error, _PERMANENT):
        return False
    e: BaseException | None = error
    for _ in range(8):
        if e is None:
            break
        response = getattr(e, "response", None)
        if isinstance(response, dict) and (
            response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416
            or response.get("Error", {}).get("Code") == "InvalidRange"
        ):
            return True
        if any(getattr(e, attr, None) == 416 for attr in ("status", "status_code", "code")):
            return True
        if "InvalidRange" in str(e) or "Range Not Satisfiable" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _backoff_s(attempt: int) -> float:
    delay = min(_MAX_BACKOFF_S, config.remote_backoff_s() * (2.0 ** attempt))
    return delay * (0.5 + random.random() / 2)


def _describe(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}"


class FsspecStore:
    """Objects under one prefix of an fsspec filesystem; safe to use from many threads."""

    remote = True  # bytes read are requests: loads share column-cut frames (exchange.py)

    def __init__(self, url: str, fs: Any, root: str) -> None:
        self.location = url.rstrip("/")
        self.fs = fs
        self._root = root.rstrip("/")
        # Every request costs a round trip: transfer/read.py fetches pieces this close together
        # in one ranged request.
        self.coalesce_gap_nbytes = config.remote_coalesce_gap_nbytes()
        self.bytes_read = 0  # by this store: manifest and data
        self._count_lock = threading.Lock()

    def _count(self, nbytes: int) -> None:
        with self._count_lock:
            self.bytes_read += nbytes

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any]) -> FsspecStore:
        """Resolve ``url`` with fsspec; a missing fsspec or backend raises with an install hint."""
        try:
            import fsspec.core
        except ImportError:
            raise CheckpointError(
                f"cannot open {url}: remote storage needs fsspec (and s3fs for s3://); "
                'install them with: pip install "reshard[s3]"'
            ) from None
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as e:
            raise CheckpointError(
                f"cannot open {url}: {e}; for s3:// install the extra with: "
                'pip install "reshard[s3]"'
            ) from None
        except ValueError as e:
            raise CheckpointError(f"cannot open {url}: {e}") from None
        except TypeError as e:
            raise CheckpointError(f"cannot open {url}: bad storage_options: {e}") from None
        except Exception as e:  # noqa: BLE001 - a backend's constructor may connect (ftp, sftp) or open files
            raise StorageError(f"cannot open {url}: {_describe(e)}") from e
        return cls(url, fs, root)

    # Names

    def _path(self, name: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise CorruptCheckpointError(f"{self.location}: refusing file name {name!r}")
        return f"{self._root}/{name}"

    def _url(self, name: str) -> str:
        return f"{self.location}/{name}" if name else self.location

    def call(
        self, what: str, name: str, fn: Callable[[], T],
        on_missing: Callable[[], T] | None = None,
    ) -> T:
        """``fn()``, retrying transient errors; other errors become StorageError naming the URL."""
        attempts = config.remote_attempts()
        for attempt in range(attempts):
            try:
                return fn()
            except CheckpointError:
                raise
            except FileNotFoundError as e:
                if on_missing is None:
                    # Object stores create folders with their objects; sftp, hdfs and
                    # the like do not, and creating them here could create a bucket.
                    hint = (" (on a filesystem with real folders, create the checkpoint's "
                            "folder and its data/ first, or pass storage_options="
                            "{'auto_mkdir': True} where the filesystem supports it)"
                            if what == "write" else "")
                    raise StorageError(
                        f"cannot {what} {self._url(name)}: {_describe(e)}{hint}") from e
                return on_missing()
            except Exception as e:  # noqa: BLE001 - classified, then retried or wrapped
                if attempt + 1 < attempts and is_transient(e):
                    time.sleep(_backoff_s(attempt))
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise StorageError(
                    f"cannot {what} {self._url(name)}{tries}: {_describe(e)}"
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    # Store protocol

    def prepare(self, folder: str) -> None:
        # Object stores have no folders to create: a key prefix exists once an object does.
        self._path(folder)

    def sync(self, folder: str) -> None:
        # Every data object was completed and size-checked by its writer's close().
        self._path(folder)

    def open_writer(self, name: str) -> BinaryIO:
        return _ObjectWriter(self, name)  # type: ignore[return-value]

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        n = len(view)
        if n == 0:
            return
        path = self._path(name)

        def missing() -> bytes:
            raise CorruptCheckpointError(f"data file {self._url(name)} is missing")

        def fetch() -> bytes:
            try:
                return bytes(self.fs.cat_file(path, start=offset, end=offset + n))
            except Exception as e:
                if not is_transient(e) and _is_range_error(e):
                    return b""  # a range past the end: reported as truncation below
                raise

        data = self.call("read", name, fetch, on_missing=missing)
        if len(data) != n:
            raise CorruptCheckpointError(
                f"data file {self._url(name)} is truncated: needed bytes [{offset}, {offset + n}), "
                f"the store returned {len(data)}"
            )
        view[:] = data
        self._count(n)

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)

        def missing() -> bytes:
            raise CheckpointNotFoundError(f"{self._url(name)} does not exist")

        data: bytes = self.call("read", name, lambda: bytes(self.fs.cat_file(path)), on_missing=missing)
        self._count(len(data))
        return data

    def size(self, name: str) -> int:
        path = self._path(name)

        def missing() -> int:
            raise CheckpointNotFoundError(f"{self._url(name)} does not exist")

        def stat() -> int:
            # Listing caches must not answer for an object just written.
            self.fs.invalidate_cache(path)
            return int(self.fs.info(path)["size"])

        return self.call("stat", name, stat, on_missing=missing)

    def write_atomic(self, name: str, data: bytes) -> None:
        # One whole-object PUT: readers see the old object or the new one, never a part.
        path = self._path(name)
        self.call("write", name, lambda: self.fs.pipe_file(path, bytes(data)))
        stored = self.size(name)
        if stored != len(data):
            raise StorageError(
                f"commit of {self._url(name)} is incomplete: wrote {len(data)} bytes, "
                f"the store holds {stored}"
            )

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix) if prefix else self._root

        def ls() -> list[dict[str, Any]]:
            self.fs.invalidate_cache(folder)
            return list(self.fs.ls(folder, detail=True))

        entries = self.call("list", prefix, ls, on_missing=lambda: [])
        names = {
            posixpath.basename(str(e["name"]).rstrip("/"))
            for e in entries if e.get("type") == "file"
        }
        return [f"{prefix}/{n}" if prefix else n for n in sorted(names) if n]

    def entries(self) -> builtins.list[str]:
        """Names of the files and folders directly under the root (``list`` gives files
        only): ``reshard convert`` writes only to a URL under which nothing is stored."""

        def ls() -> list[str]:
            self.fs.invalidate_cache(self._root)
            return [str(e) for e in self.fs.ls(self._root, detail=False)]

        found = self.call("list", "", ls, on_missing=lambda: [])
        return sorted(n for n in {posixpath.basename(e.rstrip("/")) for e in found} if n)

    def delete(self, name: str) -> None:
        path = self._path(name)
        self.call("delete", name, lambda: self.fs.rm_file(path), on_missing=lambda: None)

    def close(self) -> None:
        # fsspec caches filesystem instances (and their connection pools) per process.
        pass


class _ObjectWriter:
    """A data object written sequentially.

    Up to one upload part is kept in memory and stored with a single PUT on ``close()``,
    retried whole. A larger file streams through the filesystem's own writer in parts
    (multipart upload on S3), fed one part at a time so memory stays bounded. ``close()``
    finishes the upload and checks the stored size, so a success means the object is complete.
    """

    def __init__(self, store: FsspecStore, name: str) -> None:
        self._store = store
        self._name = name
        self._path = store._path(name)
        self._part_nbytes = config.upload_part_nbytes()
        self._pending = bytearray()
        self._stream: Any = None
        self._nbytes = 0
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._nbytes += len(view)
        if self._stream is None and len(self._pending) + len(view) <= self._part_nbytes:
            self._pending += view
            return len(view)
        if self._stream is None:
            self._stream = self._store.call(
                "write", self._name,
                lambda: self._store.fs.open(self._path, "wb", block_size=self._part_nbytes),
            )
            pending, self._pending = self._pending, bytearray()
            self._send(memoryview(pending))
        self._send(view)
        return len(view)

    def _send(self, view: memoryview) -> None:
        for start in range(0, len(view), self._part_nbytes):
            part = view[start:start + self._part_nbytes]
            try:
                self._stream.write(part)
            except Exception as e:
                raise StorageError(f"cannot write {self._store._url(self._name)}: {_describe(e)}") from e

    def tell(self) -> int:
        return self._nbytes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stream is None:
            data, self._pending = bytes(self._pending), bytearray()
            self._store.call("write", self._name, lambda: self._store.fs.pipe_file(self._path, data))
        else:
            try:
                self._stream.close()
            except Exception as e:
                raise StorageError(
                    f"cannot finish the upload of {self._store._url(self._name)}: {_describe(e)}"
                ) from e
        stored = self._store.size(self._name)
        if stored != self._nbytes:
            raise StorageError(
                f"upload of {self._store._url(self._name)} is incomplete: wrote {self._nbytes} "
                f"bytes, the store holds {stored}"
            )

    def abort(self) -> None:
        """Drop the upload: nothing references this object, but leave no garbage behind."""
        if self._closed:
            return
        self._closed = True
        self._pending = bytearray()
        if self._stream is not None:
            discard = getattr(self._stream, "discard", None)
            try:
                if discard is not None:
                    discard()  # aborts an S3 multipart upload
                else:
                    self._stream.close()
            except Exception:  # noqa: BLE001 - the save already failed; this is cleanup
                pass
        try:
            self._store.delete(self._name)
        except CheckpointError:
            pass

    def __enter__(self) -> _ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
