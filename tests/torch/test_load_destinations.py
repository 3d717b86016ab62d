"""Destinations real users hand to load, one process: tied weights, parameters that
require grad, views of every common kind, memory shared between or inside destinations.
Each gets exactly the saved values or a clear error naming the key, with nothing written.
(Worlds of 2 and 3 ranks: tests/dist/test_load_destinations_worlds.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import reshard


def _ar(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape) + 1).to(dtype)


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_tied_weights(tmp_path: Path, codec: str | None) -> None:
    """A module whose two keys hold one Parameter. Saved from it, the load is exact. Saved
    untied (two different values), loading into the tied module failed as 'CorruptCheckpointError:
    key 'embed.weight': ... fails its CRC-32C check': the threads filling the two keys wrote
    one memory, and each frame's checksum, taken from the destination, saw the other's
    bytes. The key later in the state dict now fills it, as load_state_dict leaves it."""
    src = _Tied()
    with torch.no_grad():
        src.embed.weight.copy_(_ar(6, 4))
    reshard.save(src.state_dict(), tmp_path / "tied", codec=codec)
    dst = _Tied()
    reshard.load(dst.state_dict(), tmp_path / "tied")
    assert dst.head.weight is dst.embed.weight and torch.equal(dst.embed.weight.detach(), _ar(6, 4))

    n = 1 << 20  # many frames, filled on several threads
    untied = {"a": -_ar(n), "b": _ar(n), "c": torch.zeros(3)}
    reshard.save(untied, tmp_path / "untied", codec=codec)
    for order in (("a", "b"), ("b", "a")):
        for _ in range(3):
            w = torch.full((n,), 7.0)
            c = torch.ones(3)
            reshard.load({order[0]: w, "c": c, order[1]: w}, tmp_path / "untied")
            assert torch.equal(w, untied[order[1]]) and not c.any(), order
    # A DTensor-free view of the same memory under two keys (one is a view of the other).
    w = torch.zeros(n)
    reshard.load({"a": w, "b": w.view(n)}, tmp_path / "untied", strict=False)
    assert torch.equal(w, untied["b"])


def test_parameters_that_require_grad(tmp_path: Path) -> None:
    """Filled in place (no 'a leaf Variable that requires grad is being used in an
    in-place operation'), still leaves that train. A graph that saved a parameter for
    backward before the load gave the gradients of the new values without a word (most
    bytes land where torch does not see them written); like load_state_dict's copies,
    the load now marks them changed, and that backward raises."""
    saved = {"w": _ar(6, 4), "b": _ar(6), "h": _ar(5, 3, dtype=torch.bfloat16)}
    reshard.save(saved, tmp_path)
    model = torch.nn.Linear(4, 6)
    half = torch.nn.Parameter(torch.zeros(3, 5, dtype=torch.bfloat16).t())  # transposed
    stale = (model.weight * model.weight).sum()
    reshard.load({"w": model.weight, "b": model.bias, "h": half}, tmp_path)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()
    for p in (model.weight, model.bias, half):
        assert p.requires_grad and p.is_leaf and p.grad is None
    assert torch.equal(model.weight.detach(), saved["w"]) and torch.equal(model.bias.detach(), saved["b"])
    assert torch.equal(half.detach(), saved["h"])
    x = torch.ones(2, 4)
    model(x).sum().backward()  # the loaded parameters train
    assert torch.equal(model.weight.grad, torch.full((6, 4), 2.0))
    assert torch.equal(model.bias.grad, torch.full((6,), 2.0))


def test_views_and_layouts(tmp_path: Path) -> None:
    saved = {"t": _ar(6, 4), "col": _ar(5, 3), "cl": _ar(2, 3, 4, 5), "x": _ar(8),
             "c": torch.complex(_ar(4), -_ar(4)), "n": _ar(3)}
    reshard.save(saved, tmp_path)
    wide = torch.zeros(5, 8)
    with torch.inference_mode():
        frozen = torch.zeros(8)
    dest = {
        "t": torch.zeros(4, 6).t(),
        "col": wide[:, 2:5],
        "cl": torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "x": frozen,
        "c": torch.zeros(4, dtype=torch.complex64).conj(),  # the conjugate bit set
        "n": torch.zeros(3)._neg_view(),
    }
    reshard.load(dest, tmp_path)
    for key, value in dest.items():
        assert torch.equal(value, saved[key]), key
    assert dest["cl"].is_contiguous(memory_format=torch.channels_last)
    assert not wide[:, :2].any() and not wide[:, 5:].any()  # nothing outside the view


def test_fused_weight_cut_into_column_views(tmp_path: Path) -> None:
    """q, k and v as column views of one fused buffer: their address ranges meet, their
    elements do not, and they load (a fused buffer also cut by rows, and at odd widths)."""
    saved = {"q": _ar(64, 48), "k": -_ar(64, 48), "v": _ar(64, 48) * 3, "r0": _ar(2, 144), "r1": -_ar(2, 144)}
    reshard.save(saved, tmp_path)
    fused = torch.zeros(68, 144)
    dest = {"q": fused[:64, :48], "k": fused[:64, 48:96], "v": fused[:64, 96:],
            "r0": fused[64:66], "r1": fused[66:]}
    reshard.load(dest, tmp_path)
    for key, value in dest.items():
        assert torch.equal(value, saved[key]), key
    every_other = torch.zeros(64, 96)  # interleaved: strides (96, 2)
    reshard.load({"q": every_other[:, 0::2], "k": every_other[:, 1::2]}, tmp_path, strict=False)
    assert torch.equal(every_other[:, 0::2], saved["q"]) and torch.equal(every_other[:, 1::2], saved["k"])


def test_memory_shared_inside_a_destination_is_refused_by_key(tmp_path: Path) -> None:
    """Elements shared inside one destination (as_strided with overlapping, non-zero
    strides) took whichever saved value came last, silently."""
    reshard.save({"a": _ar(4, 4), "e": torch.full((3, 4), 5.0)}, tmp_path)
    base = torch.zeros(20)
    with pytest.raises(reshard.UnsupportedValueError,
                       match=r"key 'a': its strides \[2, 1\] for shape \[4, 4\] make elements share memory"):
        reshard.load({"a": base.as_strided((4, 4), (2, 1))}, tmp_path, strict=False)
    arr = np.zeros(20, dtype=np.float32)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'a': its strides .* share memory"):
        reshard.load({"a": np.lib.stride_tricks.as_strided(arr, (4, 4), (8, 4))}, tmp_path, strict=False)
    assert not base.any() and not arr.any()
    # Strides that interleave without sharing (as_strided only) load.
    odd = torch.zeros(8).as_strided((2, 3), (3, 2))  # elements 0, 2, 4, 3, 5, 7
    reshard.save({"o": _ar(2, 3)}, tmp_path / "o")
    reshard.load({"o": odd}, tmp_path / "o")
    assert torch.equal(odd, _ar(2, 3))
    # An expanded view (stride 0) is refused even where every saved value along it is
    # equal (torch's copy_ refuses to write one; DCP's load fails in that copy_).
    with pytest.raises(reshard.UnsupportedValueError, match="key 'e': it is an expanded view"):
        reshard.load({"e": torch.zeros(1, 4).expand(3, 4)}, tmp_path, strict=False)
    with pytest.raises(reshard.UnsupportedValueError, match="key 'e': it is on the meta device"):
        reshard.load({"e": torch.empty(3, 4, device="meta")}, tmp_path, strict=False)


def test_views_sharing_memory_across_keys_are_refused_by_key(tmp_path: Path) -> None:
    """Two keys whose views share part of their memory cannot both hold their values:
    the load took whichever came last, or failed as a corrupt checkpoint."""
    saved = {"x": _ar(6), "y": -_ar(6), "z": _ar(3)}
    reshard.save(saved, tmp_path)
    base, z = torch.zeros(20), torch.zeros(3)
    with pytest.raises(reshard.LayoutMismatchError,
                       match=r"keys 'x' and 'y': their tensors are views that share part of their memory"):
        reshard.load({"z": z, "x": base[0:6], "y": base[3:9]}, tmp_path)
    with pytest.raises(reshard.LayoutMismatchError, match=r"keys 'y' and 'x'"):
        reshard.load({"y": base[::2][:6], "x": base[4:10]}, tmp_path, strict=False)
    assert not base.any() and not z.any()  # refused before anything was read


def test_large_views_of_one_memory_in_other_layouts_are_refused_by_key(tmp_path: Path) -> None:
    """Two keys over one memory in different layouts (w and w.t(), w and w.view(-1), a
    complex tensor and its view_as_real, w and one of its columns) were refused only up
    to 4 MiB: at real model sizes the load wrote both keys into one memory, and one key
    silently held the other's values (w, w.t()) or a good checkpoint failed as
    'CorruptCheckpointError: ... fails its CRC-32C check'."""
    n = 1024  # 4 MiB of float32 per key
    a = _ar(n, n)
    saved = {"a": a, "b": -a, "v": -a.flatten(), "col": _ar(n) * 7,
             "c": torch.complex(_ar(n * n // 2), -_ar(n * n // 2)), "other": _ar(n, n) * 3}
    reshard.save(saved, tmp_path)
    w = torch.zeros(n, n)
    c = torch.zeros(n * n // 2, dtype=torch.complex64)
    for keys, dest in (
        (("a", "b"), {"a": w, "b": w.t()}),
        (("a", "v"), {"a": w, "v": w.view(-1)}),
        (("v", "a"), {"v": w.view(-1), "a": w}),
        (("c", "a"), {"c": c, "a": torch.view_as_real(c).view(n, n)}),
        (("a", "col"), {"a": w, "col": w[:, 3]}),
        (("col", "b"), {"col": w[:, 3], "b": w.t()}),
    ):
        with pytest.raises(reshard.LayoutMismatchError,
                           match=rf"keys '{keys[0]}' and '{keys[1]}': their tensors are views that share"):
            reshard.load(dest, tmp_path, strict=False)
        assert not w.any() and not c.any(), keys  # refused before anything was read
    # Layouts that meet in address range only still load: rows of a buffer above its
    # transposed half, a column beside a block of other columns.
    big = torch.zeros(2 * n, n)
    dest = {"a": big[:n], "b": big[n:].t(), "col": big[n:, 0]}
    with pytest.raises(reshard.LayoutMismatchError, match="keys 'b' and 'col'"):
        reshard.load(dest, tmp_path, strict=False)
    wide = torch.zeros(n, n + 1)
    dest = {"other": wide[:, 1:], "col": wide[:, 0]}
    reshard.load(dest, tmp_path, strict=False)
    assert torch.equal(dest["other"], saved["other"]) and torch.equal(dest["col"], saved["col"])


def test_numpy_destinations_with_negative_strides_share_no_memory_unseen(tmp_path: Path) -> None:
    """A numpy array with negative strides is filled through a copy written back after
    the fill, and the memory checks looked at the copy: elements shared inside it
    (as_strided with overlapping negative strides) or with another key's array took
    whichever value was written back last, silently. They are checked on the caller's
    memory now; tied arrays of that kind still load, the later key's values."""
    n = 1 << 16
    saved = {"a": np.arange(n, dtype=np.float32), "b": -np.arange(n, dtype=np.float32),
             "q": np.arange(16, dtype=np.float32).reshape(4, 4)}
    reshard.save(saved, tmp_path)
    arr = np.zeros(20, np.float32)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'q': its strides .* share memory"):
        reshard.load({"q": np.lib.stride_tricks.as_strided(arr[19:], (4, 4), (-8, -4))}, tmp_path,
                     strict=False)
    buf = np.zeros(n + 4, np.float32)
    for keys, dest in (
        (("a", "b"), {"a": buf[n + 3::-1][:n], "b": buf[:n]}),
        (("b", "a"), {"b": buf[:n], "a": buf[n + 3::-1][:n]}),
        (("a", "b"), {"a": buf[n + 3::-1][:n], "b": buf[n - 1::-1]}),
        (("a", "b"), {"a": buf[n - 1::-1], "b": buf[:n]}),  # one memory, one key flipped
    ):
        with pytest.raises(reshard.LayoutMismatchError,
                           match=rf"keys '{keys[0]}' and '{keys[1]}': their tensors are views that share"):
            reshard.load(dest, tmp_path, strict=False)
        assert not buf.any(), keys
    for order in (("a", "b"), ("b", "a")):
        flipped = np.zeros(2 * n, np.float32)[::-2]
        reshard.load({order[0]: flipped, order[1]: flipped}, tmp_path, strict=False)
        assert np.array_equal(flipped, saved[order[1]]), order
    both = np.zeros(2 * n, np.float32)  # interleaved, backwards: disjoint
    reshard.load({"a": both[::-2], "b": both[-2::-2]}, tmp_path, strict=False)
    assert np.array_equal(both[::-2], saved["a"]) and np.array_equal(both[-2::-2], saved["b"])
