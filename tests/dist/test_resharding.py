"""SCENARIOS.md groups A-F: save under one layout and world size, load under another.

Few worlds run every scenario of the table in scenarios.py, once per codec:

worlds of 4, 3 and 2 ranks run at the same time; each saves its source checkpoints,
waits (flag files) for the sources it loads from, then loads every scenario targeting
its size: 4 ranks load what 4, 3 and 2 ranks saved, 3 and 2 ranks what 4 saved. Then
the pytest process loads into plain tensors with no torch.distributed at all, and an
unregistered codec must fail on every rank.

Each rank checks every element it holds against the saved global arange tensor and
reports problems by scenario name instead of raising, so one module fixture collects
them all and the group tests below assert on their own scenarios.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import reshard
from tests.helpers.column_checks import column_checksums_on_small_boxes
from tests.helpers.world import failing_marks, mark_stage, run_worlds_at_once, wait_for_stage

from .codec_util import RotateCodec, register_test_codecs
from .layouts import Meshes, build, check, global_tensor
from .scenarios import CODECS, FRAME_RAW_NBYTES, MAX_PIECE_NBYTES, SCENARIOS, Scenario

pytestmark = pytest.mark.dist

SECRET_CODEC = "test-secret"  # registered only in the world of 3 that saves with it
Problem = tuple[str, str, int, int, str]  # (scenario, codec, load world, rank, message)


def _path(root: str, save_world: int, codec: str) -> str:
    return os.path.join(root, f"from{save_world}-{codec}")


def _seed(s: Scenario) -> int:
    return sum(map(ord, s.name)) % 97  # distinct values per key, still exact in small dtypes


def _global(s: Scenario) -> Any:
    return global_tensor(s.shape, s.dtype, _seed(s))


# Saving


def _save_sources(rank: int, world: int, root: str, meshes: Meshes) -> dict[str, float]:
    mine = [s for s in SCENARIOS if s.save.world == world]
    sd = {s.name: build(s.save, s.shape, s.dtype, rank, meshes, _global(s)) for s in mine}
    times = {}
    for codec in CODECS:
        os.environ["RESHARD_FRAME_RAW_NBYTES"] = FRAME_RAW_NBYTES[codec]
        t0 = time.perf_counter()
        parts = COLUMN_PARTS.get(world) if codec == "identity" else None
        with column_checksums_on_small_boxes(parts):
            reshard.save(sd, _path(root, world, codec), codec=codec)
        times[f"save{world}-{codec}"] = time.perf_counter() - t0
        if parts and rank == 0 and not _has_column_crcs(_path(root, world, codec)):
            raise AssertionError(f"the identity save of world {world} has no column checksums")
    os.environ.pop("RESHARD_FRAME_RAW_NBYTES")
    return times


COLUMN_PARTS = {4: 2, 2: 3}
"""Identity saves of these worlds give every box of two or more dims column checksums in
this many parts, with tiles of a few rows: the table's loads then read columns through
them (with mapped reads; the others read frames). World 3 saves as by default."""


def _has_column_crcs(path: str) -> bool:
    import json

    with open(os.path.join(path, "manifest.json")) as f:
        doc = json.load(f)
    return any("column_crcs" in c for e in doc["entries"] if e["kind"] == "tensor" for c in e["chunks"])


def _save_secret(root: str) -> None:
    """A checkpoint whose codec only the world of 3 ever registers."""
    import torch

    reshard.register_codec(RotateCodec(name=SECRET_CODEC, shift=5))
    reshard.save({"x": global_tensor((7, 5), torch.float32)}, os.path.join(root, "secret"),
                 codec=SECRET_CODEC)


# Loading


def _load_and_check(scenarios: list[Scenario], path: str, codec: str, rank: int, world: int,
                    meshes: Meshes | None) -> list[Problem]:
    sd = {s.name: build(s.load, s.shape, s.dtype, rank, meshes, None) for s in scenarios}
    try:
        reshard.load(sd, path)
    except Exception as e:  # noqa: BLE001 - narrowed down below, scenario by scenario
        if len(scenarios) == 1:
            return [(scenarios[0].name, codec, world, rank, f"load raised {type(e).__name__}: {e}")]
        out: list[Problem] = []
        for s in scenarios:  # every rank takes the same path: collectives stay matched
            out += _load_and_check([s], path, codec, rank, world, meshes)
        return out
    problems: list[Problem] = []
    for s in scenarios:
        want = _global(s)
        for msg in check(s.load, sd[s.name], want, meshes):
            problems.append((s.name, codec, world, rank, msg))
        if meshes is not None:
            for msg in _collective_checks(s, sd[s.name], want, rank, meshes):
                problems.append((s.name, codec, world, rank, msg))
    return problems


def _collective_checks(s: Scenario, loaded: Any, want: Any, rank: int, meshes: Meshes) -> list[str]:
    """Same mesh: redistributing back must give each rank exactly the local tensor it saved.
    Other meshes: the gathered full tensor must equal the saved one."""
    import torch

    if s.same_mesh:
        back = loaded.redistribute(loaded.device_mesh, s.save.torch_placements()).to_local()
        saved = build(s.save, s.shape, s.dtype, rank, meshes, want).to_local()
        if not torch.equal(back, saved):
            return [f"redistribute back to {s.save}: local {back.tolist()} != saved {saved.tolist()}"]
    elif s.name.startswith("b_") and type(s.load).__name__ == "Mesh":
        if not torch.equal(loaded.full_tensor(), want):
            return ["full_tensor() after load differs from the saved tensor"]
    return []


def _load_targets(
    rank: int, world: int, root: str, meshes: Meshes | None
) -> tuple[list[Problem], dict[str, float]]:
    problems: list[Problem] = []
    times: dict[str, float] = {}
    by_source: dict[int, list[Scenario]] = defaultdict(list)
    for s in SCENARIOS:
        if s.load.world == world:
            by_source[s.save.world].append(s)
    for save_world_size, scenarios in sorted(by_source.items()):
        for i, codec in enumerate(CODECS):
            os.environ["RESHARD_MAX_PIECE_NBYTES"] = MAX_PIECE_NBYTES[codec]
            # Mapped reads and reads into buffers, each codec both ways across sources.
            os.environ["RESHARD_MAP_READS"] = str((save_world_size + i) % 2)
            t0 = time.perf_counter()
            problems += _load_and_check(scenarios, _path(root, save_world_size, codec), codec, rank,
                                        world, meshes)
            times[f"load{save_world_size}to{world}-{codec}"] = time.perf_counter() - t0
    os.environ.pop("RESHARD_MAX_PIECE_NBYTES", None)
    os.environ.pop("RESHARD_MAP_READS", None)
    return problems, times


def _unknown_codec(rank: int, world: int, root: str) -> list[Problem]:
    import torch

    sd = {"x": torch.zeros(7, 5)}
    try:
        reshard.load(sd, os.path.join(root, "secret"))
    except reshard.UnknownCodecError as e:
        if SECRET_CODEC in str(e):
            return []
        return [("f_unknown_codec", SECRET_CODEC, world, rank, f"message lacks the codec name: {e}")]
    except Exception as e:  # noqa: BLE001
        return [("f_unknown_codec", SECRET_CODEC, world, rank, f"raised {type(e).__name__}: {e}")]
    return [("f_unknown_codec", SECRET_CODEC, world, rank, "load did not raise")]


def scenario_world(rank: int, world: int, root: str) -> tuple[list[Problem], dict[str, float]]:
    """Save this world's sources, then load every scenario targeting this world size."""
    register_test_codecs()
    meshes = Meshes()
    with failing_marks(root, world):
        times = _save_sources(rank, world, root, meshes)
        if world == 3:
            _save_secret(root)
    if rank == 0:
        mark_stage(root, world, "saved")
    for source in sorted({s.save.world for s in SCENARIOS if s.load.world == world} - {world}):
        wait_for_stage(root, source, "saved")
    problems, load_times = _load_targets(rank, world, root, meshes)
    if world == 4:
        problems += _unknown_codec(rank, world, root)
    return problems, {**times, **load_times}


