"""Where one rank's warm resharded fill spends its CPU: checksums, copies, the rest.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.reshard_loads --dir /var/tmp/rr --size-gib 1 --save
    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.fill_split --dir /var/tmp/rr --size-gib 1 --reps 7

In one process (no process group), fills rank ``--rank``'s targets of a 2-rank load from
the checkpoints ``reshard_loads --save`` wrote, warm, four ways taking turns: as loads
do; with the CRC-32C check skipped; with the copies into strided destinations skipped;
with both skipped. The differences in median CPU seconds are the cost of each part. A
measurement tool only: skipping a check is never an option of the library, and the
runs without copies leave wrong values (they are not verified).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

CASES = (("S0", "S1"), ("2D", "S0"), ("S0", "S0"))
MODES = ("as loads do", "no CRC", "no strided copy", "neither")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def _mode(mode: str) -> Iterator[None]:
    import torch

    from reshard.transfer import read

    verify, copy = read._verify, torch.Tensor.copy_

    def strided_copy_skipped(self, src, *args, **kwargs):  # type: ignore[no-untyped-def]
        if src.dim() >= 2 and (not src.is_contiguous() or not self.is_contiguous()):
            return self
        return copy(self, src, *args, **kwargs)

    try:
        if mode in ("no CRC", "neither"):
            read._verify = lambda *a, **k: None
        if mode in ("no strided copy", "neither"):
            torch.Tensor.copy_ = strided_copy_skipped  # type: ignore[method-assign]
        yield
    finally:
        read._verify = verify
        torch.Tensor.copy_ = copy  # type: ignore[method-assign]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--size-gib", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rank", type=int, default=0)
    a = p.parse_args()

    import torch

    from bench import state
    from bench.profiling.reshard_loads import _model_specs
    from reshard import config
    from reshard.manifest_io import load_manifest
    from reshard.storage import open_store
    from reshard.transfer.coalesce import fill_whole_chunks, split_whole_chunks
    from reshard.transfer.read import Target, fill

    torch.set_num_threads(1)  # as the bench's ranks run
    specs = _model_specs(a.size_gib)
    threads = config.io_threads()
    for src, dst in CASES:
        lay = state.layout(dst, 2)
        store = open_store(f"{a.dir}/{src}")
        by_key = {e.key: e for e in load_manifest(store).entries}
        boxes = {s.name: state.local_box(s, lay, a.rank) for s in specs}
        tensors = {s.name: torch.zeros(boxes[s.name].sizes, dtype=s.dtype) for s in specs}
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(a.reps):
            for mode in MODES:
                targets = [Target(entry=by_key[(s.name,)], box=boxes[s.name], tensor=tensors[s.name])
                           for s in specs]
                whole, rest = split_whole_chunks(targets)
                with _mode(mode):
                    c0 = _cpu()
                    fill_whole_chunks(store, whole, threads=threads)
                    fill(store, rest, threads=threads, max_piece_nbytes=config.max_piece_nbytes())
                    cpu[mode].append(_cpu() - c0)
                if mode == MODES[0]:
                    bad = [s.name for s in specs
                           if not torch.equal(tensors[s.name], state.expected(s, boxes[s.name]))]
                    assert not bad, bad
                time.sleep(0.05)
        store.close()
        med = {m: statistics.median(v) for m, v in cpu.items()}
        print(f"{src}->{dst} rank {a.rank} ({threads} threads), median CPU s of {a.reps}: "
              + ", ".join(f"{m} {med[m]:.3f}" for m in MODES))
        print(f"  CRC {med['as loads do'] - med['no CRC']:.3f}, strided copy "
              f"{med['as loads do'] - med['no strided copy']:.3f}, the rest {med['neither']:.3f}")


if __name__ == "__main__":
    main()
