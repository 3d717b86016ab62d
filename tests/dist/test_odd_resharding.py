"""Save -> load across odd layouts (tests/dist/odd_scenarios.py): world sizes 1-4 in
both directions (4->3, 3->2, 2->3, 1->3, ...), meshes with size-1 dims, two mesh dims
sharding one tensor dim, empty, 0-d and 0-sized tensors, every supported dtype compared
bit for bit, destinations that are views (nothing outside them may change), DTensors
over LocalShardsWrapper and checkpointable-protocol layouts with several pieces per rank,
eight codec/frame configurations, loads with mapped reads off, cooperative reads on and
tiny read pieces.

The pytest process saves the world-of-1 sources, worlds of 4, 3 and 2 ranks run at
once (each saves, waits for the sources it loads, loads and checks), then the pytest
process loads the world-of-1 targets.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

from . import odd_worlds
from .layouts import Meshes
from .odd_scenarios import CODECS, SCENARIOS

pytestmark = pytest.mark.dist


def odd_world(rank: int, world: int, root: str) -> tuple[list[Any], list[str]]:
    t0 = time.perf_counter()
    meshes = Meshes()
    with failing_marks(root, world):
        odd_worlds.save_sources(rank, world, root, meshes)
    t1 = time.perf_counter()
    if rank == 0:
        mark_stage(root, world, "saved")
    for source in sorted({s.save.world for s in SCENARIOS if s.load.world == world} - {1, world}):
        wait_for_stage(root, source, "saved")
    t2 = time.perf_counter()
    problems, runs = odd_worlds.load_targets(rank, world, root, meshes)
    t3 = time.perf_counter()
    return problems, runs + [f"time{world}.{rank}:save {t1 - t0:.1f} wait {t2 - t1:.1f} "
                             f"load {t3 - t2:.1f}"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = str(tmp_path_factory.mktemp("odd"))
    odd_worlds.save_sources(0, 1, root, None)
    results = run_worlds_at_once(odd_world, (4, 3, 2), root, timeout_s=300)
    problems: list[Any] = []
    runs: list[str] = []
    for world in (4, 3, 2):
        if isinstance(results[world], BaseException):
            raise results[world]
        for rank_problems, rank_runs in results[world]:
            problems += rank_problems
            runs += rank_runs
    t0 = time.perf_counter()
    p1, r1 = odd_worlds.load_targets(0, 1, root, None)
    print("world of 1 load", round(time.perf_counter() - t0, 1), "s;",
          sorted(r for r in runs if r.startswith("time")))
    return {"problems": problems + p1, "runs": set(runs + r1), "root": root}


@pytest.mark.parametrize("load_world", [4, 3, 2, 1])
def test_every_element_lands_where_it_belongs(outcome: dict[str, Any], load_world: int) -> None:
    names = [s.name for s in SCENARIOS if s.load.world == load_world]
    bad = [p for p in outcome["problems"] if p[1] == load_world]
    lines = [f"{n} [rank {r}]: {m}" for n, _, r, m in bad[:30]]
    assert not bad, f"{len(bad)} problems in {len(names)} scenarios:\n" + "\n".join(lines)


def test_every_transition_and_load_setting_ran(outcome: dict[str, Any]) -> None:
    pairs = {f"{s.save.world}to{s.load.world}" for s in SCENARIOS}
    assert {"4to3", "3to2", "2to3", "1to3", "3to4", "4to1"} <= pairs
    for pair in pairs:
        assert any(r.startswith(pair) for r in outcome["runs"]), pair
    for env in ("default", "nomap", "exchange", "pieces", "exchange-nomap"):
        assert any(r.endswith("-" + env) for r in outcome["runs"]), env
    # The cooperative reads really ran in every world of several ranks.
    used = {int(r.split(":")[1]) for r in outcome["runs"] if r.startswith("exchanged")
            and not r.startswith("exchanged1")}
    assert used and min(used) > 0, sorted(r for r in outcome["runs"] if r.startswith("exchanged"))


def test_every_checkpoint_verifies_whole(outcome: dict[str, Any]) -> None:
    """Every checkpoint of the table (each world, codec and frame size, async saves too)
    passes reshard.verify: every frame read and checksummed, no stray data files."""
    import os

    import reshard

    paths = sorted(p for p in os.listdir(outcome["root"]) if p.startswith("from"))
    assert len(paths) == 4 * len(CODECS), paths
    bad = {}
    for p in paths:
        report = reshard.verify(os.path.join(outcome["root"], p))
        if not report.ok:
            bad[p] = report
    assert not bad, bad
