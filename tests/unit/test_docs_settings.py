"""README's settings table against src/reshard/config.py: every RESHARD_* variable that
config reads is in the table and nothing else is, each with the default and the bounds
that config applies."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from reshard import config
from reshard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `(RESHARD_[A-Z0-9_]+)` \| ([^|]+) \| ([^|]+) \|", re.M)

READERS: dict[str, Callable[[], object]] = {
    "RESHARD_FRAME_RAW_NBYTES": config.frame_raw_nbytes,
    "RESHARD_COLUMN_BLOCKS": config.column_blocks,
    "RESHARD_COLUMN_CHECKSUMS": config.column_checksums,
    "RESHARD_LEFTOVER_AGE_S": config.leftover_age_s,
    "RESHARD_IO_THREADS": config.io_threads,
    "RESHARD_MAX_PIECE_NBYTES": config.max_piece_nbytes,
    "RESHARD_WRITEBACK_NBYTES": config.writeback_nbytes,
    "RESHARD_MAP_READS": config.map_reads,
    "RESHARD_FAST_JSON": config.fast_json,
    "RESHARD_ZSTD_LITERALS": config.zstd_literals,
    "RESHARD_EXCHANGE_READS": lambda: config.exchange_reads(remote=True),
    "RESHARD_EXCHANGE_MIN_NBYTES": config.exchange_min_nbytes,
    "RESHARD_EXCHANGE_ROUND_NBYTES": config.exchange_round_nbytes,
    "RESHARD_REMOTE_ATTEMPTS": config.remote_attempts,
    "RESHARD_REMOTE_BACKOFF_S": config.remote_backoff_s,
    "RESHARD_UPLOAD_PART_NBYTES": config.upload_part_nbytes,
    "RESHARD_REMOTE_COALESCE_GAP_NBYTES": config.remote_coalesce_gap_nbytes,
}


def _table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return {m.group(1): (m.group(2).strip(), m.group(3).strip()) for m in ROW.finditer(text)}


def test_every_variable_config_reads_is_documented() -> None:
    read = set(re.findall(r"RESHARD_[A-Z0-9_]+", (ROOT / "src/reshard/config.py").read_text()))
    assert set(_table()) == read == set(READERS)


@pytest.mark.parametrize("name", sorted(READERS))
def test_documented_default_and_bounds(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    default, accepted = _table()[name]
    monkeypatch.delenv(name, raising=False)
    got = READERS[name]()
    if re.fullmatch(r"[\d.]+", default):
        assert got == float(default), (name, got, default)
    elif name == "RESHARD_FRAME_RAW_NBYTES":
        assert (config.frame_raw_nbytes(), config.frame_raw_nbytes(encoded=True)) == (262144, 1048576)
    elif name == "RESHARD_EXCHANGE_READS":
        assert default == "auto" and got is True and config.exchange_reads(remote=False) is False
    else:
        assert name == "RESHARD_IO_THREADS" and 1 <= got <= 8  # type: ignore[operator]
    good, bad = _values(accepted)
    for value in good:
        monkeypatch.setenv(name, value)
        READERS[name]()
    for value in bad:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            READERS[name]()


def _values(accepted: str) -> tuple[list[str], list[str]]:
    """Values the 'accepted' column admits and values just outside it."""
    if m := re.fullmatch(r"(\d+) to (\d+)(?:\^(\d+))?", accepted):
        lo = int(m.group(1))
        hi = int(m.group(2)) ** int(m.group(3)) if m.group(3) else int(m.group(2))
        return [str(lo), str(hi)], [str(lo - 1), str(hi + 1), "x"]
    if m := re.fullmatch(r"(\d+)(?: \(off\))? or more", accepted):
        lo = int(m.group(1))
        return [str(lo), str(lo + 7)], [str(lo - 1), "x"]
    choices = accepted.split(", ")
    return choices, ["2", "yes", ""]
