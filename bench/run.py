"""reshard vs torch.distributed.checkpoint (DCP), side by side in one run.

    PYTHONPATH=$PWD/src:$PWD python -m bench.run [--quick] [--size-gib 1] [--reps 3]
        [--only w4,w2,...] [--skip ...] [--no-cold] [--workdir DIR]
        [--out-json FILE] [--out-md FILE]

Scenarios (names for --only/--skip): raw, w4, w2, reshard, blocks, full, zstd, tiny.
See docs/PERFORMANCE.md for what each measures and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from . import probes, state
from .worlds import Job, WorldConfig, world_main

SCENARIOS = ("raw", "w4", "w2", "reshard", "blocks", "full", "zstd", "tiny")
ZSTD_SETS = ("fp32", "bf16", "optim")
GB = 1e9
RSS_SLACK = 8 << 20  # allocator and interpreter noise in a per-operation RSS delta


# Raw limits, measured in this (parent) process


def raw_limits(workdir: str, nbytes: int, reps: int, drop_caches: bool) -> dict[str, list[float]]:
    """Seconds per repetition of: a 16 MiB-chunk write of random bytes + fsync; cold and
    warm 16 MiB readinto of that file; memcpy into prefaulted and into fresh memory."""
    path = os.path.join(workdir, "raw.bin")
    block = np.frombuffer(os.urandom(probes.CHUNK), dtype=np.uint8)
    out: dict[str, list[float]] = {k: [] for k in
                                   ("write_fsync", "read_cold", "read_warm", "memcpy", "memcpy_fresh")}
    buf = bytearray(probes.CHUNK)
    src = np.empty(nbytes, dtype=np.uint8)
    for i in range(0, nbytes, probes.CHUNK):
        n = min(probes.CHUNK, nbytes - i)
        src[i:i + n] = block[:n]
    dst = np.zeros_like(src)
    for _ in range(reps):
        probes.remove(path)
        t0 = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            for i in range(0, nbytes, probes.CHUNK):
                f.write(memoryview(src)[i:i + probes.CHUNK])
            os.fsync(f.fileno())
        out["write_fsync"].append(time.perf_counter() - t0)
        for mode in ("read_cold", "read_warm"):
            if mode == "read_cold":
                probes.make_cold([path], drop_caches=drop_caches)
            else:
                probes.make_warm([path])
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
            out[mode].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        np.copyto(dst, src)
        out["memcpy"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fresh = np.copy(src)
        out["memcpy_fresh"].append(time.perf_counter() - t0)
        del fresh
    probes.remove(path)
    return out


# Plan of worlds


def plan_jobs(sel: set[str], reps: int, cold: bool) -> dict[int, list[Job]]:
    caches = ("warm", "cold") if cold else ("warm",)
    jobs: dict[int, list[Job]] = {4: [], 2: [], 1: []}
    w4 = "w4" in sel
    if w4 or "reshard" in sel:
        r = reps if w4 else 1
        jobs[4].append(Job("save w4 Shard(0)", "save", "model", "S0", "w4S0", r, measured=w4))
        if w4:
            jobs[4] += [Job("load w4 Shard(0) -> w4 Shard(0)", "load", "model", "S0", "w4S0",
                            reps, cache=c) for c in caches]
        jobs[4].append(Job("save w4 (2,2) [Shard(0),Shard(1)]", "save", "model", "2D", "w42D",
                           r, measured=w4))
    if "blocks" in sel:
        # Saved for tensor-parallel readers (save's column_blocks); DCP saves as always.
        jobs[4].append(Job("save w4 Shard(0) column_blocks=2", "save", "model", "S0", "w4S0cb2",
                           reps, column_blocks=2))
        jobs[4] += [Job("load w4 Shard(0) column_blocks=2 -> w4 Shard(0)", "load", "model", "S0",
                        "w4S0cb2", reps, cache=c) for c in caches]
    w2 = "w2" in sel
    if w2 or "full" in sel:
        jobs[2].append(Job("save w2 Shard(0)", "save", "model", "S0", "w2S0",
                           reps if w2 else 1, measured=w2))
    if w2:
        jobs[2] += [Job("load w2 Shard(0) -> w2 Shard(0)", "load", "model", "S0", "w2S0", reps,
                        cache=c) for c in caches]
    if "reshard" in sel:
        jobs[2] += [Job("RESHARD w4 Shard(0) -> w2 Shard(1)", "load", "model", "S1", "w4S0",
                        reps, cache=c) for c in caches]
        jobs[2] += [Job("RESHARD w4 (2,2) [S0,S1] -> w2 Shard(0)", "load", "model", "S0",
                        "w42D", reps, cache=c) for c in caches]
    if "blocks" in sel:
        jobs[2] += [Job("RESHARD w4 Shard(0) column_blocks=2 -> w2 Shard(1)", "load", "model",
                        "S1", "w4S0cb2", reps, cache=c) for c in caches]
    if "zstd" in sel:
        for ds in ZSTD_SETS:
            jobs[2].append(Job(f"zstd save w2 {ds}", "save", f"zstd:{ds}", "S0", f"z{ds}", reps,
                               codec="zstd"))
            jobs[2].append(Job(f"zstd load w2 {ds}", "load", f"zstd:{ds}", "S0", f"z{ds}", reps))
    if "tiny" in sel:
        jobs[2] += [Job("tiny save w2", "save", "tiny", "S0", "tiny", reps),
                    Job("tiny load w2", "load", "tiny", "S0", "tiny", reps)]
    if "full" in sel:
        jobs[1] += [Job("RESHARD w2 Shard(0) -> 1 process full tensors", "load", "model", "full",
                        "w2S0", reps, cache=c) for c in caches]
    return {w: j for w, j in jobs.items() if j}


# Aggregation


def _logical_bytes(job: str, args: argparse.Namespace) -> int:
    if job.startswith("zstd"):
        return state.total_bytes(state.zstd_specs(job.split()[-1], args.zstd_gib))
    if job.startswith("tiny"):
        return state.total_bytes(state.tiny_specs(args.tiny_n))
    return state.total_bytes(state.model_specs(args.size_gib))


def summarize(records: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Medians per (scenario, lib): time (max over ranks), GB/s, peak RSS delta (max over
    ranks), read amplification (summed rchar and read_bytes over summed needed bytes)."""
    out: dict[str, Any] = {}
    for rec in records:
        key = rec["job"] + (f" [{rec['cache']}]" if rec["kind"] == "load" else "")
        s = out.setdefault(key, {"job": rec["job"], "kind": rec["kind"], "cache": rec["cache"],
                                 "logical_bytes": _logical_bytes(rec["job"], args)})
        if rec["lib"] == "raw":  # the raw cold read timed beside this scenario's loads
            raw = rec["ranks"][0]
            s.setdefault("raw_cold_gbps", []).append(raw["nbytes"] / GB / raw["t"])
            continue
        lib = s.setdefault(rec["lib"], {"t": [], "peak_rss_delta": [], "peak_rss": [],
                                        "rchar": [], "read_bytes": [], "mismatched": [],
                                        "disk_bytes": [], "per_rank_t": []})
        ranks = rec["ranks"]
        lib["t"].append(max(r["t"] for r in ranks))
        lib["per_rank_t"].append([r["t_op"] for r in ranks])
        lib.setdefault("per_rank_rss", []).append([r["peak_rss_delta"] for r in ranks])
        lib.setdefault("per_rank_rchar", []).append([r["rchar"] for r in ranks])
        lib.setdefault("per_rank_disk", []).append([r["read_bytes"] for r in ranks])
        lib.setdefault("per_rank_cpu", []).append([r.get("cpu_s", 0.0) for r in ranks])
        lib["peak_rss_delta"].append(max(r["peak_rss_delta"] for r in ranks))
        lib["peak_rss"].append(max(r["peak_rss"] for r in ranks))
        needed = sum(r.get("needed_bytes", 0) for r in ranks)
        if needed:
            lib["rchar"].append(sum(r["rchar"] for r in ranks) / needed)
            lib["read_bytes"].append(sum(r["read_bytes"] for r in ranks) / needed)
        lib["mismatched"] += [f"rep{rec['rep']}: {m}" for r in ranks for m in r.get("mismatched", [])]
        if ranks[0].get("disk_bytes"):
            lib["disk_bytes"].append(ranks[0]["disk_bytes"])
    for s in out.values():
        for lib in ("reshard", "dcp"):
            d = s.get(lib)
            if d is None:
                continue
            d["median_s"] = statistics.median(d["t"])
            d["gbps"] = s["logical_bytes"] / GB / d["median_s"]
            d["median_peak_rss_delta"] = statistics.median(d["peak_rss_delta"])
            d["median_rchar_amp"] = statistics.median(d["rchar"]) if d["rchar"] else None
            d["median_disk_amp"] = statistics.median(d["read_bytes"]) if d["read_bytes"] else None
            d["size_ratio"] = (s["logical_bytes"] / statistics.median(d["disk_bytes"])
                               if d["disk_bytes"] else None)
            d["verified"] = s["kind"] != "load" or not d["mismatched"]
    return out


