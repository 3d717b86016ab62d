"""The bench report judges each cold load against the raw cold read timed beside it."""

from __future__ import annotations

import argparse

from bench import run

GB = run.GB


def _load(job: str, lib: str, rep: int, t: float, nbytes: int) -> dict:
    rank = {"t": t, "t_op": t, "cpu_s": t / 2, "peak_rss_delta": 0, "peak_rss": 0,
            "rchar": nbytes, "read_bytes": nbytes, "needed_bytes": nbytes, "mismatched": []}
    return {"job": job, "kind": "load", "cache": "cold", "lib": lib, "rep": rep, "ranks": [rank]}


def _raw(job: str, rep: int, t: float, nbytes: int) -> dict:
    return {"job": job, "kind": "load", "cache": "cold", "lib": "raw", "rep": rep,
            "ranks": [{"t": t, "nbytes": nbytes}]}


def test_cold_rows_use_the_raw_read_timed_beside_them() -> None:
    args = argparse.Namespace(size_gib=1.0, zstd_gib=0.5, tiny_n=10)
    job = "load w2 Shard(0) -> w2 Shard(0)"
    logical = run._logical_bytes(job, args)
    records = []
    for rep, raw_t in enumerate((2.0, 1.0, 4.0)):
        records += [_load(job, "reshard", rep, 1.25, logical), _load(job, "dcp", rep, 2.5, logical),
                    _raw(job, rep, raw_t, logical)]
    summary = run.summarize(records, args)
    s = summary[f"{job} [cold]"]
    assert "raw" not in s  # not a library: no time or RSS columns of its own
    assert s["raw_cold_gbps"] == [logical / GB / 2.0, logical / GB / 1.0, logical / GB / 4.0]
    # The opening raw read (0.1 s, very fast) is not what the row is judged against.
    opening = {"write_fsync": [1.0], "read_cold": [0.1], "read_warm": [0.1]}
    (row,) = run.rows(summary, opening, logical)
    assert row["limit_gbps"] == logical / GB / 2.0  # median of the reads beside it
    assert abs(row["of_limit"] - 2.0 / 1.25) < 1e-9
    assert (">= 90% raw cold read", True) in row["checks"]
    md = run.markdown({"torch": "x", "cpus": 2, "size_gib": 1.0, "zstd_gib": 0.5, "zstd_level": 3,
                       "tiny_n": 10, "reps": 3, "loadavg_start": "0", "loadavg_end": "0",
                       "python_loop_5M_cpu_s": 0.3, "wall_s": 1.0, "drop_caches": False},
                      {}, logical, [row], summary)
    assert f"- {job} [cold]: {logical / GB / 2.0:.2f}" in md


def test_without_reads_beside_them_cold_rows_fall_back_to_the_opening_read() -> None:
    args = argparse.Namespace(size_gib=1.0, zstd_gib=0.5, tiny_n=10)
    job = "load w2 Shard(0) -> w2 Shard(0)"
    logical = run._logical_bytes(job, args)
    records = [_load(job, "reshard", 0, 1.0, logical), _load(job, "dcp", 0, 2.0, logical)]
    (row,) = run.rows(run.summarize(records, args), {"read_cold": [0.5], "read_warm": [0.1],
                                                      "write_fsync": [1.0]}, logical)
    assert row["limit_gbps"] == logical / GB / 0.5
    assert (">= 90% raw cold read", False) in row["checks"]
