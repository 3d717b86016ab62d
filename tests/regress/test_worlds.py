"""Regressions found by red-teaming, in spawned gloo worlds."""

from __future__ import annotations

import pytest

from tests.helpers.world import run_world

from . import worlds


@pytest.mark.dist
def test_world_of_4_disagreeing_ranks_and_odd_layouts(tmp_path):
    results = run_world(worlds.world_of_4, 4, str(tmp_path), timeout_s=150)
    problems = [f"rank {r}: {p}" for r, out in enumerate(results) for p in out]
    assert not problems, "\n".join(problems)
