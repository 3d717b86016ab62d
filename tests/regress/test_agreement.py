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
