"""The floor of a checked (2,2) -> Shard(0) fill: the bare work, with no library code.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.fill_floor --dir /var/tmp/ff --reps 7

Each of ``--procs`` processes (2, as the bench's two ranks, started together behind a
barrier, one torch thread each) fills a ``rows x 2 half`` fp32 tensor from two files of
``rows x half`` values, the two quarters of a (2,2) grid that one Shard(0) rank needs:
per 8 MiB piece of a file's private mapping, CRC-32C of each 256 KiB frame, then one
torch copy of the piece's rows into their half of the destination rows. This is what
every verified load of that reshard must do at least, so its time bounds the load's.
Ways, taking turns:

* ``check+copy``: as above (what reshard does);
* ``copy``: the copies alone, unchecked;
* ``check``: the CRCs alone;
* ``check+preadv``: the CRCs from the mapping, then the rows scattered by ``os.preadv``
  straight from the file into the destination (the kernel's copy instead of torch's).

Median wall and CPU seconds of each process. A measurement tool only; it changes
nothing in the library.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import numpy as np

FRAME = 256 << 10
PIECE = 8 << 20
IOV_MAX = 1024
WAYS = ("check+copy", "copy", "check", "check+preadv")


def _files(folder: str, procs: int, rows: int, half: int) -> list[list[str]]:
    os.makedirs(folder, exist_ok=True)
    out = []
    for p in range(procs):
        pair = []
        for k in range(2):
            path = os.path.join(folder, f"quarter_{p}{k}_{rows}x{half}.bin")
            if not os.path.exists(path):
                rng = np.random.default_rng(2 * p + k)
                rng.standard_normal(rows * half, dtype=np.float32).tofile(path)
            with open(path, "rb") as f:  # into the page cache
                while f.read(64 << 20):
                    pass
            pair.append(path)
        out.append(pair)
    return out


def _fill(way: str, fds: list[int], maps: list[mmap.mmap], dest: Any, rows: int, half: int,
          row_views: list[list[memoryview]]) -> None:
    import torch

    from reshard.codecs import crc32c

    row_nbytes = half * 4
    piece_rows = max(1, PIECE // row_nbytes)
    for k in range(2):
        mapped = memoryview(maps[k])
        src = torch.frombuffer(maps[k], dtype=torch.float32).view(rows, half)
        for r0 in range(0, rows, piece_rows):
            r1 = min(rows, r0 + piece_rows)
            lo, hi = r0 * row_nbytes, r1 * row_nbytes
            if way != "copy":
                for f in range(lo, hi, FRAME):
                    crc32c(mapped[f:min(hi, f + FRAME)])
            if way in ("check+copy", "copy"):
                dest[r0:r1, k * half:(k + 1) * half].copy_(src[r0:r1])
            elif way == "check+preadv":
                offset = lo
                for i in range(r0, r1, IOV_MAX):
                    offset += os.preadv(fds[k], row_views[k][i:min(r1, i + IOV_MAX)], offset)
        del src, mapped


def _worker(p: int, paths: list[str], ways: list[str], reps: int, rows: int, half: int,
            barrier: Any, results: Any) -> None:
    import torch

    torch.set_num_threads(1)
    dest = torch.zeros(rows, 2 * half)  # touched: as the bench's destinations are
    flat = dest.numpy()
    row_views = [[flat[i, k * half:(k + 1) * half].data.cast("B") for i in range(rows)]
                 for k in range(2)]
    fds = [os.open(path, os.O_RDONLY) for path in paths]
    times: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    for _ in range(reps):
        for way in ways:
            maps = [mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE) for fd in fds]
            barrier.wait()
            c0, w0 = time.process_time(), time.perf_counter()
            _fill(way, fds, maps, dest, rows, half, row_views)
            times[way].append((time.perf_counter() - w0, time.process_time() - c0))
            for m in maps:
                m.close()
            if way != "check":
                for k, path in enumerate(paths):
                    want = np.fromfile(path, dtype=np.float32).reshape(rows, half)
                    if not np.array_equal(flat[:, k * half:(k + 1) * half], want):
                        raise SystemExit(f"process {p}: {way} filled wrong values")
                dest.zero_()
    for fd in fds:
        os.close(fd)
    results.put((p, times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--mib", type=int, default=512, help="destination MiB per process")
    ap.add_argument("--half-row-bytes", type=int, default=5376,
                    help="bytes of one saved half row (the bench's 2-D tensors: 2,688-5,376)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--ways", default=",".join(WAYS))
    args = ap.parse_args()
    half = args.half_row_bytes // 4
    rows = (args.mib << 20) // (2 * half * 4)
    ways = args.ways.split(",")
    unknown = set(ways) - set(WAYS)
    if unknown:
        ap.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    paths = _files(args.dir, args.procs, rows, half)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(args.procs), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(p, paths[p], ways, args.reps, rows, half,
                                               barrier, results)) for p in range(args.procs)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=600) for _ in procs)
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a process failed (exit {proc.exitcode})")
    mib = 2 * rows * half * 4 / (1 << 20)
    print(f"{args.procs} processes, {mib:.0f} MiB each, half rows of {half * 4} bytes, "
          f"medians of {args.reps}")
    for way in ways:
        for p in sorted(got):
            wall = statistics.median(t[0] for t in got[p][way])
            cpu = statistics.median(t[1] for t in got[p][way])
            print(f"{way:13s} process {p}: wall {wall:.3f} s  cpu {cpu:.3f} s  "
                  f"({mib / 1024 / wall:.2f} GiB/s)")


if __name__ == "__main__":
    main()
