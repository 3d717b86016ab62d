"""plan_save's bulk paths (ranks taken whole by _SameKeys, writers chosen by
_assign_in_bulk) give exactly the plan, or the error, of the one-at-a-time loop."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.core import planner
from reshard.core.layout import Box
from reshard.core.planner import TensorDesc, ValueDesc, plan_save
from reshard.errors import LayoutMismatchError

from ._strategies import grid_tilings, shapes

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


@st.composite
def worlds(draw: st.DrawFn) -> list[list[object]]:
    """Every rank's descriptions: tensors tiled by grids whose boxes some ranks hold
    (replicas included), plain values, and on some ranks another key order, a missing or
    extra box, an odd dtype, shape or dims."""
    world = draw(st.integers(1, 9))
    n_tensors = draw(st.integers(1, 5))
    tensors = []
    for t in range(n_tensors):
        shape = draw(shapes(max_ndim=3, max_dim=6, min_dim=1))
        boxes = draw(grid_tilings(shape))
        holders = [draw(st.lists(st.integers(0, world - 1), min_size=1, max_size=3, unique=True))
                   for _ in boxes]
        tensors.append((f"t{t}", shape, boxes, holders))
    per_rank: list[list[object]] = []
    for rank in range(world):
        descs: list[object] = []
        for name, shape, boxes, holders in tensors:
            mine = tuple(b for b, h in zip(boxes, holders) if rank in h)
            if not mine:
                mine = (Box((0,) * len(shape), (0,) * len(shape)),)
            descs.append(TensorDesc(key=(name,), dtype="float32", shape=shape, container="torch",
                                    boxes=mine))
        if draw(st.booleans()):
            descs.append(ValueDesc(key=("v",), value={"type": "int", "value": 1}))
        odd = draw(st.sampled_from(["none"] * 6 + ["reverse", "dtype", "shape", "dims", "drop", "empty"]))
        if odd == "reverse":
            descs.reverse()
        elif odd in ("dtype", "shape", "dims", "drop", "empty"):
            i = draw(st.integers(0, len(descs) - 1))
            d = descs[i]
            if isinstance(d, TensorDesc):
                if odd == "dtype":
                    d = TensorDesc(key=d.key, dtype="int64", shape=d.shape, container="torch", boxes=d.boxes)
                elif odd == "shape":
                    d = TensorDesc(key=d.key, dtype=d.dtype, shape=(*d.shape, 1), container="torch",
                                   boxes=d.boxes)
                elif odd == "dims":
                    b = d.boxes[0]
                    d = TensorDesc(key=d.key, dtype=d.dtype, shape=d.shape, container="torch",
                                   boxes=(Box((*b.offsets, 0), (*b.sizes, 1)),))
                elif odd == "empty":
                    d = TensorDesc(key=d.key, dtype=d.dtype, shape=d.shape, container="torch", boxes=())
                descs[i] = d
            if odd == "drop":
                descs.pop(i)
        per_rank.append(descs)
    return per_rank


def _plan(per_rank: list[list[object]]) -> object:
    try:
        plan = plan_save(per_rank)  # type: ignore[arg-type]
    except LayoutMismatchError as e:
        return f"LayoutMismatchError: {e}"
    return plan.entries, [[(t.item_index, t.box_index) for t in ts] for ts in plan.tasks]


def _one_at_a_time(per_rank: list[list[object]]) -> object:
    with mock.patch.object(planner._SameKeys, "of", staticmethod(lambda *a: None)), \
            mock.patch.object(planner, "_assign_in_bulk", planner._assign_one_by_one):
        return _plan(per_rank)


@SETTINGS
@given(per_rank=worlds())
def test_bulk_paths_plan_as_the_loop_does(per_rank: list[list[object]]) -> None:
    assert _plan(per_rank) == _one_at_a_time(per_rank)


@SETTINGS
@given(per_rank=worlds())
def test_bulk_assignment_matches_one_by_one(per_rank: list[list[object]]) -> None:
    """Forced into _assign_in_bulk whatever the share of replicated boxes."""
    with mock.patch.object(planner, "_assign_one_by_one", planner._assign_in_bulk):
        bulk = _plan(per_rank)
    assert bulk == _one_at_a_time(per_rank)


def test_ranks_of_one_layout_are_taken_whole() -> None:
    """The common case does take the bulk path: every rank after the first."""
    per_rank: list[list[object]] = [
        [TensorDesc(key=(f"t{t}",), dtype="float32", shape=(4, 6), container="torch",
                    boxes=(Box((r // 2 * 2, r % 2 * 3), (2, 3)),)) for t in range(3)]
        for r in range(4)]
    for descs in per_rank:  # a plain value among the tensors does not stop it
        descs.insert(1, ValueDesc(key=("step",), value={"type": "int", "value": 3}))
    taken = []
    real = planner._SameKeys.numbers

    def numbers(self: object, descs: list[object]) -> object:
        out = real(self, descs)  # type: ignore[arg-type]
        taken.append(out is not None)
        return out

    with mock.patch.object(planner._SameKeys, "numbers", numbers):
        got = _plan(per_rank)
    assert taken == [True, True, True]
    assert got == _one_at_a_time(per_rank)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(per_rank=worlds())
def test_runs_cut_short_plan_the_same(per_rank: list[list[object]]) -> None:
    """Runs of ranks are appended every _RUN_RANKS ranks: any cut gives the same plan."""
    with mock.patch.object(planner, "_RUN_RANKS", 2):
        short = _plan(per_rank)
    assert short == _one_at_a_time(per_rank)