# The worlds, run once per module


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Worlds of 4, 3 and 2 ranks run at the same time (each imports torch once), then the
    pytest process loads into plain tensors."""
    root = str(tmp_path_factory.mktemp("scenarios"))
    results = run_worlds_at_once(scenario_world, (4, 3, 2), root, timeout_s=240)
    problems: list[Problem] = []
    times: dict[str, float] = {}
    for world in (4, 3, 2):
        if isinstance(results[world], BaseException):
            raise results[world]
        for rank_problems, rank_times in results[world]:
            problems += rank_problems
            times.update(rank_times)
    register_test_codecs()
    p1, t1 = _load_targets(0, 1, root, None)
    problems += p1
    times.update(t1)
    return {"root": root, "problems": problems, "times": times}


def _report(problems: list[Problem]) -> str:
    lines = [f"{name} [codec={codec}, load world {w}, rank {r}]: {msg}"
             for name, codec, w, r, msg in problems[:40]]
    more = len(problems) - 40
    return "\n".join(lines) + (f"\n... and {more} more" if more > 0 else "")


def _assert_group(outcome: dict[str, Any], prefix: str) -> None:
    names = [s.name for s in SCENARIOS if s.name.startswith(prefix)]
    assert names, f"no scenarios named {prefix}*"
    bad = [p for p in outcome["problems"] if p[0].startswith(prefix)]
    assert not bad, f"{len(bad)} problems in {len(names)} scenarios:\n{_report(bad)}"


def test_group_a_placement_change_same_mesh(outcome: dict[str, Any]) -> None:
    _assert_group(outcome, "a_")


def test_group_b_mesh_change(outcome: dict[str, Any]) -> None:
    _assert_group(outcome, "b_")


def test_group_c_world_size_change(outcome: dict[str, Any]) -> None:
    _assert_group(outcome, "c_")
    targets = {(s.save.world, s.load.world) for s in SCENARIOS if s.name.startswith("c_")}
    assert {(4, 3), (4, 2), (4, 1), (3, 4), (2, 4)} <= targets


def test_group_d_uneven_and_empty_shards(outcome: dict[str, Any]) -> None:
    _assert_group(outcome, "d_")


def test_group_e_custom_shard_layouts(outcome: dict[str, Any]) -> None:
    _assert_group(outcome, "e_")


def test_group_f_codecs(outcome: dict[str, Any]) -> None:
    bad = [p for p in outcome["problems"] if p[1] != "identity"]
    assert not bad, _report(bad)
    for codec in CODECS:
        assert any(k.endswith(codec) for k in outcome["times"]), f"{codec} never ran"


def test_group_f_codec_data_is_transformed(outcome: dict[str, Any]) -> None:
    """The codec really ran: chunks name it, and the raw bytes of a replicated tensor
    (one chunk) appear in the data file only when stored with the identity codec."""
    s = next(s for s in SCENARIOS if s.name == "a_1d_r_to_s0")
    raw = _global(s).numpy().tobytes()
    for codec in CODECS:
        path = _path(outcome["root"], 4, codec)
        with reshard.open(path) as ck:
            (chunk,) = ck.info(s.name).chunks
        # "zstd" splits elements wider than a byte into byte planes (planes-zstd on disk).
        wide = s.dtype.itemsize > 1
        assert chunk.codec == ("planes-zstd" if codec == "zstd" and wide else codec)
        stored = Path(path, chunk.file).read_bytes()
        assert (raw in stored) == (codec == "identity"), codec


def test_group_f_unknown_codec_fails_everywhere(outcome: dict[str, Any]) -> None:
    """Every rank of the world of 4 raised UnknownCodecError naming the codec (checked in
    the ranks); the pytest process, which never registered it either, does the same."""
    bad = [p for p in outcome["problems"] if p[0] == "f_unknown_codec"]
    assert not bad, _report(bad)
    path = os.path.join(outcome["root"], "secret")
    with pytest.raises(reshard.UnknownCodecError, match=SECRET_CODEC):
        reshard.open(path).read("x")
    import torch

    with pytest.raises(reshard.UnknownCodecError, match=SECRET_CODEC):
        reshard.load({"x": torch.zeros(7, 5)}, path)


def test_every_rank_reported(outcome: dict[str, Any]) -> None:
    """Each load phase ran: the timing table names every (source, target, codec)."""
    keys = set(outcome["times"])
    for src, dst in {(s.save.world, s.load.world) for s in SCENARIOS}:
        for codec in CODECS:
            assert f"load{src}to{dst}-{codec}" in keys
    print("phase times (s):", {k: round(v, 2) for k, v in sorted(outcome["times"].items())})

