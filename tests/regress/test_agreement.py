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


@pytest.fixture(scope="module")
def world_of_3(tmp_path_factory):
    return run_world(agree_worlds.world_of_3, 3, str(tmp_path_factory.mktemp("agree3")),
                     timeout_s=150)[0]


def _check(out, expect):
    for case, words in expect.items():
        msgs = set(out[case])
        assert len(msgs) == 1, (case, out[case])
        (msg,) = msgs
        missing = [w for w in words if w not in msg]
        assert not missing, (case, missing, msg)


@pytest.mark.dist
def test_one_rank_failing_before_the_first_agreement(world_of_3):
    assert world_of_3["after"] == ["no error"] * 3
    _check(world_of_3, {
        "load_storage_options": ("CheckpointError", "storage_options", "failed on rank 1"),
        "load_bad_threads_exchange": ("RESHARD_IO_THREADS", "failed on rank 2"),
        "load_bad_map_reads": ("RESHARD_MAP_READS",),
        "save_empty_path": ("checkpoint path is empty", "failed on rank 2"),
        "async_save_empty_path": ("checkpoint path is empty", "failed on rank 1"),
    })


@pytest.mark.dist
def test_state_dicts_that_disagree_with_the_checkpoint(world_of_3):
    _check(world_of_3, {
        "dtensor_shape_all": ("LayoutMismatchError", "key 'w'", "[7, 5]", "[7, 6]"),
        "plain_shape_rank1": ("LayoutMismatchError", "key 'b'", "[4]", "[5]", "failed on rank 1"),
        "ndim_all": ("LayoutMismatchError", "key 'w'", "[7, 5]", "[35]"),
        "missing_rank2": ("MissingKeysError", "'not_saved'", "strict=False", "failed on rank 2"),
        "tensor_for_value": ("LayoutMismatchError", "key 'step'", "plain value"),
        "local_shape_rank0": ("LayoutMismatchError", "key 'w'", "[4, 5]", "[3, 5]",
                              "failed on rank 0"),
        "lenient": ("no error",),
    })
