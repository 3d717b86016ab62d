"""Loads that fail on one rank raise the same error on every rank (no hang)."""

from __future__ import annotations

import pytest

from tests.helpers.world import run_world

from . import agree_worlds


@pytest.mark.dist
def test_corrupt_whole_chunk_on_one_rank_with_cooperative_reads(tmp_path):
    results = run_world(agree_worlds.whole_chunk_corrupt_with_exchange, 4, str(tmp_path),
                        timeout_s=90)
    assert all(r["clean"] == "no error" for r in results), results
    msgs = {r["corrupt"] for r in results}
    assert len(msgs) == 1, msgs
    (msg,) = msgs
    assert msg.startswith("CorruptCheckpointError") and "key 'v'" in msg and "CRC" in msg, msg


@pytest.mark.dist
def test_one_rank_failing_before_the_first_agreement(tmp_path):
    results = run_world(agree_worlds.one_rank_fails_to_start, 3, str(tmp_path), timeout_s=150)
    out = results[0]
    assert out["after"] == ["no error"] * 3
    expect = {
        "load_storage_options": ("CheckpointError", "storage_options", "failed on rank 1"),
        "load_bad_threads_exchange": ("RESHARD_IO_THREADS", "failed on rank 2"),
        "load_bad_map_reads": ("RESHARD_MAP_READS",),
        "save_empty_path": ("checkpoint path is empty", "failed on rank 2"),
    }
    for case, words in expect.items():
        msgs = set(out[case])
        assert len(msgs) == 1, (case, out[case])
        (msg,) = msgs
        assert all(w in msg for w in words), (case, msg)
