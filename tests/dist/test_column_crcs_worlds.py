"""Column checksums (docs/FORMAT.md 1.1) in spawned worlds: what a demanding user does.

One world of 4 runs every scenario and reports them all:

* RESHARD_COLUMN_CHECKSUMS invalid on one rank (or on all) is the same clear ConfigError
  on every rank, and the previous checkpoint stays whole;
* a Shard(0) save of tensors of several dtypes and 2-D..4-D shapes (tiny tiles, column
  checksums on every box) loads exactly into Shard(1) on 4 ranks, [Shard(0), Shard(1)]
  and [Shard(1), Shard(0)] on 2x2, Shard(2), destinations of another dtype, with
  cooperative reads (RESHARD_EXCHANGE_READS=1) and without mapped reads;
* a damaged byte inside one tile fails the loads that take it, on every rank, with an
  error naming the key and the data file, while loads of other columns still succeed;
* a Shard(0) save loaded as Shard(1) over as many ranks as the checksums' parts reads
  about the bytes it needs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.helpers.world import run_world

Problem = tuple[str, int, str]


def _pattern(shape: tuple[int, ...], dtype: Any) -> Any:
    import torch

    n = 1
    for s in shape:
        n *= s
    a = torch.arange(n, dtype=torch.int64).reshape(shape)
    if dtype == torch.bool:
        return a % 3 == 0
    if dtype.is_complex:
        return torch.complex(a.double(), -a.double()).to(dtype)
    if dtype in (torch.int8, torch.uint8):
        return (a % 101).to(dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return (a % 251).to(dtype)
    return a.to(dtype)


def _agreed(rank: int, name: str, call: Any, want_type: type, want_text: list[str]) -> list[Problem]:
    import torch.distributed as dist

    try:
        call()
        msg, kind = "no error", None
    except Exception as e:  # noqa: BLE001 - compared below
        msg, kind = str(e), type(e)
    msgs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(msgs, msg)
    out: list[Problem] = []
    if len(set(msgs)) != 1:
        out.append((name, rank, f"ranks raised different errors: {msgs}"))
    if kind is None or not issubclass(kind, want_type):
        out.append((name, rank, f"raised {kind}: {msg}, want {want_type.__name__}"))
    elif not all(t in msg for t in want_text):
        out.append((name, rank, f"message {msg!r} lacks {want_text}"))
    return out


def bad_settings(rank: int, world: int, root: str) -> list[Problem]:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import reshard
    from reshard.errors import ConfigError

    mesh = init_device_mesh("cpu", (world,))
    path = os.path.join(root, "settings")
    full = _pattern((64, 48), torch.float32)
    reshard.save({"x": distribute_tensor(full, mesh, [Shard(0)])}, path)
    p: list[Problem] = []
    sd = {"x": distribute_tensor(full + 1, mesh, [Shard(0)])}
    for name, value in (("x on rank 1", "x" if rank == 1 else "2"),
                        ("-1 on rank 3", "-1" if rank == 3 else "2"),
                        ("65537 on rank 0", "65537" if rank == 0 else "2"),
                        ("x everywhere", "x")):
        os.environ["RESHARD_COLUMN_CHECKSUMS"] = value
        p += _agreed(rank, name, lambda: reshard.save(sd, path), ConfigError,
                     ["RESHARD_COLUMN_CHECKSUMS"])
        p += _agreed(rank, name + " (async)", lambda: reshard.async_save(sd, path).result(),
                     ConfigError, ["RESHARD_COLUMN_CHECKSUMS"])
    del os.environ["RESHARD_COLUMN_CHECKSUMS"]
    got = {"x": distribute_tensor(torch.zeros(64, 48), mesh, [Shard(1)])}
    reshard.load(got, path)
    if not torch.equal(got["x"].full_tensor(), full):
        p.append(("after bad settings", rank, "the previous checkpoint changed"))
    # Ranks with different valid values each write their own parts: still exact.
    os.environ["RESHARD_COLUMN_CHECKSUMS"] = str(2 + rank)
    from tests.helpers.column_checks import column_checksums_on_small_boxes

    with column_checksums_on_small_boxes(2 + rank):
        reshard.save(sd, path)
    reshard.load(got, path)
    if not torch.equal(got["x"].full_tensor(), full + 1):
        p.append(("different parts per rank", rank, "values differ"))
    return p


CASES: list[tuple[str, tuple[int, ...], str]] = [
    ("f32 2-D", (37, 23), "float32"),
    ("bf16 odd", (41, 9), "bfloat16"),
    ("bool", (30, 17), "bool"),
    ("int8", (29, 31), "int8"),
    ("uint8 3-D", (21, 7, 5), "uint8"),
    ("int64 4-D", (13, 6, 3, 2), "int64"),
    ("c64", (19, 10), "complex64"),
    ("f64 width 3", (50, 3), "float64"),
    ("f16 width 1", (20, 1), "float16"),
]


def _readers(mesh1: Any, mesh2: Any, ndim: int) -> list[tuple[str, Any, list[Any]]]:
    from torch.distributed.tensor import Replicate, Shard

    out = [("S1", mesh1, [Shard(1)]), ("S0xS1", mesh2, [Shard(0), Shard(1)]),
           ("S1xS0", mesh2, [Shard(1), Shard(0)]), ("S1xR", mesh2, [Shard(1), Replicate()])]
    if ndim >= 3:
        out.append(("S2", mesh1, [Shard(2)]))
    return out


def loads(rank: int, world: int, root: str) -> list[Problem]:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import reshard
    from reshard.transfer import column_reads
    from tests.helpers.column_checks import column_checksums_on_small_boxes

    mesh1 = init_device_mesh("cpu", (world,))
    mesh2 = init_device_mesh("cpu", (2, world // 2))
    tiles = [0]
    real = column_reads.run_tile_job

    def counted(store: Any, job: Any) -> None:
        tiles[0] += 1
        real(store, job)

    column_reads.run_tile_job = counted
    p: list[Problem] = []
    try:
        # 3 parts: cuts that neither 4 nor 2 readers share; 7: more parts than some widths.
        for parts, save_name, save_mesh, save_pl in ((3, "S0", mesh1, [Shard(0)]),
                                                     (7, "S0xS1", mesh2, [Shard(0), Shard(1)])):
            path = os.path.join(root, f"loads-{parts}-{save_name}")
            fulls = {name: _pattern(shape, getattr(torch, dt)) for name, shape, dt in CASES}
            with column_checksums_on_small_boxes(parts):
                reshard.save({k: distribute_tensor(v, save_mesh, save_pl) for k, v in fulls.items()},
                             path)
            envs: list[dict[str, str]] = [{}]
            if save_name == "S0":  # cooperative reads, and frames only (no mapping)
                envs += [{"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1"},
                         {"RESHARD_MAP_READS": "0"}]
            for env in envs:
                os.environ.update(env)
                try:
                    for rname, mesh, pl in _readers(mesh1, mesh2, 3):
                        # One load per reader takes every tensor it applies to; the
                        # plain reader also takes each in another dtype (staged).
                        want: dict[str, Any] = {}
                        for name, full in fulls.items():
                            if rname == "S2" and full.dim() < 3:
                                continue
                            want[name] = full
                            if not env and rname == "S1":
                                other = torch.complex128 if full.is_complex() else torch.float64
                                want[name + "@other"] = full.to(other)
                        sd = {k: distribute_tensor(torch.zeros(v.shape, dtype=v.dtype), mesh, pl)
                              for k, v in want.items()}
                        tag = f"parts {parts} {save_name}->{rname} {env}"
                        try:
                            for group in ({k.split("@")[0]: v for k, v in sd.items() if "@" not in k},
                                          {k.split("@")[0]: v for k, v in sd.items() if "@" in k}):
                                if group:
                                    reshard.load(group, path, strict=False)
                        except Exception as e:  # noqa: BLE001 - reported
                            p.append((tag, rank, f"{type(e).__name__}: {e}"))
                            continue
                        for k, v in sd.items():
                            if not torch.equal(v.full_tensor(), want[k]):
                                p.append((f"{tag} {k}", rank, "values differ"))
                finally:
                    for k in env:
                        del os.environ[k]
    finally:
        column_reads.run_tile_job = real
    if not tiles[0]:
        p.append(("loads", rank, "no load read through column tiles"))
    return p


def damage(rank: int, world: int, root: str) -> list[Problem]:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import reshard
    from tests.helpers.column_checks import column_checksums_on_small_boxes

    mesh = init_device_mesh("cpu", (world,))
    path = os.path.join(root, "damage")
    full = _pattern((64, 40), torch.float32)
    with column_checksums_on_small_boxes(4):
        reshard.save({"w": distribute_tensor(full, mesh, [Shard(0)])}, path)
    p: list[Problem] = []
    bad_file = ""
    if rank == 0:
        doc = json.loads(Path(path, "manifest.json").read_text())
        (entry,) = [e for e in doc["entries"] if e["key"] == ["w"]]
        chunk = next(c for c in entry["chunks"] if c["offsets"] == [16, 0])
        assert "column_crcs" in chunk, chunk
        bad_file = doc["files"][chunk["file"]]
        # Row 20, column 25: the third of 4 parts (columns 20..30).
        at = chunk["offset"] + ((20 - 16) * 40 + 25) * 4
        with open(os.path.join(path, bad_file), "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x55]))
    names: list[Any] = [bad_file]
    dist.broadcast_object_list(names, src=0)
    bad_file = names[0]
    dst = {"w": distribute_tensor(torch.zeros(64, 40), mesh, [Shard(1)])}
    for env in ({}, {"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1"}):
        os.environ.update(env)
        try:
            p += _agreed(rank, f"damaged tile, Shard(1) {env}", lambda: reshard.load(dst, path),
                         reshard.CorruptCheckpointError, ["'w'", os.path.basename(bad_file)])
        finally:
            for k in env:
                del os.environ[k]
    # Without cooperative reads, the rank reading the tile names it.
    if rank == 2:
        try:
            with reshard.open(path) as ck:
                ck.read("w", (slice(None), slice(20, 30)))
            p.append(("damaged tile, read", rank, "no error"))
        except reshard.CorruptCheckpointError as e:
            if "'w'" not in str(e) or "and columns 20..30" not in str(e):
                p.append(("damaged tile, read", rank, f"tile not named: {e}"))
    # Reads of other columns, or of rows of other chunks, never touch the damaged tile.
    try:
        with reshard.open(path) as ck:
            if not torch.equal(ck.read("w", (slice(None), slice(0, 20))), full[:, :20]):
                p.append(("other columns", rank, "values differ"))
            if not torch.equal(ck.read("w", (slice(0, 16), slice(None))), full[:16]):
                p.append(("other rows", rank, "values differ"))
    except Exception as e:  # noqa: BLE001 - reported
        p.append(("other columns", rank, f"{type(e).__name__}: {e}"))
    if rank == 0:
        report = reshard.verify(path)
        if report.ok or not any("20..30" in d.message for d in report.damaged):
            p.append(("verify", rank, f"damage not reported: {report.damaged}"))
    return p


def amplification(rank: int, world: int, root: str) -> list[Problem]:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import reshard

    mesh = init_device_mesh("cpu", (world,))
    full = _pattern((1024, 1030), torch.float32)  # 4 MiB: every rank's rows over 1 MiB
    path = os.path.join(root, "amp")
    os.environ["RESHARD_COLUMN_CHECKSUMS"] = str(world)
    try:
        reshard.save({"w": distribute_tensor(full, mesh, [Shard(0)])}, path)
    finally:
        del os.environ["RESHARD_COLUMN_CHECKSUMS"]
    manifest = os.path.getsize(os.path.join(path, "manifest.json"))
    dst = {"w": distribute_tensor(torch.zeros(1024, 1030), mesh, [Shard(1)])}
    stats = reshard.load(dst, path)
    p: list[Problem] = []
    if not torch.equal(dst["w"].full_tensor(), full):
        p.append(("amplification", rank, "values differ"))
    need = dst["w"].to_local().nbytes
    if stats.bytes_read > 1.05 * need + manifest:
        p.append(("amplification", rank, f"read {stats.bytes_read} for {need} (+{manifest})"))
    return p


def selected(rank: int, world: int, root: str, names: list[str]) -> list[Problem]:
    """The scenarios ``names``, each run whatever the others raise."""
    import traceback

    p: list[Problem] = []
    for n in names:
        try:
            p += globals()[n](rank, world, root)
        except Exception:  # noqa: BLE001 - one scenario must not hide the others
            p.append((n, rank, traceback.format_exc()))
    return p


def test_column_checksums_in_a_world_of_4(tmp_path: Path) -> None:
    names = ["bad_settings", "loads", "damage", "amplification"]
    problems = [x for r in run_world(selected, 4, str(tmp_path), names, timeout_s=240) for x in r]
    assert not problems, "\n".join(map(str, problems))

