from __future__ import annotations

import pytest

from ._state import FRAME_RAW_NBYTES


@pytest.fixture(autouse=True)
def _small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(FRAME_RAW_NBYTES))
    monkeypatch.setenv("RESHARD_IO_THREADS", "2")
    # The next save removes every leftover of the saves these tests kill or fail.
    monkeypatch.setenv("RESHARD_LEFTOVER_AGE_S", "0")
