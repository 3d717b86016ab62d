"""CPU seconds per GiB and size ratio of the zstd frame codecs on the bench's zstd datasets.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.codec_cpu --sample-mib 48 --reps 7

Cuts a sample of each dataset of ``bench.state.zstd_specs`` (random fp32, bf16 weights,
Adam state at init: the first rows of every tensor, in proportion to its size) into 256 KiB
frames and, in one thread, encodes and decodes every frame with each codec, the codecs
taking turns in each repetition. Prints the minimum and median thread CPU seconds per GiB
of raw data (the minimum is the steadier figure on a shared machine) and the size ratio.
No I/O and no thread pool: this is the codec alone, the part of a zstd save or load that
a cheaper encoding changes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from bench import state
from reshard.codecs import PlanesZstdCodec, ShuffleZstdCodec, ZstdCodec
from reshard.core.layout import Box

FRAME = 256 << 10
CODECS = {
    "planes-zstd": lambda e: PlanesZstdCodec(elementsize=e),
    "shuffle-zstd": lambda e: ShuffleZstdCodec(elementsize=e),
    "zstd": lambda e: ZstdCodec(shuffle=False),
}


def frames(dataset: str, sample_mib: float, gib: float = 0.5) -> list[tuple[np.ndarray, int]]:
    """(frame bytes, element size) of a ``sample_mib`` sample of the dataset."""
    specs = [s for s in state.zstd_specs(dataset, gib) if s.shape]
    total = state.total_bytes(specs)
    out = []
    for s in specs:
        share = max(FRAME, int(s.nbytes / total * sample_mib * 2**20))
        row = s.nbytes // s.shape[0]
        rows = min(s.shape[0], max(1, share // row))
        box = Box((0,) * len(s.shape), (rows, *s.shape[1:]))
        t = state.expected(s, box)
        raw = t.contiguous().view(torch.uint8).numpy().reshape(-1)
        out += [(raw[a:a + FRAME].copy(), t.element_size()) for a in range(0, len(raw), FRAME)]
    return out


def measure(data: list[tuple[np.ndarray, int]], names: list[str], reps: int) -> dict[str, dict[str, Any]]:
    nbytes = sum(len(f) for f, _ in data)
    scratch = np.empty(FRAME, np.uint8)
    coded = {n: [CODECS[n](e) for _, e in data] for n in names}
    stored = {n: [c.encode(memoryview(f)) for c, (f, _) in zip(coded[n], data)] for n in names}
    for n in names:  # every frame must come back exactly
        for c, s, (f, _) in zip(coded[n], stored[n], data):
            c.decode_into(memoryview(s), scratch[:len(f)])
            if not np.array_equal(scratch[:len(f)], f):
                raise AssertionError(f"{n} does not round-trip")
    times: dict[str, dict[str, list[float]]] = {n: {"enc": [], "dec": []} for n in names}
    for _ in range(reps):
        for n in names:
            t = time.thread_time()
            for c, (f, _) in zip(coded[n], data):
                c.encode(memoryview(f))
            times[n]["enc"].append(time.thread_time() - t)
            t = time.thread_time()
            for c, s, (f, _) in zip(coded[n], stored[n], data):
                c.decode_into(memoryview(s), scratch[:len(f)])
            times[n]["dec"].append(time.thread_time() - t)
    per_gib = 2**30 / nbytes
    return {n: {"ratio": nbytes / sum(len(memoryview(s).cast("B")) for s in stored[n]),
                **{f"{k}_min": min(v) * per_gib for k, v in times[n].items()},
                **{f"{k}_med": statistics.median(v) * per_gib for k, v in times[n].items()}}
            for n in names}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sample-mib", type=float, default=48)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--datasets", default="fp32,bf16,optim")
    p.add_argument("--codecs", default=",".join(CODECS))
    a = p.parse_args()
    names = a.codecs.split(",")
    print("| dataset | codec | encode CPU s/GiB min (median) | decode CPU s/GiB min (median) | size ratio |")
    print("|---|---|---|---|---|")
    for ds in a.datasets.split(","):
        for n, r in measure(frames(ds, a.sample_mib), names, a.reps).items():
            print(f"| {ds} | {n} | {r['enc_min']:.3f} ({r['enc_med']:.3f}) | "
                  f"{r['dec_min']:.3f} ({r['dec_med']:.3f}) | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()
