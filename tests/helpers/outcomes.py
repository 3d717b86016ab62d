"""What a call inside a spawned world ended with, as text every rank can report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reshard


def error_text(fn: Callable[[], Any]) -> str:
    """``"<ErrorType>: <message>"`` for a CheckpointError, ``"unexpected ..."`` for any
    other exception (the test fails on it), ``"no error"`` when ``fn`` returned."""
    try:
        fn()
    except reshard.CheckpointError as e:
        return f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - reported, the test fails on it
        return f"unexpected {type(e).__name__}: {e}"
    return "no error"
