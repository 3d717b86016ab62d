"""Pause Python's cyclic garbage collector around bulk object building.

Plans and manifests of large worlds create millions of small, acyclic objects (boxes,
chunks, frames, tuples, dicts). Each allocation burst triggers collections that walk
every tracked object, which made building and parsing a manifest ~2x slower (simulated
256 ranks x 500 tensors, CPU s: manifest build+JSON 5.7 -> 2.6, parse 5.7 -> 3.3).
Nothing built here forms cycles, so pausing frees nothing late.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def without_gc(fn: F) -> F:
    """Run ``fn`` with the cyclic GC paused (restored afterwards if it was enabled)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]
