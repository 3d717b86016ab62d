"""reshard on a real S3-protocol server (moto) on loopback: multi-rank save, resharded
load, ranged reads, async save, retries through a fault-injecting proxy, the commit rule."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import reshard
from reshard.storage.fsspec_store import FsspecStore
from tests.helpers.world import run_world

from .s3server import FaultProxy, fail_always, fail_each_request_once, storage_options

BIG_ROWS = 2 * 1_600_000 // 8  # a float32 [400000, 8] tensor: 6.4 MB per rank in two shards
PART_NBYTES = 5 * 1024 * 1024  # S3's smallest multipart part: the big shards upload in 2 parts

pytestmark = pytest.mark.s3


def _full() -> dict[str, torch.Tensor]:
    return {
        "w": torch.arange(7 * 10, dtype=torch.float32).reshape(7, 10),
        "m": torch.arange(3 * 9, dtype=torch.bfloat16).reshape(3, 9),
        "b": torch.arange(5, dtype=torch.int64),
        "big": torch.arange(BIG_ROWS * 8, dtype=torch.float32).reshape(BIG_ROWS, 8),
    }


def _dtensors(mesh: Any, full: dict[str, torch.Tensor], layout: str) -> dict[str, Any]:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    placements = {
        "save": {"w": Shard(0), "m": Shard(1), "b": Replicate(), "big": Shard(0)},
        "load": {"w": Shard(1), "m": Replicate(), "b": Shard(0), "big": Replicate()},
    }[layout]
    out: dict[str, Any] = {}
    for key, tensor in full.items():
        source = tensor if layout == "save" else torch.zeros_like(tensor)
        out[key] = distribute_tensor(source, mesh, [placements[key]])
    return out


def _check(name: str, got: Any, want: torch.Tensor, failures: list[str]) -> None:
    from torch.distributed.tensor import DTensor

    local = got.full_tensor() if isinstance(got, DTensor) else got
    if not torch.equal(local, want):
        failures.append(f"{name}: loaded values differ")


def _world_s3(rank: int, world_size: int, endpoint: str, flaky_endpoint: str, bucket: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world_size,))
    full = _full()
    opts = storage_options(endpoint)
    failures: list[str] = []

    # 1. Save DTensors (uneven Shard(0), Shard(1), Replicate, multipart-sized) and values.
    url = f"s3://{bucket}/ckpt"
    state = {**_dtensors(mesh, full, "save"), "step": 3, "name": "run-1"}
    reshard.save(state, url, storage_options=opts)

    # 2. Load resharded onto other placements of the same 2 ranks.
    target = {**_dtensors(mesh, full, "load"), "step": 0, "name": ""}
    reshard.load(target, url, storage_options=opts)
    for key, want in full.items():
        _check(f"s3 load {key}", target[key], want, failures)
    if (target["step"], target["name"]) != (3, "run-1"):
        failures.append(f"s3 load values: got {target['step']!r}, {target['name']!r}")

    # 3. async_save to S3: changes right after it returns must not reach the checkpoint.
    live = {"w": _dtensors(mesh, full, "save")["w"], "step": 4}
    handle = reshard.async_save(live, f"s3://{bucket}/async", storage_options=opts)
    live["w"].to_local().fill_(-1.0)
    handle.result(timeout=120)
    back = {"w": _dtensors(mesh, {"w": full["w"]}, "load")["w"], "step": 0}
    reshard.load(back, f"s3://{bucket}/async", storage_options=opts)
    _check("async s3 w", back["w"], full["w"], failures)

    # 4. Through a proxy failing the first try of every distinct request: retried, exact.
    flaky = storage_options(flaky_endpoint)
    small = {k: v for k, v in _dtensors(mesh, full, "save").items() if k != "big"}
    reshard.save({**small, "step": 5}, f"s3://{bucket}/flaky", storage_options=flaky)
    again = {k: v for k, v in _dtensors(mesh, full, "load").items() if k != "big"}
    reshard.load(again, f"s3://{bucket}/flaky", storage_options=flaky)
    for key in again:
        _check(f"flaky load {key}", again[key], full[key], failures)

    # 5. A column cut of row-saved frames: by default on S3 each frame is fetched by one
    #    rank and shared, so each rank reads about half of what it reads on its own.
    import os

    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ["RESHARD_EXCHANGE_MIN_NBYTES"] = "1"  # the test tensor is small
    fetched = {}
    for setting in ("auto", "0"):
        os.environ["RESHARD_EXCHANGE_READS"] = setting
        cols = {"big": distribute_tensor(torch.zeros_like(full["big"]), mesh, [Shard(1)])}
        fetched[setting] = reshard.load(cols, url, storage_options=opts, strict=False).bytes_read
        _check(f"column cut ({setting}) big", cols["big"], full["big"], failures)
    for name in ("RESHARD_EXCHANGE_READS", "RESHARD_EXCHANGE_MIN_NBYTES"):
        os.environ.pop(name)
    if not fetched["auto"] < 0.6 * fetched["0"]:
        failures.append(f"column cut: {fetched['auto']} bytes fetched with cooperative reads, "
                        f"{fetched['0']} without")

    if failures:
        raise AssertionError(f"rank {rank}: " + "; ".join(failures))


@pytest.mark.dist
@pytest.mark.slow
def test_two_rank_save_resharded_load_async_and_retries(
    s3_endpoint: str, s3_bucket: str, fast_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESHARD_UPLOAD_PART_NBYTES", str(PART_NBYTES))
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    proxy = FaultProxy(upstream_port, fail_each_request_once())
    try:
        run_world(_world_s3, 2, s3_endpoint, proxy.endpoint, s3_bucket, timeout_s=150)
    finally:
        proxy.stop()
    # Every distinct request failed once with a 503 and was retried by reshard (the client's
    # own retries are off), covering writes, the manifest PUT, listings, deletes and reads.
    assert proxy.failures >= 10
    assert proxy.requests >= 2 * proxy.failures

    opts = storage_options(s3_endpoint)
    url = f"s3://{s3_bucket}/ckpt"
    full = _full()

    # Resharded load onto one process without torch.distributed: plain tensors.
    one = {k: torch.zeros_like(v) for k, v in full.items()}
    reshard.load(one, url, storage_options=opts)
    for key, want in full.items():
        assert torch.equal(one[key], want), key

    # The commit rule's shape: one manifest, one data object per writing rank; the
    # replicated "b" was written once. The big shards went up as multipart uploads.
    store = FsspecStore.from_url(url, opts)
    assert store.list("") == ["manifest.json"]
    data = store.list("data")
    assert len(data) == 2 and all(re.fullmatch(r"data/.+\.[01]\.bin", n) for n in data)
    etags = [store.fs.info(f"{s3_bucket}/ckpt/{n}")["ETag"] for n in data]
    assert all(re.search(r"-2\"?$", e) for e in etags), etags


def test_open_reads_slices_with_ranged_requests(s3_endpoint: str, s3_bucket: str,
                                               s3_options: dict[str, Any]) -> None:
    full = {"a": torch.arange(600_000, dtype=torch.float32).reshape(1000, 600),
            "c": torch.arange(10, dtype=torch.int16), "note": "hi"}
    url = f"s3://{s3_bucket}/open"
    reshard.save(full, url, storage_options=s3_options)

    ranges: list[tuple[str, str, str]] = []

    def record(method: str, path: str, range_: str) -> None:
        ranges.append((method, path, range_))
        return None

    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]), record)  # type: ignore[arg-type]
    try:
        with reshard.open(url, storage_options=storage_options(proxy.endpoint)) as ck:
            assert ck.keys() == ["a", "c", "note"]
            assert ck.info("a").shape == (1000, 600)
            assert torch.equal(ck.read("a", (slice(10, 12), slice(5, 9))), full["a"][10:12, 5:9])
            assert torch.equal(ck.read("a", 999), full["a"][999])
            assert torch.equal(ck.read("c"), full["c"])
            assert ck.read("note") == "hi"
    finally:
        proxy.stop()
    data_gets = [r for m, p, r in ranges if m == "GET" and "/data/" in p]
    assert data_gets and all(r.startswith("bytes=") for r in data_gets)
    fetched = sum(int(hi) - int(lo) + 1 for lo, hi in
                  (re.fullmatch(r"bytes=(\d+)-(\d+)", r).groups() for r in data_gets))  # type: ignore[union-attr]
    # Two rows of "a" and all of "c": a few frames, not the 2.4 MB file.
    assert fetched < 4 * 256 * 1024, fetched
    assert sum(1 for m, p, _ in ranges if m == "GET" and p.endswith("manifest.json")) == 1


def test_missing_checkpoint_names_the_url(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    url = f"s3://{s3_bucket}/never/saved"
    with pytest.raises(reshard.CheckpointNotFoundError, match=re.escape(url)):
        reshard.open(url, storage_options=s3_options)
    with pytest.raises(reshard.CheckpointNotFoundError, match=re.escape(url)):
        reshard.load({"x": torch.zeros(1)}, url, storage_options=s3_options)
    no_bucket = "s3://no-such-bucket-reshard/ckpt"
    with pytest.raises(reshard.CheckpointNotFoundError, match=re.escape(no_bucket)):
        reshard.open(no_bucket, storage_options=s3_options)


def test_server_that_always_fails_gives_checkpoint_error(
    s3_endpoint: str, s3_bucket: str, fast_retries: None
) -> None:
    url = f"s3://{s3_bucket}/down"
    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]), fail_always(503, "ServiceUnavailable"))
    try:
        opts = storage_options(proxy.endpoint)
        with pytest.raises(reshard.StorageError, match=re.escape(url) + r".*after 4 attempts"):
            reshard.open(url, storage_options=opts)
        # RESHARD_REMOTE_ATTEMPTS=4 tries, then it gives up (s3fs sends up to 2 requests a try).
        assert 4 <= proxy.requests <= 8, proxy.requests
        with pytest.raises(reshard.CheckpointError, match=re.escape(url)):
            reshard.save({"x": torch.arange(4)}, url, storage_options=opts)
    finally:
        proxy.stop()


def test_permanent_errors_are_not_retried(s3_endpoint: str, s3_bucket: str, fast_retries: None) -> None:
    url = f"s3://{s3_bucket}/forbidden"
    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]), fail_always(403, "AccessDenied"))
    try:
        with pytest.raises(reshard.CheckpointError, match=re.escape(url)):
            reshard.open(url, storage_options=storage_options(proxy.endpoint))
        assert proxy.requests == 1
    finally:
        proxy.stop()


class _Crash(BaseException):
    """Stands for the process dying: no cleanup code runs."""


def test_uncommitted_save_never_looks_complete(
    s3_bucket: str, s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3_bucket}/commit"
    v1 = {"t": torch.arange(1000, dtype=torch.int32)}
    reshard.save(v1, url, storage_options=s3_options)

    def crash(self: FsspecStore, name: str, data: bytes) -> None:
        raise _Crash()

    with monkeypatch.context() as m:
        m.setattr(FsspecStore, "write_atomic", crash)
        with pytest.raises(_Crash):
            reshard.save({"t": v1["t"] + 1}, url, storage_options=s3_options)
        with pytest.raises(_Crash):
            reshard.save(v1, f"s3://{s3_bucket}/fresh", storage_options=s3_options)

    store = FsspecStore.from_url(url, s3_options)
    assert len(store.list("data")) == 2  # the crashed save's data object is there ...
    assert torch.equal(reshard.open(url, storage_options=s3_options).read("t"), v1["t"])  # ... unused
    fresh = FsspecStore.from_url(f"s3://{s3_bucket}/fresh", s3_options)
    assert len(fresh.list("data")) == 1 and fresh.list("") == []
    with pytest.raises(reshard.CheckpointNotFoundError):
        reshard.open(f"s3://{s3_bucket}/fresh", storage_options=s3_options)

    # The next committed save removes the replaced checkpoint's object; the crashed save's
    # stays while it is younger than RESHARD_LEFTOVER_AGE_S (a save that may still run).
    v3 = {"t": v1["t"] * 3}
    reshard.save(v3, url, storage_options=s3_options)
    assert len(store.list("data")) == 2
    monkeypatch.setenv("RESHARD_LEFTOVER_AGE_S", "0")
    reshard.save(v3, url, storage_options=s3_options)
    assert len(store.list("data")) == 1
    out = {"t": torch.zeros(1000, dtype=torch.int32)}
    reshard.load(out, url, storage_options=s3_options)
    assert torch.equal(out["t"], v3["t"])


def test_reads_past_the_end_are_truncation(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    url = f"s3://{s3_bucket}/short"
    store = FsspecStore.from_url(url, s3_options)
    store.write_atomic("data/x.bin", b"0123456789")
    buf = bytearray(4)
    store.read_into("data/x.bin", 3, memoryview(buf))
    assert bytes(buf) == b"3456"
    truncated = re.escape(f"{url}/data/x.bin") + ".*truncated"
    for offset in (8, 10, 50):  # partly past the end; starting at or past it (HTTP 416)
        with pytest.raises(reshard.CorruptCheckpointError, match=truncated):
            store.read_into("data/x.bin", offset, memoryview(bytearray(4)))
    with pytest.raises(reshard.CorruptCheckpointError, match=re.escape(f"{url}/data/gone.bin") + ".*missing"):
        store.read_into("data/gone.bin", 0, memoryview(bytearray(4)))


def test_loads_coalesce_neighbouring_reads(s3_endpoint: str, s3_bucket: str,
                                          s3_options: dict[str, Any]) -> None:
    state = {f"layer{i}": {"w": torch.arange(i, i + 300, dtype=torch.float32).reshape(10, 30),
                           "b": torch.arange(i, i + 7, dtype=torch.int16)} for i in range(40)}
    url = f"s3://{s3_bucket}/many"
    reshard.save(state, url, storage_options=s3_options, codec="zstd")

    requests: list[tuple[str, str, str]] = []

    def record(method: str, path: str, range_: str) -> None:
        requests.append((method, path, range_))
        return None

    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]), record)  # type: ignore[arg-type]
    try:
        out = {k: {"w": torch.zeros(10, 30), "b": torch.zeros(7, dtype=torch.int16)} for k in state}
        # Only column 3..5 of each "w": strided pieces, decoded from zstd frames.
        cols = {k: torch.zeros(10, 2) for k in state}
        reshard.load(out, url, storage_options=storage_options(proxy.endpoint))
        with reshard.open(url, storage_options=storage_options(proxy.endpoint)) as ck:
            for k in state:
                cols[k] = ck.read(f"{k}.w", (slice(None), slice(3, 5)))
    finally:
        proxy.stop()
    for k, v in state.items():
        assert torch.equal(out[k]["w"], v["w"]) and torch.equal(out[k]["b"], v["b"]), k
        assert torch.equal(cols[k], v["w"][:, 3:5]), k
    data_gets = [r for m, p, r in requests if m == "GET" and "/data/" in p]
    # 80 tensors in one data object: the load fetches them in one ranged request, not 80.
    # (Checkpoint.read is called per key, so each read is its own request.)
    assert len(data_gets) == 1 + len(state), len(data_gets)


def test_verify_takes_storage_options(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    """The README saves to s3 with storage_options, then calls reshard.verify(path): verify
    took no storage_options, so a checkpoint behind an endpoint_url could not be verified."""
    url = f"s3://{s3_bucket}/verified"
    reshard.save({"a": torch.arange(1000.0), "step": 3}, url, storage_options=s3_options)
    report = reshard.verify(url, storage_options=s3_options)
    assert report.intact and report.keys == 2 and report.bytes_checked == 4000, report
