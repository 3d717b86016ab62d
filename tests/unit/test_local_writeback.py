"""Local data files ask the OS to start writing every RESHARD_WRITEBACK_NBYTES, so the
fsync that ends a save has only the tail left; 0 turns it off. The bytes are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from reshard.storage import LocalStore, local, new_file


@pytest.mark.parametrize("setting, expected", [("1000", [(0, 1200), (1200, 1200), (2400, 1200)]),
                                               ("0", [])])
def test_writeback_requests_follow_the_written_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str,
        expected: list[tuple[int, int]]) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setenv("RESHARD_WRITEBACK_NBYTES", setting)
    monkeypatch.setattr(local, "_SYNC_FILE_RANGE", local._SYNC_FILE_RANGE or (lambda *a: 0))
    monkeypatch.setattr(local, "_writeback", lambda fd, offset, nbytes: calls.append((offset, nbytes)))
    store = LocalStore(str(tmp_path))
    store.prepare("data")
    with new_file(store, "data/f.bin") as f:
        for i in range(3):
            f.write(bytes([i]) * 1200)
        f.write(b"tail")
    assert calls == expected
    written = (tmp_path / "data" / "f.bin").read_bytes()
    assert written == b"\x00" * 1200 + b"\x01" * 1200 + b"\x02" * 1200 + b"tail"


def test_the_real_call_accepts_a_file_range(tmp_path: Path) -> None:
    if local._SYNC_FILE_RANGE is None:
        pytest.skip("no sync_file_range on this platform")
    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        f.write(b"x" * 10_000)
        local._writeback(f.fileno(), 0, 10_000)
    assert path.read_bytes() == b"x" * 10_000


def test_a_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from reshard.config import writeback_nbytes

    monkeypatch.setenv("RESHARD_WRITEBACK_NBYTES", "-1")
    with pytest.raises(ValueError, match="RESHARD_WRITEBACK_NBYTES"):
        writeback_nbytes()
