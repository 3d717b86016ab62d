"""Regressions found by red-teaming, one process: each test names the bug it pins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reshard


def _arange(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape).to(dtype)


@pytest.mark.parametrize("frame_raw_nbytes", [5, 7, 13])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64, torch.complex128])
@pytest.mark.parametrize("codec", [None, "zstd"])
def test_frames_that_split_elements_read_exactly(tmp_path, monkeypatch, frame_raw_nbytes, dtype,
                                                 codec):
    # Bug: with frame_raw_nbytes not a multiple of the item size, partial reads viewed
    # the decoded bytes from a frame start inside an element: bfloat16 read garbage
    # silently (CRCs pass), wider dtypes raised a numpy ValueError.
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(frame_raw_nbytes))
    x = _arange((5, 7), dtype)
    reshard.save({"a": x}, tmp_path, codec=codec)
    monkeypatch.delenv("RESHARD_FRAME_RAW_NBYTES")
    with reshard.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.read("a"), x)
        assert torch.equal(ckpt.read("a", (slice(1, 4), slice(2, 6))), x[1:4, 2:6])
        assert torch.equal(ckpt.read("a", (3, slice(1, 6))), x[3, 1:6])
    dest = {"a": torch.zeros(5, 7, dtype=torch.complex128)}
    reshard.load(dest, tmp_path)
    assert torch.equal(dest["a"], x.to(torch.complex128))
    assert reshard.verify(tmp_path).ok


def test_numpy_negative_strides_save_and_load_in_place(tmp_path):
    # Bug: torch.from_numpy refuses negative strides, so saving np.flip(a) or loading
    # into a[::-1] failed with a bare "rank 0: ValueError" naming no key.
    src = np.arange(12.0).reshape(3, 4)[::-1, ::-1]
    reshard.save({"a": src, "b": np.arange(5)}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        assert np.array_equal(ckpt.read("a"), np.ascontiguousarray(src))
    backing = np.zeros(10, dtype=np.int64)
    dest = {"a": np.zeros((4, 3))[::-1].T, "b": backing[::-2]}
    a_before = dest["a"]
    reshard.load(dest, tmp_path)
    assert dest["a"] is a_before and np.array_equal(dest["a"], src)
    assert np.array_equal(backing[::-2], np.arange(5)) and not backing[-2::-2].any()


def test_conjugate_and_negative_views_save_and_load(tmp_path):
    # Bug: .contiguous() keeps the lazy conj/neg bit and .view(uint8) refuses it, so
    # x.conj() could not be saved, and a conj view could not be loaded into.
    z = torch.tensor([1 + 2j, 3 - 1j, -2 + 0.5j])
    reshard.save({"c": z.conj(), "n": torch.arange(3.0)._neg_view()}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.read("c"), z.conj().resolve_conj())
        assert torch.equal(ckpt.read("n"), -torch.arange(3.0))
    dest = {"c": torch.zeros(3, dtype=torch.complex64).conj(), "n": torch.zeros(3)._neg_view()}
    reshard.load(dest, tmp_path)
    assert torch.equal(dest["c"].resolve_conj(), z.conj().resolve_conj())
    assert torch.equal(dest["n"].resolve_neg(), -torch.arange(3.0))


@pytest.mark.parametrize("make, words", [
    (lambda: torch.eye(3).to_sparse(), "sparse_coo"),
    (lambda: torch.empty(3, device="meta"), "meta device"),
])
def test_tensors_without_dense_data_are_refused_naming_the_key(tmp_path, make, words):
    # Bug: sparse and meta tensors failed deep in the writer as "rank 0: RuntimeError"
    # naming no key.
    with pytest.raises(reshard.UnsupportedValueError, match=rf"key 'model\.w'.*{words}"):
        reshard.save({"model": {"w": make()}}, tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_loading_into_meta_or_expanded_tensors_is_refused(tmp_path):
    # Bug: a meta destination "loaded" silently (nothing was written anywhere), and an
    # expanded destination failed as a bare RuntimeError naming no key.
    reshard.save({"w": torch.arange(12.0).reshape(3, 4)}, tmp_path)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'w'.*meta device.*to_empty"):
        reshard.load({"w": torch.empty(3, 4, device="meta")}, tmp_path)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'w'.*expanded"):
        reshard.load({"w": torch.zeros(3, 1).expand(3, 4)}, tmp_path)


def test_save_into_a_used_folder_keeps_the_users_files(tmp_path):
    # Bug: after the commit a save deleted every file of data/ that its manifest did not
    # name, so reshard.save(sd, ".") in a project deleted the user's data/train.csv.
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("1,2,3")
    (tmp_path / "data" / "model.0.bin").write_bytes(b"not ours")
    leftover = tmp_path / "data" / "20240101T000000-0123456789ab.3.bin"  # a killed save's
    leftover.write_bytes(b"x")
    for step in range(2):
        reshard.save({"w": torch.full((4,), float(step))}, tmp_path)
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert "train.csv" in names and "model.0.bin" in names and leftover.name not in names
    assert len([n for n in names if n.endswith(".0.bin") and n != "model.0.bin"]) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # verify does not call the user's files leftovers that "the next save removes".
    report = reshard.verify(tmp_path)
    assert report.ok and not report.warnings, report.warnings
    dest = {"w": torch.zeros(4)}
    reshard.load(dest, tmp_path)
    assert torch.equal(dest["w"], torch.ones(4))


def test_read_accepts_numpy_and_tensor_ints_and_int_keys(tmp_path):
    # Bug: ckpt.read(key, np.int64(1)) (an index from numpy) was refused, and
    # ckpt.info(0) for a checkpoint saved from {0: ...} raised a bare TypeError.
    x = torch.arange(60.0).reshape(3, 4, 5)
    reshard.save({"a": x, 0: torch.arange(3)}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.read("a", np.int64(1)), x[1])
        assert torch.equal(ckpt.read("a", (torch.tensor(-1), np.int32(2))), x[-1, 2])
        assert torch.equal(ckpt.read(0), torch.arange(3)) and ckpt.info(0).shape == (3,)
        with pytest.raises(reshard.CheckpointError, match="ints or slices"):
            ckpt.read("a", True)
        with pytest.raises(reshard.CheckpointError, match="ints or slices"):
            ckpt.read("a", torch.tensor(1.0))


def test_fresh_optimizer_state_loads_and_training_continues_identically(tmp_path):
    # Bug: a fresh optimizer's state_dict()["state"] is {}, so a strict load raised "no
    # key 'optim.state'" although the checkpoint held optim.state.0.exp_avg..., and a
    # strict=False load silently kept the empty state (Adam moments reset).
    torch.manual_seed(0)
    data = torch.randn(8, 3)

    def train_step(model, opt):
        opt.zero_grad()
        model(data).square().sum().backward()
        opt.step()

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    train_step(model, opt)
    reshard.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path)
    train_step(model, opt)

    for strict in (True, False):
        fresh = torch.nn.Linear(3, 2)
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
        state = {"model": fresh.state_dict(), "optim": fresh_opt.state_dict()}
        reshard.load(state, tmp_path, strict=strict)
        fresh_opt.load_state_dict(state["optim"])
        assert fresh_opt.param_groups[0]["lr"] == 0.1
        train_step(fresh, fresh_opt)
        assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
        assert torch.equal(fresh_opt.state[fresh.weight]["exp_avg_sq"],
                           opt.state[model.weight]["exp_avg_sq"])


def test_empty_containers_take_the_saved_subtree(tmp_path):
    reshard.save({"s": {0: {"m": torch.ones(2), "step": 3}}, "l": [[1, 2], ["a"]],
                  "q": {5: 1, 7: 2}}, tmp_path)
    dest = {"s": {}, "l": [], "q": []}
    reshard.load(dest, tmp_path)
    assert list(dest["s"]) == [0] and torch.equal(dest["s"][0]["m"], torch.ones(2))
    assert dest["s"][0]["step"] == 3
    assert dest["l"] == [[1, 2], ["a"]] and dest["q"] == {5: 1, 7: 2}


def test_save_while_an_async_save_to_the_same_path_is_in_flight(tmp_path):
    # Bug: each commit deleted the other save's data files, so the checkpoint left at
    # the path named a file that was gone (every time, on this machine).
    big = torch.arange(2_000_000, dtype=torch.float32)
    handle = reshard.async_save({"a": big, "b": torch.arange(10.0)}, tmp_path)
    reshard.save({"a": torch.zeros(2_000_000), "b": torch.zeros(10)}, tmp_path)
    handle.result()
    assert reshard.verify(tmp_path).ok
    dest = {"a": torch.ones(2_000_000), "b": torch.ones(10)}
    reshard.load(dest, tmp_path)
    assert not dest["a"].any() and not dest["b"].any()


def test_verify_an_intact_dcp_checkpoint_with_several_shapes(tmp_path):
    # Bug: verify cached decoders by codec name, but a DCP item's decoder carries the
    # item's dtype and shape, so every DCP item after the first was reported DAMAGED.
    import torch.distributed.checkpoint as dcp

    with pytest.warns(UserWarning):  # DCP: "assuming the intent is to save in a single process"
        dcp.save({"w": torch.arange(10.0), "n": {"a": torch.ones(2, 3, dtype=torch.float64)},
                  "step": 5}, checkpoint_id=str(tmp_path))
    report = reshard.verify(tmp_path)
    assert report.ok, report.damaged
    assert report.chunks == 3  # the two tensors' items, and since dcp9 the value 'step''s


def test_save_refuses_what_the_reader_would_refuse(tmp_path):
    # Bug: a 65-dim tensor saved and committed, but the manifest parser allows 64 dims,
    # so the new checkpoint could not be opened and the previous one was deleted.
    reshard.save({"ok": torch.ones((1,) * 64)}, tmp_path)
    with pytest.raises(reshard.UnsupportedValueError, match=r"key 'big': 65 dims.*at most 64"):
        reshard.save({"ok": torch.ones((1,) * 64), "big": torch.ones((1,) * 65)}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        assert ckpt.keys() == ["ok"] and ckpt.read("ok").shape == (1,) * 64


def test_frame_size_setting_beyond_the_format_limit_is_refused(tmp_path, monkeypatch):
    # Bug: RESHARD_FRAME_RAW_NBYTES above 2**30 committed chunks whose frame size the
    # manifest parser refuses: the new checkpoint could not be opened.
    reshard.save({"a": torch.ones(3)}, tmp_path)
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(2**31))
    with pytest.raises(reshard.CheckpointError, match="RESHARD_FRAME_RAW_NBYTES.*at most"):
        reshard.save({"a": torch.zeros(3)}, tmp_path)
    monkeypatch.setenv("RESHARD_FRAME_RAW_NBYTES", str(2**30))
    reshard.save({"a": torch.full((3,), 2.0)}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        assert torch.equal(ckpt.read("a"), torch.full((3,), 2.0))


def test_reading_a_checkpoint_replaced_by_a_later_save_names_the_file(tmp_path):
    # Not a crash: a CheckpointError naming the key and the vanished file, with the cause.
    reshard.save({"a": torch.arange(10.0)}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        old_file = ckpt.info("a").chunks[0].file
        reshard.save({"a": torch.zeros(10)}, tmp_path)
        with pytest.raises(reshard.CorruptCheckpointError,
                           match=rf"key 'a': data file {old_file} is missing.*later save"):
            ckpt.read("a")
    with reshard.open(tmp_path) as ckpt:
        assert not ckpt.read("a").any()


def test_info_and_read_of_a_missing_key_raise_missing_keys_error(tmp_path):
    # Was the bare root CheckpointError: `except KeyError` around ckpt.info(k) missed it.
    reshard.save({"a": torch.ones(2)}, tmp_path)
    with reshard.open(tmp_path) as ckpt:
        for call in (ckpt.info, ckpt.read):
            with pytest.raises(reshard.MissingKeysError, match="has no key 'nope'") as info:
                call("nope")
            assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("path, words", [(None, "got None"), ("", "path is empty")])
def test_bad_paths_are_checkpoint_errors(path, words):
    # Bug: None raised a bare TypeError; "" silently meant the current directory.
    with pytest.raises(reshard.CheckpointError, match=words):
        reshard.save({"a": torch.ones(1)}, path)
    with pytest.raises(reshard.CheckpointError, match=words):
        reshard.open(path)
