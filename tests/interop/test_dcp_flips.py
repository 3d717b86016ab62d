"""A flipped bit anywhere in a DCP checkpoint's data file either fails the load with a
CheckpointError or leaves every loaded value exactly as saved: never other values.

DCP records no checksums; reshard checks the CRC-32s of the zip archives torch.save
writes. Two holes this found: values (non-tensor items) skipped that check (a flipped
bit in the pickled float of ``lr`` loaded 0.5625 for 0.5), and a record whose zip
attributes flag it as a directory passed it while torch's reader then extracted nothing
(the tensor loaded as uninitialized memory). A sweep of all 8 bits of every byte found
nothing else; this test flips one bit per byte to stay fast.
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard

STATE: dict[str, Any] = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "lr": 0.5}


def _blank() -> dict[str, Any]:
    return {"w": torch.full((3, 4), -1.0), "lr": None}


def _same(got: dict[str, Any]) -> bool:
    return all(torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v
               for k, v in STATE.items())


def test_every_bit_flip_in_the_data_file(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(STATE, checkpoint_id=str(tmp_path))
    (file,) = glob.glob(os.path.join(tmp_path, "*.distcp"))
    good = Path(file).read_bytes()
    silent: list[int] = []
    refused = 0
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 1 << (pos % 8)
        Path(file).write_bytes(bad)
        got = _blank()
        try:
            reshard.load(got, tmp_path)
        except reshard.CheckpointError:
            refused += 1
            continue
        if not _same(got):
            silent.append(pos)
    Path(file).write_bytes(good)
    assert not silent, f"flips at bytes {silent[:10]} loaded other values silently"
    assert refused > len(good) // 4  # the sweep really damaged data, not only padding
    got = _blank()
    reshard.load(got, tmp_path)
    assert _same(got)


def test_records_flagged_as_directories(tmp_path: Path) -> None:
    """Every zip record of every item, in turn, flagged as a directory (the DOS attribute
    bit of its central directory entry, as one flipped bit does): refused, never a tensor
    of uninitialized memory."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(STATE, checkpoint_id=str(tmp_path))
    (file,) = glob.glob(os.path.join(tmp_path, "*.distcp"))
    good = Path(file).read_bytes()
    entries = [i for i in range(len(good)) if good.startswith(b"PK\x01\x02", i)]
    assert len(entries) >= 10  # a handful of records in each of the two items
    for at in entries:
        bad = bytearray(good)
        bad[at + 38] |= 0x10  # external attributes, low byte: FILE_ATTRIBUTE_DIRECTORY
        Path(file).write_bytes(bad)
        got = _blank()
        try:
            reshard.load(got, tmp_path)
        except reshard.CheckpointError as e:
            assert "zip attributes" in str(e), e
            continue
        raise AssertionError(f"the record at byte {at} flagged as a directory loaded: {got}")


def test_memo_index_does_not_size_an_allocation(tmp_path: Path) -> None:
    """A .metadata whose pickle puts a value at memo index 2**26 (one flipped bit of a
    real one can do as much, or 2**31): the C unpickler sized and zero-filled a memo table
    of 2 x index pointers (1 GiB here; a one-bit sweep of a .metadata got a process
    killed for memory at 24 GiB). It loads with a small, bounded allocation."""
    import pickle
    import struct
    import tracemalloc

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(STATE, checkpoint_id=str(tmp_path))
    meta = tmp_path / ".metadata"
    good = meta.read_bytes()
    # The same metadata as protocol 2 (unframed), and before its STOP: push None, put it
    # at memo index 2**26, pop it.
    plain = pickle.dumps(pickle.loads(good), protocol=2)
    assert plain[-1:] == pickle.STOP
    meta.write_bytes(plain[:-1] + pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 2**26)
                     + pickle.POP + pickle.STOP)
    tracemalloc.start()
    try:
        got = _blank()
        reshard.load(got, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert _same(got)
    assert peak < 64 * 2**20, f"peak traced allocation {peak} bytes"
    # Buffers of pickle protocol 5 never occur in DCP metadata: refused, not allocated.
    meta.write_bytes(good[:2] + pickle.BYTEARRAY8 + struct.pack("<Q", 2**40) + good[2:])
    with pytest.raises(reshard.CorruptCheckpointError, match="buffers"):
        reshard.load(_blank(), tmp_path)
