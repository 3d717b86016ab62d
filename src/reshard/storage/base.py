"""The store interface, and ``open_store``: which store serves a path or URL."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO, Protocol

from ..errors import CheckpointError


class Store(Protocol):
    """Bytes of one checkpoint directory, addressed by relative '/'-separated names.

    Every rank opens its own store on the same path. Only the coordinator calls
    ``prepare``, ``sync``, ``write_atomic`` (the commit) and ``delete``, in that order.
    """

    location: str

    def prepare(self, folder: str) -> None:
        """Make the checkpoint location ready for files under ``folder`` (coordinator, before writes)."""
        ...

    def open_writer(self, name: str) -> BinaryIO:
        """A new file for sequential writes; ``close()`` makes it complete and durable, or raises."""
        ...

    def sync(self, folder: str) -> None:
        """Make the names of files closed under ``folder`` durable (coordinator, before the commit)."""
        ...

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` from ``offset`` of ``name``; a short file raises."""
        ...

    def read_bytes(self, name: str) -> bytes:
        """The whole of a small file (the manifest)."""
        ...

    def size(self, name: str) -> int:
        """Size in bytes of ``name``; CheckpointNotFoundError when it does not exist."""
        ...

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace ``name`` with ``data`` all at once, durably (the commit point)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Names under the folder ``prefix``."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name`` if it exists."""
        ...

    def close(self) -> None:
        """Release cached handles."""
        ...


def view_of(
    store: Store, name: str, offset: int, nbytes: int, *, counted: int | None = None
) -> memoryview | None:
    """Bytes of ``name`` without a copy where ``store`` can map them (an optional
    ``view`` method, local files), else None: the caller reads them instead.
    ``counted``: the bytes of the view the caller will touch (default all of them)."""
    view = getattr(store, "view", None)
    if view is None:
        return None
    out: memoryview | None = (view(name, offset, nbytes) if counted is None
                              else view(name, offset, nbytes, counted=counted))
    return out


def can_map(store: Store) -> bool:
    """Whether ``view_of`` gives views of ``store``'s files (local files, mapped reads on)."""
    return bool(getattr(store, "maps", False))


def is_remote(store: Store) -> bool:
    """Whether ``store`` reaches its bytes over a network (an fsspec store), where each
    byte read costs a request rather than a page-cache copy."""
    return bool(getattr(store, "remote", False))


def let_go(store: Store, name: str, offset: int, nbytes: int) -> None:
    """Tell a mapping store that a ``view_of`` these bytes is no longer needed."""
    release = getattr(store, "let_go", None)
    if release is not None:
        release(name, offset, nbytes)


# "s3://...", "gs://...", "memory://...", and fsspec chains such as "simplecache::s3://...".
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*::)*([A-Za-z][A-Za-z0-9+.\-]*)://")
_LOCAL_PROTOCOLS = ("file", "local")
_FILE_NO_AUTHORITY = re.compile(r"^file:/(?!/)", re.IGNORECASE)


def same_place(a: str, b: str) -> bool:
    """Whether two checkpoint locations name one folder: local paths through symlinks
    (``latest -> step-2``), ``file://`` URLs as their paths, and fsspec URLs as their
    filesystem's own path (``memory://a`` and ``memory:///a`` are one folder)."""
    return a == b or _place(a) == _place(b)


def _place(location: str) -> str:
    local = local_path(location)
    if local is not None:
        return "file://" + os.path.realpath(local)
    if "::" in location:
        return location.rstrip("/")  # a chain: its parts are another filesystem's
    try:
        from fsspec import get_filesystem_class
        from fsspec.core import split_protocol

        protocol, _ = split_protocol(location)
        # A class method: no filesystem is made, nothing is connected to.
        path = get_filesystem_class(protocol)._strip_protocol(location)
    except Exception:  # noqa: BLE001 - unknown or uninstalled backends compare as written
        return location.rstrip("/")
    return f"{protocol}://{str(path).rstrip('/')}"


def open_store(
    path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Store:
    """The store for ``path``: a local directory, or an fsspec URL (``s3://bucket/prefix``).

    ``storage_options`` go unchanged to fsspec (for s3fs: ``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``, ...). They are refused for local paths, where
    they would be ignored: a mistyped URL such as ``s3:/bucket`` must not silently
    become a local directory.
    """
    location = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(location, str):
        raise CheckpointError(f"checkpoint path must be a str or os.PathLike, got {location!r}")
    if not location:
        # "" would be the current directory: a save would write (and clean up) there.
        raise CheckpointError("checkpoint path is empty; pass a directory (\".\" for this one)")
    if "\0" in location:
        # No file name holds one: os calls raised a bare "ValueError: embedded null byte".
        raise CheckpointError(f"checkpoint path {location!r} holds a NUL character")
    refuse_local_options(location, storage_options)
    local = local_path(location)
    if local is not None:
        from .local import LocalStore

        return LocalStore(local)
    from .fsspec_store import FsspecStore

    return FsspecStore.from_url(location, dict(storage_options or {}))


def refuse_local_options(
    location: str, storage_options: Mapping[str, Any] | None, what: str = "path",
) -> None:
    """CheckpointError where ``storage_options`` were given for a local ``location``
    (``what`` names it: path, SRC, DST): they would be ignored there, and a mistyped URL
    (``s3:/bucket``) is a local path."""
    if storage_options and local_path(location) is not None:
        raise CheckpointError(
            f"storage_options were given for the local {what} {location!r}; they apply only "
            "to fsspec URLs such as s3://bucket/prefix"
        )


def local_path(location: str) -> str | None:
    """The local path ``location`` names (a plain path, a ``file://`` or ``local://`` URL,
    or ``file:/abs/path``), or None where it is an fsspec URL (``s3://...``,
    ``simplecache::file://...``)."""
    match = _URL.match(location)
    if match is None:
        if _FILE_NO_AUTHORITY.match(location):
            # RFC 8089's file:/path; it was taken as the relative folder "file:" + path.
            return location[len("file:"):]
        return location
    if match.group(1).lower() in _LOCAL_PROTOCOLS and "::" not in location:
        return location[len(match.group(0)):]
    return None


@contextmanager
def new_file(store: Store, name: str) -> Iterator[BinaryIO]:
    """A new file of ``store``, made durable on a clean exit and removed on an error,
    so a failed writer never leaves a partial file that could look complete."""
    writer = store.open_writer(name)
    try:
        yield writer
    except BaseException:
        abort = getattr(writer, "abort", None)
        if abort is not None:
            abort()
        raise
    writer.close()
