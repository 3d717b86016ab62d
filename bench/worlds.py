"""What runs inside each spawned rank: saves and loads of reshard and DCP, interleaved
A/B/A/B, each timed as barrier -> t0 -> op -> barrier and probed for memory and I/O."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import probes, state

LIBS = ("reshard", "dcp")


@dataclass(frozen=True, slots=True)
class Job:
    """One measured scenario (or an unmeasured setup step when ``measured`` is False).

    ``kind`` is "save" or "load". Saves write ``ckpt`` from ``layout``; loads read
    ``ckpt`` into zeroed targets placed by ``layout``. ``cache`` is "warm" or "cold".
    """

    name: str
    kind: str
    data: str  # "model", "zstd:<dataset>", "tiny"
    layout: str
    ckpt: str
    reps: int
    codec: str = "identity"
    cache: str = "warm"
    measured: bool = True
    column_blocks: int | None = None  # reshard's save option (None: RESHARD_COLUMN_BLOCKS)


@dataclass(slots=True)
class WorldConfig:
    workdir: str
    size_gib: float
    zstd_gib: float
    tiny_n: int
    drop_caches: bool
    zstd_level: int = 3
    jobs: list[Job] = field(default_factory=list)


def specs_for(cfg: WorldConfig, data: str) -> list[state.Spec]:
    if data == "model":
        return state.model_specs(cfg.size_gib)
    if data == "tiny":
        return state.tiny_specs(cfg.tiny_n)
    if data.startswith("zstd:"):
        return state.zstd_specs(data.split(":", 1)[1], cfg.zstd_gib)
    raise ValueError(data)


def ckpt_path(cfg: WorldConfig, lib: str, ckpt: str) -> str:
    return os.path.join(cfg.workdir, f"{lib}.{ckpt}")


def _save_op(lib: str, sd: dict[str, Any], path: str, codec: str,  # type: ignore[no-untyped-def]
             zstd_level: int = 3, column_blocks: int | None = None):
    if lib == "reshard":
        import reshard
        from reshard.codecs import ZstdCodec

        arg = None if codec == "identity" else ZstdCodec(level=zstd_level)
        return lambda: reshard.save(sd, path, codec=arg, column_blocks=column_blocks)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    def run() -> None:
        if codec == "identity":
            writer = FileSystemWriter(path)
        else:
            from torch.distributed.checkpoint._extension import ZStandard

            writer = FileSystemWriter(path, _extensions=[ZStandard()])
        dcp.save(sd, storage_writer=writer)

    return run


def _load_op(lib: str, sd: dict[str, Any], path: str):  # type: ignore[no-untyped-def]
    if lib == "reshard":
        import reshard

        return lambda: reshard.load(sd, path)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    return lambda: dcp.load(sd, storage_reader=FileSystemReader(path))


def _measure(dist: Any, op: Any) -> dict[str, Any]:
    probes.trim_heap()
    dist.barrier()
    io0 = probes.io_counters()
    probes.reset_peak_rss()
    rss0 = probes.rss_bytes()
    dist.barrier()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    result = op()
    t_op = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    dist.barrier()
    t = time.perf_counter() - t0
    io1 = probes.io_counters()
    peak = probes.peak_rss_bytes()
    io = {k: io1[k] - io0[k] for k in io0}
    # Bytes touched through a memory map are not in rchar: reshard.load reports them.
    io["rchar"] += int(getattr(result, "bytes_mapped", 0))
    return {
        "t": t, "t_op": t_op, "cpu_s": cpu, "rss_before": rss0, "peak_rss": peak,
        "peak_rss_delta": max(0, peak - rss0), **io,
    }


def _cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (less sensitive than wall
    time to other load on the machine)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _on_rank0(dist: Any, rank: int, fn: Any) -> None:
    dist.barrier()
    if rank == 0:
        fn()
    dist.barrier()


def world_main(rank: int, world: int, cfg: WorldConfig) -> list[dict[str, Any]] | None:
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    results: list[dict[str, Any]] = []
    for job in cfg.jobs:
        specs = specs_for(cfg, job.data)
        lay = state.layout(job.layout, world)
        if job.kind == "save":
            sd = state.build(specs, lay, rank)
            for rep in range(job.reps):
                for lib in LIBS:
                    path = ckpt_path(cfg, lib, job.ckpt)
                    _on_rank0(dist, rank, lambda: probes.remove(path))
                    rec = _measure(dist, _save_op(lib, sd, path, job.codec, cfg.zstd_level,
                                                    job.column_blocks))
                    _collect(dist, rank, results, job, lib, rep, rec, extra={
                        "disk_bytes": probes.disk_bytes(path) if rank == 0 else 0,
                    })
            del sd
        else:
            sd = state.targets(specs, lay, rank)
            needed = state.needed_bytes(specs, lay, rank)
            for rep in range(job.reps):
                for lib in LIBS:
                    path = ckpt_path(cfg, lib, job.ckpt)
                    state.zero_(sd)
                    if job.cache == "cold":
                        _on_rank0(dist, rank, lambda: probes.make_cold([path],
                                                                      drop_caches=cfg.drop_caches))
                    else:
                        _on_rank0(dist, rank, lambda: probes.make_warm([path]))
                    rec = _measure(dist, _load_op(lib, sd, path))
                    bad = state.verify(specs, lay, rank, sd)
                    _collect(dist, rank, results, job, lib, rep, rec, extra={
                        "needed_bytes": needed, "mismatched": bad,
                    })
                if job.cache == "cold":
                    _raw_cold_read(dist, rank, results, job, rep,
                                   ckpt_path(cfg, LIBS[0], job.ckpt), cfg.drop_caches)
            del sd
    return results if rank == 0 else None


def _raw_cold_read(dist: Any, rank: int, results: list[dict[str, Any]], job: Job, rep: int,
                   path: str, drop_caches: bool) -> None:
    """The raw cold read limit at this moment: rank 0 alone reads the files of the
    checkpoint the load just read (the same bytes), evicted first, in 16 MiB
    ``readinto`` calls, as the run's opening raw limit does. The disk's speed drifts
    by 1.5x over a run, so each cold load is judged against a read timed beside it."""
    out: dict[str, Any] = {}

    def read() -> None:
        probes.make_cold([path], drop_caches=drop_caches)
        t0 = time.perf_counter()
        n = probes.read_all([path])
        out.update(t=time.perf_counter() - t0, nbytes=n)

    _on_rank0(dist, rank, read)
    if rank == 0 and job.measured:
        results.append({"job": job.name, "kind": job.kind, "cache": job.cache, "lib": "raw",
                        "rep": rep, "ranks": [out]})


def _collect(dist: Any, rank: int, results: list[dict[str, Any]], job: Job, lib: str, rep: int,
             rec: dict[str, Any], extra: dict[str, Any]) -> None:
    rec.update(extra)
    gathered: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(rec, gathered, dst=0)
    if rank == 0 and job.measured:
        assert gathered is not None
        results.append({"job": job.name, "kind": job.kind, "cache": job.cache, "lib": lib,
                        "rep": rep, "ranks": gathered})
