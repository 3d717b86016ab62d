"""core.layout's memory-sharing tests for strided views, against brute force."""

from __future__ import annotations

import itertools
import math
import random

from reshard.core.layout import strides_overlap, views_overlap


def _addresses(sizes: list[int], strides: list[int], at: int = 0) -> list[int]:
    return [at + sum(i * s for i, s in zip(idx, strides))
            for idx in itertools.product(*[range(n) for n in sizes])]


def test_strides_overlap_against_brute_force() -> None:
    rng = random.Random(0)
    decided = 0
    for _ in range(5000):
        nd = rng.randint(1, 3)
        sizes = [rng.randint(0, 5) for _ in range(nd)]
        strides = [rng.randint(0, 12) for _ in range(nd)]
        addrs = _addresses(sizes, strides)
        want = len(set(addrs)) < len(addrs)
        assert strides_overlap(sizes, strides) is want, (sizes, strides)
        fast = strides_overlap(sizes, strides, max_exact=0)
        assert fast in (want, None), (sizes, strides)
        decided += fast is not None
    assert decided > 1000  # most layouts are told without enumerating
    # Views that slicing, transposing and channels_last give are told at once.
    assert strides_overlap((2, 3, 4, 5), (60, 1, 15, 3), max_exact=0) is False
    assert strides_overlap((5, 3), (8, 1), max_exact=0) is False
    assert strides_overlap((4, 4), (1, 4), max_exact=0) is False
    assert strides_overlap((4, 4), (2, 1)) is True
    assert strides_overlap((2, 3), (3, 2)) is False  # interleaved, no element shared
    assert strides_overlap((3000, 3000), (2, 1), max_exact=1000) is None


def test_views_overlap_against_brute_force() -> None:
    rng = random.Random(1)
    decided = 0
    for _ in range(5000):
        nd = rng.randint(1, 3)
        base = [rng.randint(1, 6) for _ in range(nd)]
        strides = [math.prod(base[i + 1:]) for i in range(nd)]
        if rng.random() < 0.3:
            strides = [rng.randint(0, 7) for _ in range(nd)]
        a = [rng.randint(0, n) for n in base]
        b = [rng.randint(0, n) for n in base]
        gap = rng.randint(-40, 40)
        want = bool(set(_addresses(a, strides)) & set(_addresses(b, strides, gap)))
        assert views_overlap(gap, a, b, strides) is want, (gap, a, b, strides)
        fast = views_overlap(gap, a, b, strides, max_exact=0)
        assert fast in (want, None), (gap, a, b, strides)
        decided += fast is not None
    assert decided > 2500
    # Column views of a fused (4096, 12288) weight: told without enumerating.
    assert views_overlap(4096, (4096, 4096), (4096, 4096), (12288, 1), max_exact=0) is False
    assert views_overlap(4095, (4096, 4096), (4096, 4096), (12288, 1), max_exact=0) is True
