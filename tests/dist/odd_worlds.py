"""Building, saving, loading and checking the odd_scenarios table in one rank (spawned
worlds import this module; the pytest process uses it for the world of 1)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

import reshard

from .codec_util import register_test_codecs
from .layouts import (
    Full,
    Mesh,
    Meshes,
    Rows,
    contiguous_stride,
    mesh_local_index,
    rows_leaf,
)
from .odd_scenarios import (
    CODECS,
    SCENARIOS,
    AnyLayout,
    Codec,
    MeshView,
    Scenario,
    View,
    bits,
    codec_arg,
    pattern,
    sentinel,
)

Problem = tuple[str, int, int, str]  # (scenario, load world, rank, message)


def _seed(s: Scenario) -> int:
    return sum(map(ord, s.name)) % 101


def want(s: Scenario) -> torch.Tensor:
    return pattern(s.shape, s.dtype, _seed(s))


def path(root: str, world: int, codec: Codec) -> str:
    return os.path.join(root, f"from{world}-{codec.tag}")


# Views: the view, and a check that nothing outside it was written


def _view(how: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[], str]]:
    nd = len(shape)
    if how == "t":
        base = sentinel(tuple(reversed(shape)), dtype)
        view = base.permute(*reversed(range(nd))) if nd else base

        def outside() -> str:
            return ""  # the view is all of its buffer
        return view, outside
    if how == "slice":
        base = sentinel(tuple(n + 3 for n in shape), dtype)
        cut: Any = tuple(slice(1, 1 + n) for n in shape)
    else:  # step: every other row
        base = sentinel((2 * shape[0] + 1,) + shape[1:], dtype)
        cut = (slice(1, None, 2),)
    view = base[cut]

    def outside() -> str:
        copy = base.clone()
        copy[cut] = sentinel(shape, dtype)
        if torch.equal(bits(copy), bits(sentinel(tuple(base.shape), dtype))):
            return ""
        return "bytes outside the destination view were written"
    return view, outside


# Building leaves


class Built:
    """Leaves built by one rank, with the border checks of their views."""

    def __init__(self) -> None:
        self.borders: dict[str, Callable[[], str]] = {}


def _local_index(layout: Mesh, shape: tuple[int, ...], meshes: Meshes) -> tuple[Any, torch.Tensor]:
    mesh = meshes.get(layout.mesh_shape)
    return mesh, mesh_local_index(shape, layout, mesh.get_coordinate())


def build(s: Scenario, layout: AnyLayout, rank: int, meshes: Meshes | None, built: Built,
          source: torch.Tensor | None) -> Any:
    """This rank's leaf of ``s`` under ``layout``: filled from ``source`` or sentinel."""
    shape, dtype = s.shape, s.dtype
    if isinstance(layout, Full):
        return source.clone() if source is not None else sentinel(shape, dtype)
    if isinstance(layout, View):
        view, outside = _view(layout.how, shape, dtype)
        if source is not None:
            view.copy_(source)
        built.borders[s.name] = outside
        return view
    if isinstance(layout, Rows):
        return _rows(layout, shape, dtype, rank, meshes, source)
    from torch.distributed.tensor import DTensor

    assert meshes is not None
    base = layout.base if isinstance(layout, MeshView) else layout
    mesh, idx = _local_index(base, shape, meshes)
    local = source.reshape(-1)[idx] if source is not None else sentinel(tuple(idx.shape), dtype)
    if isinstance(layout, MeshView):
        view, outside = _view(layout.how, tuple(local.shape), dtype)
        local = view.copy_(local)
        built.borders[s.name] = outside
    elif layout.strided:  # every other element of a larger buffer
        local = sentinel((*local.shape, 2), dtype)[..., 0].copy_(local)
    return DTensor.from_local(local, mesh, base.torch_placements(), run_check=False,
                              shape=torch.Size(shape), stride=contiguous_stride(shape))


def _rows(layout: Rows, shape: tuple[int, ...], dtype: torch.dtype, rank: int,
          meshes: Meshes | None, source: torch.Tensor | None) -> Any:
    pieces = []
    for off, n in layout.rows[rank]:
        t = (source[off:off + n].clone() if source is not None
             else sentinel((n,) + tuple(shape[1:]), dtype))
        pieces.append((off, t))
    return rows_leaf(layout, shape, dtype, pieces, meshes)


# Checking


