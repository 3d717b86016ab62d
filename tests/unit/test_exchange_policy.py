"""Cooperative reads by default only where reads are remote requests."""

from __future__ import annotations

import pytest

from reshard import config
from reshard.storage import LocalStore, is_remote
from reshard.storage.fsspec_store import FsspecStore


@pytest.mark.parametrize(("env", "local", "remote"), [
    (None, False, True), ("auto", False, True), ("1", True, True), ("0", False, False),
])
def test_exchange_reads_policy(monkeypatch: pytest.MonkeyPatch, env: str | None, local: bool,
                               remote: bool) -> None:
    if env is None:
        monkeypatch.delenv("RESHARD_EXCHANGE_READS", raising=False)
    else:
        monkeypatch.setenv("RESHARD_EXCHANGE_READS", env)
    assert config.exchange_reads(remote=False) is local
    assert config.exchange_reads(remote=True) is remote


def test_bad_exchange_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESHARD_EXCHANGE_READS", "yes")
    with pytest.raises(ValueError, match="RESHARD_EXCHANGE_READS='yes' must be 0, 1 or auto"):
        config.exchange_reads(remote=True)


def test_which_stores_are_remote(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("fsspec")
    assert not is_remote(LocalStore(str(tmp_path)))
    assert is_remote(FsspecStore.from_url("memory://reshard-policy", {}))