def _limit_gbps(raw: dict[str, Any], name: str, nbytes: int) -> float | None:
    if not raw or not raw.get(name):
        return None
    return nbytes / GB / statistics.median(raw[name])


def _rss_ok(r: dict[str, Any], d: dict[str, Any]) -> bool:
    return r["median_peak_rss_delta"] <= d["median_peak_rss_delta"] + RSS_SLACK


def rows(summary: dict[str, Any], raw: dict[str, Any], raw_nbytes: int) -> list[dict[str, Any]]:
    """Table rows with the target each one is judged against."""
    lim_w = _limit_gbps(raw, "write_fsync", raw_nbytes)
    lim_cold = _limit_gbps(raw, "read_cold", raw_nbytes)
    lim_warm = _limit_gbps(raw, "read_warm", raw_nbytes)
    out = []
    for key, s in summary.items():
        r, d = s.get("reshard"), s.get("dcp")
        if not r or not d:
            continue
        speed = d["median_s"] / r["median_s"]
        row: dict[str, Any] = {"scenario": key, "reshard_s": r["median_s"], "dcp_s": d["median_s"],
                               "reshard_gbps": r["gbps"], "dcp_gbps": d["gbps"], "speedup": speed,
                               "rss_reshard": r["median_peak_rss_delta"],
                               "rss_dcp": d["median_peak_rss_delta"],
                               "amp_reshard": r["median_rchar_amp"], "amp_dcp": d["median_rchar_amp"],
                               "disk_amp_reshard": r["median_disk_amp"],
                               "verified": r["verified"] and d["verified"],
                               "mismatched": r["mismatched"] + d["mismatched"]}
        checks: list[tuple[str, bool]] = []
        limit = None
        tiny = s["job"].startswith("tiny")
        if s["kind"] == "save" and not s["job"].startswith("zstd") and not tiny:
            limit = lim_w
            checks.append((">= 1.0x DCP", speed >= 1.0))
            if limit:
                checks.append((">= 90% raw write", r["gbps"] >= 0.9 * limit))
        elif s["kind"] == "load" and not s["job"].startswith("zstd") and not tiny:
            limit = lim_warm
            if s["cache"] == "cold":
                # Judged against the raw cold read timed beside it when the run has one.
                beside = s.get("raw_cold_gbps")
                limit = statistics.median(beside) if beside else lim_cold
            if s["cache"] == "cold":
                if limit:
                    checks.append((">= 90% raw cold read", r["gbps"] >= 0.9 * limit))
            elif s["job"].startswith("RESHARD"):
                checks.append((">= 2.5x DCP", speed >= 2.5))
            else:
                checks.append((">= 1.5x DCP", speed >= 1.5))
            if r["median_rchar_amp"] is not None:
                checks.append(("read amp <= 1.05", r["median_rchar_amp"] <= 1.05))
            checks.append(("peak RSS <= DCP", _rss_ok(r, d)))
        elif s["job"].startswith("zstd"):
            checks.append((">= 2x DCP zstd", speed >= 2.0))
            if s["kind"] == "save":
                row["ratio_reshard"], row["ratio_dcp"] = r["size_ratio"], d["size_ratio"]
                if r["size_ratio"] and d["size_ratio"]:
                    checks.append(("ratio >= DCP", r["size_ratio"] >= d["size_ratio"] * 0.995))
            else:
                checks.append(("peak RSS <= DCP", _rss_ok(r, d)))
        row["limit_gbps"] = limit
        row["of_limit"] = r["gbps"] / limit if limit else None
        row["checks"] = checks
        out.append(row)
    tiny_rows = [x for x in out if x["scenario"].startswith("tiny")]
    if len(tiny_rows) == 2:
        rs = sum(x["reshard_s"] for x in tiny_rows)
        ds = sum(x["dcp_s"] for x in tiny_rows)
        out.append({"scenario": "tiny save+load w2", "reshard_s": rs, "dcp_s": ds,
                    "speedup": ds / rs, "verified": all(x["verified"] for x in tiny_rows),
                    "mismatched": [], "checks": [(">= 10x DCP", ds / rs >= 10)]})
    return out


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(meta: dict[str, Any], raw: dict[str, Any], raw_nbytes: int,
             table: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        f"reshard vs DCP (torch {meta['torch']}), {meta['cpus']} CPUs, {meta['size_gib']} GiB model "
        f"state, zstd datasets {meta['zstd_gib']} GiB (reshard level {meta['zstd_level']}, DCP level "
        f"3), {meta['tiny_n']} tiny tensors, reps "
        f"{meta['reps']} interleaved A/B, medians; load average {meta['loadavg_start']} at start, "
        f"{meta['loadavg_end']} at end; CPU speed check: a 5M-iteration Python loop took "
        f"{meta['python_loop_5M_cpu_s']:.2f} CPU s (~0.3-0.45 s on an idle core); "
        f"wall {meta['wall_s']:.0f} s; "
        f"cold = sync + POSIX_FADV_DONTNEED{' + drop_caches' if meta['drop_caches'] else ''}.",
        "",
    ]
    if raw:
        lines += ["| raw limit (1 process) | median s | GB/s |", "|---|---|---|"]
        for k, label in (("write_fsync", "write 16 MiB chunks + fsync"),
                         ("read_cold", "read 16 MiB readinto [cold]"),
                         ("read_warm", "read 16 MiB readinto [warm]"),
                         ("memcpy", "memcpy numpy copyto, prefaulted"),
                         ("memcpy_fresh", "memcpy into fresh memory (page faults)")):
            med = statistics.median(raw[k])
            lines.append(f"| {label} | {med:.3f} | {raw_nbytes / GB / med:.2f} |")
        lines.append("")
    lines += [
        "| scenario | reshard s (GB/s) | DCP s (GB/s) | speed vs DCP | reshard % of limit | "
        "read amp reshard / DCP | peak RSS Δ MiB reshard / DCP | verified | targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        amp = (f"{_f(r.get('amp_reshard'))} / {_f(r.get('amp_dcp'))}"
               if r.get("amp_reshard") is not None else "-")
        if r.get("ratio_reshard"):
            amp = f"size ratio {r['ratio_reshard']:.2f}x / {r['ratio_dcp']:.2f}x"
        rss = (f"{r['rss_reshard'] / 2**20:.0f} / {r['rss_dcp'] / 2**20:.0f}"
               if r.get("rss_reshard") is not None else "-")
        gb = (lambda k: f" ({r[k]:.2f})" if r.get(k) and not r["scenario"].startswith("tiny") else "")
        checks = ", ".join(f"{'PASS' if ok else 'MISS'} {name}" for name, ok in r["checks"])
        lines.append(
            f"| {r['scenario']} | {r['reshard_s']:.3f}{gb('reshard_gbps')} | "
            f"{r['dcp_s']:.3f}{gb('dcp_gbps')} | {r['speedup']:.2f}x | "
            f"{_f(r.get('of_limit'), '{:.0%}')} | {amp} | {rss} | "
            f"{'yes' if r['verified'] else 'NO'} | {checks} |"
        )
    beside = [(k, v["raw_cold_gbps"]) for k, v in summary.items() if v.get("raw_cold_gbps")]
    if beside:
        lines += ["", "Cold rows' % of limit is against a raw cold read timed beside them: after "
                  "each repetition's two loads, rank 0 alone evicts and reads the reshard "
                  "checkpoint's files in 16 MiB readinto calls (GB/s, median and range):", ""]
        lines += [f"- {k}: {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
                  for k, v in beside]
    lines += ["", "Per rank (median over repetitions): op seconds | CPU seconds | peak RSS growth "
              "MiB | MiB read (rchar, plus bytes reshard read through a memory map) | "
              "MiB from disk (read_bytes).", "",
              "| scenario | lib | s | cpu s | RSS Δ MiB | read MiB | disk MiB |",
              "|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        for lib in ("reshard", "dcp"):
            d = s.get(lib)
            if not d:
                continue
            cols = [_per_rank(d["per_rank_t"], 1, "{:.3f}"), _per_rank(d["per_rank_cpu"], 1, "{:.2f}"),
                    _per_rank(d["per_rank_rss"], 2**20, "{:.0f}"),
                    _per_rank(d["per_rank_rchar"], 2**20, "{:.0f}"),
                    _per_rank(d["per_rank_disk"], 2**20, "{:.0f}")]
            lines.append(f"| {key} | {lib} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def _per_rank(reps: list[list[float]], scale: float, fmt: str) -> str:
    """Median over repetitions of each rank's value, ranks joined by '/'."""
    per_rank = zip(*reps)
    return "/".join(fmt.format(statistics.median(v) / scale) for v in per_rank)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="0.25 GiB, 2 reps, 0.125 GiB zstd sets, 2000 tiny tensors (~2-3 min)")
    p.add_argument("--size-gib", type=float, default=None, help="model state size (default 1)")
    p.add_argument("--zstd-gib", type=float, default=None,
                   help="size of each zstd dataset (default size-gib / 2)")
    p.add_argument("--tiny-n", type=int, default=None, help="number of tiny tensors (5000)")
    p.add_argument("--zstd-level", type=int, default=3,
                   help="reshard's zstd level (DCP's ZStandard is always level 3)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per measurement (3)")
    p.add_argument("--only", default="", help=f"comma list of {','.join(SCENARIOS)}")
    p.add_argument("--skip", default="", help="comma list of scenarios to leave out")
    p.add_argument("--no-cold", action="store_true", help="skip the cold page cache loads")
    p.add_argument("--drop-caches", action="store_true",
                   help="also echo 3 > /proc/sys/vm/drop_caches for cold runs (root)")
    p.add_argument("--workdir", default=None, help="scratch folder (deleted at the end)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints in --workdir")
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    p.add_argument("--timeout-s", type=float, default=3600)
    a = p.parse_args(argv)
    q = a.quick
    a.size_gib = a.size_gib if a.size_gib is not None else (0.25 if q else 1.0)
    a.zstd_gib = a.zstd_gib if a.zstd_gib is not None else a.size_gib / 2
    a.tiny_n = a.tiny_n if a.tiny_n is not None else (2000 if q else 5000)
    a.reps = a.reps if a.reps is not None else (2 if q else 3)
    for name in (a.only + "," + a.skip).split(","):
        if name and name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    import torch

    from tests.helpers.world import run_world

    args = parse(argv)
    sel = set(args.only.split(",")) - {""} if args.only else set(SCENARIOS)
    sel -= set(args.skip.split(","))
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="reshard-bench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "size_gib": args.size_gib, "zstd_gib": args.zstd_gib,
            "tiny_n": args.tiny_n, "reps": args.reps, "zstd_level": args.zstd_level, "scenarios": sorted(sel),
            "drop_caches": args.drop_caches, "cold": not args.no_cold,
            "loadavg_start": "%.2f %.2f %.2f" % os.getloadavg(), "workdir": workdir,
            "python_loop_5M_cpu_s": probes.python_speed_s(),
            "argv": sys.argv[1:] if argv is None else argv}
    raw_nbytes = int(args.size_gib * state.GIB)
    raw: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    try:
        if "raw" in sel:
            print(f"[bench] raw limits on {raw_nbytes / GB:.2f} GB", flush=True)
            raw = raw_limits(workdir, raw_nbytes, args.reps, args.drop_caches)
        for world, jobs in plan_jobs(sel, args.reps, not args.no_cold).items():
            print(f"[bench] world {world}: {', '.join(j.name for j in jobs)}", flush=True)
            cfg = WorldConfig(workdir=workdir, size_gib=args.size_gib, zstd_gib=args.zstd_gib,
                              tiny_n=args.tiny_n, drop_caches=args.drop_caches,
                              zstd_level=args.zstd_level, jobs=jobs)
            t0 = time.time()
            out = run_world(world_main, world, cfg, timeout_s=args.timeout_s)
            records += out[0]
            print(f"[bench] world {world} done in {time.time() - t0:.0f} s", flush=True)
    finally:
        if not args.keep:
            probes.remove(workdir) if own_workdir else [probes.remove(p) for p in
                                                        probes_listing(workdir)]
    meta["wall_s"] = time.time() - t_start
    meta["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    summary = summarize(records, args)
    table = rows(summary, raw, raw_nbytes)
    md = markdown(meta, raw, raw_nbytes, table, summary)
    print(md)
    doc = {"meta": meta, "raw_limits_s": raw, "raw_nbytes": raw_nbytes, "summary": summary,
           "table": table, "records": records}
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md)
    failed = [r["scenario"] for r in table if not r["verified"]]
    if failed:
        print(f"[bench] VERIFICATION FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


def probes_listing(workdir: str) -> list[str]:
    """Checkpoints this run created in a caller-given workdir (never anything else)."""
    names = [n for n in os.listdir(workdir) if n.startswith(("reshard.", "dcp.", "raw.bin"))]
    return [os.path.join(workdir, n) for n in names]


if __name__ == "__main__":
    sys.exit(main())
