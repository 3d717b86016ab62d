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
