from __future__ import annotations

import pytest

from ._state import FRAME_RAW_NBYTES


@pytest.fixture(autouse=True)
def _small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(FRAME_RAW_NBYTES))
    monkeypatch.setenv("RESHARD_IO_THREADS", "2")
