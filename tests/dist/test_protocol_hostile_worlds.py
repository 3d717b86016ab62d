"""DCP checkpointable-protocol subclasses and LocalShardsWrapper DTensors, odd and hostile,
saved in a world of 2 and loaded in a world of 3 (tests/dist/protocol_worlds.py)."""

from __future__ import annotations

import pytest

from tests.helpers.world import run_world

from . import protocol_worlds as pw


def _agreed(results: list[dict[str, str]], case: str, *words: str) -> None:
    msgs = {r[case] for r in results}
    assert len(msgs) == 1, (case, msgs)
    (msg,) = msgs
    missing = [w for w in ("key 't'", *words) if w not in msg]
    assert not missing and not msg.startswith("unexpected"), (case, missing, msg)


_HOSTILE_SAVES = {
    "overlap": ("LayoutMismatchError", "overlap"),
    "gap": ("LayoutMismatchError", "holes"),
    "wrong_shape_on_last": ("LayoutMismatchError", "shape [", "its chunk says"),
    "wrong_dtype_on_last": ("LayoutMismatchError", "torch.float64", "float32"),
    "raises_on_last": ("UnsupportedValueError", "__get_tensor_shard__ failed", "no such shard here"),
    "meta_on_last": ("UnsupportedValueError", "meta device"),
}

_HOSTILE_LOADS = {
    "outside": ("LayoutMismatchError", "lies outside shape [6, 8]"),
    "wrong_ndim": ("LayoutMismatchError", "does not have the 2 dims"),
    "meta": ("UnsupportedValueError", "meta device"),
    "overlapping_strides": ("UnsupportedValueError", "share memory"),
    "raises": ("UnsupportedValueError", "__get_tensor_shard__ failed", "is gone"),
}


@pytest.mark.dist
def test_protocol_subclasses_saved_on_2_loaded_on_3(tmp_path):
    saved = run_world(pw.save_world, 2, str(tmp_path), timeout_s=120)
    for case in [*pw.save_cases(0, 2), "lsw_2d", "lsw_replicated"]:
        assert [r[case] for r in saved] == ["no error"] * 2, (case, saved)
    for case, words in _HOSTILE_SAVES.items():
        _agreed(saved, f"hostile_{case}", *words)
        # Refused before any file: no checkpoint that loads garbage.
        assert [r[f"hostile_{case}_nothing_written"] for r in saved] == ["True"] * 2, case
    # The same objects through DCP, read back by reshard: the values, or (where DCP's
    # own checkpoint is broken) a clear error naming the key, never other values.
    for case in pw.save_cases(0, 2):
        assert [r[f"dcp_save_{case}"] for r in saved] == ["no error"] * 2, (case, saved)
        if case == "out_of_order_zero" and saved[0][f"dcp_then_reshard_{case}"] != "no error":
            # DCP stores items by offsets: the zero-size chunk at the offsets of a real
            # one takes its place in DCP's metadata (torch 2.13), and the bytes disagree.
            _agreed(saved, f"dcp_then_reshard_{case}", "CorruptCheckpointError", "metadata says")
        else:
            assert [r[f"dcp_then_reshard_{case}"] for r in saved] == ["no error"] * 2, case

    loaded = run_world(pw.load_world, 3, str(tmp_path), 2, timeout_s=120)
    bad = {k: v for r in loaded for k, v in r.items()
           if not k.startswith("hostile") and v != "no error"}
    assert not bad, bad
    assert len([k for k in loaded[0] if "->" in k]) == (7 + 4) * 5 * 2
    for case, words in _HOSTILE_LOADS.items():
        _agreed(loaded, f"hostile_load_{case}", *words)
