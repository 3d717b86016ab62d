"""Fast pickling of the slotted dataclasses that cross process boundaries.

Plans and manifests travel through torch.distributed's object collectives, which
pickle them. The default pickling of a frozen ``slots=True`` dataclass goes through
``dataclasses.fields()`` for every object (~20 us each), which dominated saves and
loads of thousands of small tensors. ``slots_reduce`` pickles the slot values as a
plain tuple instead (pickle format only; nothing on disk depends on it).
"""

from __future__ import annotations

from typing import Any


def rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    obj: Any = object.__new__(cls)
    for name, value in zip(cls.__slots__, values):  # type: ignore[attr-defined]
        object.__setattr__(obj, name, value)
    return obj


def slots_reduce(self: Any) -> tuple[Any, ...]:
    """A ``__reduce__`` for slotted dataclasses: rebuilt without running ``__init__``."""
    cls = type(self)
    return rebuild, (cls, tuple([getattr(self, n) for n in cls.__slots__]))
