"""Fast pickling of the slotted dataclasses that cross process boundaries.

Plans and manifests travel through torch.distributed's object collectives, which
pickle them. The default pickling of a frozen ``slots=True`` dataclass goes through
``dataclasses.fields()`` for every object (~20 us each), which dominated saves and
loads of thousands of small tensors. ``slots_reduce`` pickles the slot values as a
plain tuple instead (pickle format only; nothing on disk depends on it).
"""

from __future__ import annotations

from typing import Any

_SLOTS: dict[type, tuple[str, ...]] = {}


def all_slots(cls: type) -> tuple[str, ...]:
    """The slots of ``cls`` and of its bases, bases first. ``cls.__slots__`` alone holds
    only the fields a subclass adds: a subclass of a slotted dataclass (DCP's refused
    and pickled value entries) crossed to the other ranks without its key and value."""
    names = _SLOTS.get(cls)
    if names is None:
        found: list[str] = []
        for k in reversed(cls.__mro__):
            own = k.__dict__.get("__slots__", ())
            found.extend(n for n in ((own,) if isinstance(own, str) else own)
                         if n not in ("__dict__", "__weakref__"))
        names = _SLOTS[cls] = tuple(found)
    return names


def rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    obj: Any = object.__new__(cls)
    for name, value in zip(all_slots(cls), values):
        object.__setattr__(obj, name, value)
    return obj


def slots_reduce(self: Any) -> tuple[Any, ...]:
    """A ``__reduce__`` for slotted dataclasses: rebuilt without running ``__init__``."""
    cls = type(self)
    return rebuild, (cls, tuple([getattr(self, n) for n in all_slots(cls)]))
