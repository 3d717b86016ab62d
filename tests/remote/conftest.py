"""Session fixtures: a moto S3 server on loopback (skipped only if moto is not installed)."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator

import pytest

from .s3server import MotoServer, create_bucket, storage_options


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [m for m in ("moto", "s3fs", "flask") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"S3 tests need moto[server] and s3fs ({', '.join(missing)} not installed): "
                    'pip install "moto[server]" s3fs')
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    try:
        server.wait_ready()
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket for one test."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    create_bucket(s3_endpoint, bucket)
    return bucket


@pytest.fixture()
def s3_options(s3_endpoint: str) -> dict[str, object]:
    return storage_options(s3_endpoint)


@pytest.fixture()
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short backoff so retry tests run fast (inherited by spawned ranks)."""
    monkeypatch.setenv("RESHARD_REMOTE_BACKOFF_S", "0.01")
    monkeypatch.setenv("RESHARD_REMOTE_ATTEMPTS", "4")
