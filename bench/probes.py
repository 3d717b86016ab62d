"""Per-process measurements (I/O counters, resident memory) and page-cache control."""

from __future__ import annotations

import os
import shutil

CHUNK = 16 << 20


def io_counters() -> dict[str, int]:
    """``rchar`` (bytes read through read/pread, page cache included) and ``read_bytes``
    (bytes fetched from the block device) of this whole process, all threads."""
    out: dict[str, int] = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return {"rchar": out.get("rchar", 0), "read_bytes": out.get("read_bytes", 0),
            "wchar": out.get("wchar", 0), "write_bytes": out.get("write_bytes", 0)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS.

    ru_maxrss can never go down, so per-operation peaks use VmHWM after writing 5 to
    /proc/self/clear_refs (Linux >= 4.0). False when the kernel refuses.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc malloc_trim), so
    an operation's RSS growth is not hidden by memory the previous one freed but the
    allocator kept resident (both libraries run in the same processes, interleaved)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def files_under(path: str) -> list[str]:
    out = []
    for root, _, names in os.walk(path):
        out += [os.path.join(root, n) for n in names]
    return sorted(out)


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in files_under(path))


def make_cold(paths: list[str], *, drop_caches: bool) -> None:
    """Evict ``paths`` (files or folders) from the page cache: sync, then
    POSIX_FADV_DONTNEED on every file; optionally drop the whole cache too (root)."""
    os.sync()
    for top in paths:
        for p in files_under(top) if os.path.isdir(top) else [top]:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    if drop_caches:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
        except OSError:
            pass


def make_warm(paths: list[str]) -> None:
    """Read every file once so the page cache holds it."""
    read_all(paths)


def read_all(paths: list[str]) -> int:
    """Read every file under ``paths`` in ``CHUNK`` readinto calls; the bytes read."""
    buf = bytearray(CHUNK)
    total = 0
    for top in paths:
        for p in files_under(top) if os.path.isdir(top) else [top]:
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def remove(path: str) -> None:
    """Delete a file or folder if present, then sync (so the next write starts clean)."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)
    os.sync()


def python_speed_s() -> float:
    """CPU seconds of a 5M-iteration Python loop: ~0.3-0.45 s on an idle modern core.
    Printed with every run so figures from a slow or shared machine can be recognised."""
    import time

    t = time.process_time()
    x = 0
    for i in range(5_000_000):
        x += i
    return time.process_time() - t
