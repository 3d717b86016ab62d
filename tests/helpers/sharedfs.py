"""``sharedfs://``: the local disk reached through fsspec, so that spawned ranks share one
fsspec filesystem (memory:// lives in one process). reshard treats it as a remote store
(FsspecStore): whole-object PUTs, ranged reads, cooperative reads on by default."""

from __future__ import annotations

from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "sharedfs"


class SharedFS(LocalFileSystem):
    """Directories are made as files are written, as object stores need none."""

    protocol = PROTOCOL

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("auto_mkdir", True)
        super().__init__(**kwargs)


def register() -> None:
    """Make ``sharedfs://`` URLs open SharedFS in this process (each rank calls it)."""
    import fsspec

    fsspec.register_implementation(PROTOCOL, SharedFS, clobber=True)


def url(path: str) -> str:
    return f"{PROTOCOL}://{path}"
