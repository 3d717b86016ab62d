"""Fast positional constructors for the frozen slotted dataclasses built by the million.

A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__`` looked
up at each call, with keyword arguments: ~1 us for a two-field ``Box``, ~3 us for an
eight-field ``Chunk``. Manifests and plans of large worlds build millions of them
(2,048 ranks x 500 tensors: 845k chunks, frames and boxes, 1M descriptions), where
that alone costs seconds. ``fast_constructor`` returns a function taking the fields
positionally, in slot order, that stores them through the slot descriptors: about half
the time, and the same object (equal, hashable, immutable) as the class would build.
It runs no ``__post_init__`` and checks nothing, so it is only for classes without one,
fed values the caller has already checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """``make(*fields)`` building a ``cls`` from its fields in ``cls.__slots__`` order."""
    names = tuple(cls.__slots__)  # type: ignore[attr-defined]
    if getattr(cls, "__post_init__", None) is not None:
        raise TypeError(f"{cls.__name__} has a __post_init__ that a fast constructor would skip")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = []
    for i, name in enumerate(names):
        if not name.isidentifier() or name.startswith("_") or name == "obj":
            raise TypeError(f"{cls.__name__}: slot {name!r} cannot be a parameter name here")
        scope[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(obj, {name})")
    # Generated source, as dataclasses itself does: a loop over the setters costs twice
    # as much per object as these unrolled calls.
    source = (f"def make({', '.join(names)}):\n    obj = _new(_cls)\n" + "\n".join(lines)
              + "\n    return obj\n")
    exec(source, scope)  # noqa: S102 - the source is built from the class's own slot names
    make: Callable[..., T] = scope["make"]
    make.__qualname__ = f"fast_constructor({cls.__name__})"
    return make
