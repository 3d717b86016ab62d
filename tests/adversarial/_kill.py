"""Kill the current process with SIGKILL at a chosen point of a save.

``install(point)`` patches the store and save internals of *this* process (a forked child
or a spawned rank), so that reaching ``point`` sends SIGKILL to itself: no cleanup, no
``finally``, no flush, exactly as ``kill -9`` would. Points, in save order:

- ``data:<k>``: after the first ``k`` bytes reached a data file (k=0: before any byte),
- ``data-close``: every byte written, before the data file's fsync and close,
- ``manifest-start``: all data files durable, before the manifest is written,
- ``manifest-partial``: half of the temporary manifest written,
- ``before-rename``: temporary manifest durable, before it is renamed over manifest.json,
- ``after-rename``: committed, before the directory fsync,
- ``cleanup-start``: before any previous file is removed,
- ``cleanup-mid``: after the first previous file was removed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

OLD_POINTS = ["data:0", "data:1", "data:700", "data:2000", "data-close", "manifest-start",
              "manifest-partial", "before-rename"]
NEW_POINTS = ["after-rename", "cleanup-start", "cleanup-mid"]


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, *, half_nbytes: int = 0) -> None:
    from reshard.storage import local

    save_mod = sys.modules["reshard.save"]
    if point.startswith("data"):
        _patch_writer(local, point, half_nbytes)
    elif point == "manifest-start":
        original_atomic = local.LocalStore.write_atomic

        def write_atomic(self: Any, name: str, data: bytes) -> None:
            die()
            original_atomic(self, name, data)

        local.LocalStore.write_atomic = write_atomic  # type: ignore[method-assign]
    elif point == "manifest-partial":
        local.open = _half_open  # type: ignore[attr-defined]  # the module's builtin open
    elif point in ("before-rename", "after-rename"):
        local.os = _OsProxy(point)  # type: ignore[assignment]
    elif point == "cleanup-start":
        original_remove = save_mod._remove_files

        def remove_files(store: Any, pred: Any) -> None:
            die()
            original_remove(store, pred)

        save_mod._remove_files = remove_files
    elif point == "cleanup-mid":
        original_delete = local.LocalStore.delete
        count = [0]

        def delete(self: Any, name: str) -> None:
            original_delete(self, name)
            count[0] += 1
            die()

        local.LocalStore.delete = delete  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown kill point {point!r}")


def _patch_writer(local: Any, point: str, half_nbytes: int) -> None:
    original_open = local.LocalStore.open_writer
    spec = point.split(":")[1] if ":" in point else None
    limit = None if spec is None else (half_nbytes if spec == "half" else int(spec))

    def open_writer(self: Any, name: str) -> Any:
        f = original_open(self, name)
        written = [0]
        real_write, real_close = f.write, f.close

        def write(data: Any) -> int:
            view = memoryview(data).cast("B")
            if limit is not None and written[0] + len(view) >= limit:
                real_write(view[: limit - written[0]])
                die()
            written[0] += len(view)
            return real_write(view)

        def close() -> None:
            if limit is None:
                die()
            real_close()

        f.write, f.close = write, close
        return f

    local.LocalStore.open_writer = open_writer  # type: ignore[method-assign]


class _HalfFile:
    def __init__(self, path: str, mode: str) -> None:
        self._f = open(path, mode)  # noqa: SIM115

    def write(self, data: bytes) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        die()
        return 0

    def __enter__(self) -> _HalfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _half_open(path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    if "w" in mode and ".tmp-" in os.fspath(path):
        return _HalfFile(path, mode)
    return open(path, mode, *args, **kwargs)  # noqa: SIM115


class _OsProxy:
    """The ``os`` module, but ``replace`` kills before or after renaming."""

    def __init__(self, point: str) -> None:
        self._point = point

    def replace(self, src: str, dst: str) -> None:
        if self._point == "before-rename":
            die()
        os.replace(src, dst)
        die()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)
