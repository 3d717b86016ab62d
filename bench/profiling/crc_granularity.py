"""Two alternatives to column blocks for partial reads of row-saved chunks, measured.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.crc_granularity --dir /var/tmp/cg --reps 5

One process, a 512 MiB file of random bytes in the page cache, 256 KiB frames, CPU
seconds (median over ``--reps``; the ways take turns):

* half columns of 16 KiB rows, as a Shard(0) -> Shard(1) reader needs them:
  ``frame crc`` checks each frame whole (what reshard does) then copies the half rows;
  ``half-row crcs`` chains one CRC over the frame's half rows (what finer checksums would
  let a reader do); ``copy only`` is the copy alone.
* 8 KiB rows into the halves of 16 KiB destination rows, as (2,2) -> Shard(0) needs:
  ``mapped`` checks each mapped frame then copies it (what reshard does); ``preadv``
  scatters each frame into the destination rows with one ``os.preadv`` and chains the
  CRC over them there.
A measurement tool only; it changes nothing in the library.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import resource
import statistics
from collections.abc import Callable

import numpy as np
import torch

from reshard.codecs import crc32c

FILE_NBYTES = 512 << 20
FRAME = 256 << 10


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _file(folder: str) -> str:
    path = os.path.join(folder, "crc_granularity.bin")
    if not os.path.exists(path) or os.path.getsize(path) != FILE_NBYTES:
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            for _ in range(FILE_NBYTES // (64 << 20)):
                f.write(rng.integers(0, 256, 64 << 20, dtype=np.uint8).tobytes())
    with open(path, "rb") as f:  # into the page cache
        while f.read(64 << 20):
            pass
    return path


def _timed(path: str, body: Callable[[int, memoryview, np.ndarray], None]) -> float:
    """CPU seconds of ``body(fd, mapping, mapping as uint8)`` on a fresh private mapping."""
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(fd, FILE_NBYTES, prot=mmap.PROT_READ)
    mv = memoryview(m)
    arr = np.frombuffer(mv, dtype=np.uint8)
    try:
        t0 = _cpu()
        body(fd, mv, arr)
        return _cpu() - t0
    finally:
        del arr
        gc.collect()
        mv.release()
        m.close()
        os.close(fd)


def half_columns(path: str, reps: int) -> dict[str, list[float]]:
    cols = 4096  # fp32: 16 KiB rows
    row = cols * 4
    per = FRAME // row
    dest = torch.empty(FILE_NBYTES // row, cols // 2)

    def way(check: str) -> Callable[[int, memoryview, np.ndarray], None]:
        def body(fd: int, mv: memoryview, arr: np.ndarray) -> None:
            for f in range(FILE_NBYTES // FRAME):
                lo = f * FRAME
                if check == "frame":
                    crc32c(mv[lo:lo + FRAME])
                elif check == "half":
                    c = 0
                    for r in range(per):
                        s = lo + r * row
                        c = crc32c(mv[s:s + row // 2], c)
                src = torch.from_numpy(arr[lo:lo + FRAME].view(np.float32).reshape(per, cols))
                dest[f * per:(f + 1) * per].copy_(src[:, :cols // 2])
        return body

    ways = {"frame crc": way("frame"), "half-row crcs": way("half"), "copy only": way("none")}
    out: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for k, body in ways.items():
            out[k].append(_timed(path, body))
    return out


def scatter(path: str, reps: int) -> dict[str, list[float]]:
    cols = 2048  # fp32: 8 KiB source rows, 16 KiB destination rows
    row = cols * 4
    per = FRAME // row
    dest = torch.zeros(FILE_NBYTES // row, 2 * cols)
    dbytes = dest.numpy().data.cast("B")

    def mapped(fd: int, mv: memoryview, arr: np.ndarray) -> None:
        for f in range(FILE_NBYTES // FRAME):
            lo = f * FRAME
            crc32c(mv[lo:lo + FRAME])
            src = torch.from_numpy(arr[lo:lo + FRAME].view(np.float32).reshape(per, cols))
            dest[f * per:(f + 1) * per, :cols].copy_(src)

    def preadv(fd: int, mv: memoryview, arr: np.ndarray) -> None:
        for f in range(FILE_NBYTES // FRAME):
            first = f * per
            segs = [dbytes[(first + i) * 2 * row:(first + i) * 2 * row + row] for i in range(per)]
            os.preadv(fd, segs, f * FRAME)
            c = 0
            for s in segs:
                c = crc32c(s, c)

    ways = {"mapped": mapped, "preadv": preadv}
    out: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for k, body in ways.items():
            out[k].append(_timed(path, body))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    path = _file(args.dir)
    for title, fn in (("half columns of 16 KiB rows (Shard(0) -> Shard(1))", half_columns),
                      ("8 KiB rows into 16 KiB rows ((2,2) -> Shard(0))", scatter)):
        print(f"{title}: CPU s per 512 MiB, median of {args.reps}")
        for k, v in fn(path, args.reps).items():
            print(f"  {k:14s} {statistics.median(v):.3f}  [{', '.join(f'{x:.3f}' for x in v)}]")


if __name__ == "__main__":
    main()