def _parts(layout: AnyLayout, leaf: Any, shape: tuple[int, ...], meshes: Meshes | None
           ) -> list[tuple[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
    if isinstance(layout, (Full, View)):
        return [("whole", leaf, lambda w: w)]
    if isinstance(layout, (Mesh, MeshView)):
        base = layout.base if isinstance(layout, MeshView) else layout
        assert meshes is not None
        _, idx = _local_index(base, shape, meshes)
        return [("local", leaf.to_local(), lambda w: w.reshape(-1)[idx])]
    if layout.kind in ("proto", "object"):
        pieces = leaf._pieces
    else:
        lsw = leaf._local_tensor
        pieces = [(int(o[0]), t) for o, t in zip(lsw.local_offsets(), lsw.local_shards())]
    return [(f"rows[{off}:{off + t.shape[0]}]", t,
             lambda w, off=off, n=t.shape[0]: w[off:off + n]) for off, t in pieces]


def check(s: Scenario, leaf: Any, meshes: Meshes | None, built: Built) -> list[str]:
    w = want(s)
    out = []
    for where, got, select in _parts(s.load, leaf, s.shape, meshes):
        expected = select(w)
        if got.dtype != expected.dtype or tuple(got.shape) != tuple(expected.shape):
            out.append(f"{where}: got {got.dtype} {list(got.shape)}, want {expected.dtype} "
                       f"{list(expected.shape)}")
            continue
        a, b = bits(got), bits(expected)
        if not torch.equal(a, b):
            bad = (a != b).nonzero().tolist()
            out.append(f"{where}: {len(bad)} of {a.numel()} element words differ, first at "
                       f"{bad[0]}: got {a[tuple(bad[0])].item()}, want {b[tuple(bad[0])].item()}")
    border = built.borders.get(s.name)
    if border is not None and border():
        out.append(border())
    return out


# Plain values, numpy arrays and odd keys, saved by every world next to CODECS[0]'s tensors

VALUES_KEY = "values.with.dots"


def values_tree(fill: bool) -> dict[Any, Any]:
    """The saved tree (``fill``) or a destination of the same keys: numpy destinations in
    Fortran order, reversed, empty; replaced values hold other types beforehand."""
    import numpy as np

    a = np.arange(12, dtype=np.int32).reshape(3, 4) * 7 - 5
    if fill:
        return {"": 2**80, "ü/..": [1.5, (None, "x\u2028y", b"\x00\xff")], 7: {"a.b": -0.0},
                "f_order": a.copy(order="F"), "reversed": a[::-1, ::-1].copy(),
                "empty": np.zeros((0, 3), dtype=np.float16), "scalar": np.uint16(65535),
                "tensor_in_tuple": (torch.arange(5, dtype=torch.int16), "t")}
    return {"": None, "ü/..": [0.0, (1, "", b"")], 7: {"a.b": 1},
            "f_order": np.zeros((4, 3), dtype=np.int32, order="C").T,
            "reversed": np.zeros((3, 4), dtype=np.int32)[::-1], "empty": np.ones((0, 3), dtype=np.float16),
            "scalar": np.uint16(0), "tensor_in_tuple": (torch.zeros(5, dtype=torch.int16), "")}


def _values_problems(got: dict[Any, Any]) -> list[str]:
    import numpy as np

    want = values_tree(True)
    out = []
    for k, w in want.items():
        g = got[k]
        if isinstance(w, np.ndarray | np.generic):
            same = type(g) is type(w) and g.dtype == w.dtype and np.array_equal(g, w)
        elif k == "tensor_in_tuple":
            same = torch.equal(g[0], w[0]) and g[1] == w[1]
        elif k == 7:
            same = g == w and str(g["a.b"]) == "-0.0"
        else:
            same = g == w and type(g) is type(w)
        if not same:
            out.append(f"{VALUES_KEY}[{k!r}]: got {g!r}, want {w!r}")
    return out


# Saving and loading


def save_sources(rank: int, world: int, root: str, meshes: Meshes | None) -> None:
    register_test_codecs()
    built = Built()
    for codec in CODECS:
        mine = [s for s in SCENARIOS if s.save.world == world and s.codec == codec]
        sd: dict[str, Any] = {s.name: build(s, s.save, rank, meshes, built, want(s)) for s in mine}
        if codec == CODECS[0]:
            sd[VALUES_KEY] = values_tree(True)
        os.environ["RESHARD_FRAME_RAW_NBYTES"] = str(codec.frame)
        try:
            if codec.tag == ASYNC_CODEC:
                # In the background: the sources are overwritten as soon as it returns.
                handle = reshard.async_save(sd, path(root, world, codec), codec=codec_arg(codec))
                for s in mine:
                    for _, t, _ in _parts(s.save, sd[s.name], s.shape, meshes):
                        _scribble(t)
                handle.result()
            else:
                reshard.save(sd, path(root, world, codec), codec=codec_arg(codec))
        finally:
            del os.environ["RESHARD_FRAME_RAW_NBYTES"]


ASYNC_CODEC = "rot1000"  # the checkpoints saved with async_save


def _scribble(t: torch.Tensor) -> None:
    if t.dtype == torch.bool:
        t.logical_not_()
    elif t.numel():
        bits(t).fill_(0x5A)


# Load settings, rotated over the loads: (name, environment)
LOAD_ENVS: list[tuple[str, dict[str, str]]] = [
    ("default", {}),
    ("nomap", {"RESHARD_MAP_READS": "0"}),
    ("exchange", {"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1",
                  "RESHARD_EXCHANGE_ROUND_NBYTES": "200"}),
    ("pieces", {"RESHARD_MAX_PIECE_NBYTES": "24", "RESHARD_IO_THREADS": "2"}),
    ("exchange-nomap", {"RESHARD_EXCHANGE_READS": "1", "RESHARD_EXCHANGE_MIN_NBYTES": "1",
                        "RESHARD_MAP_READS": "0", "RESHARD_IO_THREADS": "3"}),
]


def _load_group(scenarios: list[Scenario], ckpt: str, env: dict[str, str], rank: int, world: int,
                meshes: Meshes | None) -> list[Problem]:
    built = Built()
    sd: dict[str, Any] = {s.name: build(s, s.load, rank, meshes, built, None) for s in scenarios}
    with_values = ckpt.endswith(CODECS[0].tag) and len(scenarios) > 1
    if with_values:
        sd[VALUES_KEY] = values_tree(False)
    os.environ.update(env)
    try:
        reshard.load(sd, ckpt)
    except Exception as e:  # noqa: BLE001 - narrowed down scenario by scenario
        if len(scenarios) == 1:
            return [(scenarios[0].name, world, rank, f"load raised {type(e).__name__}: {e}")]
        out: list[Problem] = [(f"all of {os.path.basename(ckpt)}", world, rank,
                               f"load raised {type(e).__name__}: {e}")]
        for s in scenarios:  # the same path on every rank: collectives stay matched
            out += _load_group([s], ckpt, env, rank, world, meshes)
        return out
    finally:
        for k in env:
            os.environ.pop(k, None)
    problems: list[Problem] = []
    for s in scenarios:
        for msg in check(s, sd[s.name], meshes, built):
            problems.append((s.name, world, rank, msg))
    if with_values:
        problems += [(VALUES_KEY, world, rank, msg) for msg in _values_problems(sd[VALUES_KEY])]
    return problems


def load_targets(rank: int, world: int, root: str, meshes: Meshes | None
                 ) -> tuple[list[Problem], list[str]]:
    """Load every scenario targeting this world; the problems and the loads run."""
    register_test_codecs()
    groups: dict[tuple[int, str], list[Scenario]] = defaultdict(list)
    for s in SCENARIOS:
        if s.load.world == world:
            groups[(s.save.world, s.codec.tag)].append(s)
    from reshard.transfer import exchange

    problems: list[Problem] = []
    runs = []
    real, used = exchange.run, [0]

    def counted(*args: Any, **kwargs: Any) -> None:
        used[0] += 1
        real(*args, **kwargs)

    exchange.run = counted  # type: ignore[assignment]
    try:
        _load_all(groups, rank, world, root, meshes, problems, runs)
    finally:
        exchange.run = real  # type: ignore[assignment]
    runs.append(f"exchanged{world}:{used[0]}")
    return problems, runs


def _load_all(groups: dict[tuple[int, str], list[Scenario]], rank: int, world: int, root: str,
              meshes: Meshes | None, problems: list[Problem], runs: list[str]) -> None:
    for i, ((src, tag), scenarios) in enumerate(sorted(groups.items())):
        codec = next(c for c in CODECS if c.tag == tag)
        # Cooperative reads need frames of whole elements: the id16 and id1000 checkpoints.
        envs = ([e for e in LOAD_ENVS if e[0].startswith("exchange")] if tag in ("id16", "id1000")
                else [e for e in LOAD_ENVS if not e[0].startswith("exchange")])
        env_name, env = envs[(i + world) % len(envs)]
        problems += _load_group(scenarios, path(root, src, codec), env, rank, world, meshes)
        runs.append(f"{src}to{world}-{tag}-{env_name}")
