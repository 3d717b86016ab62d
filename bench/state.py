"""Benchmark state dicts: model-like layouts whose every element is reproducible from
its global index, so any rank can rebuild the expected values of any box and check a
load element by element (torch.equal) without keeping a copy of the checkpoint.

Values tile a seeded 8M-value N(0, s) pool with a per-tensor offset (as the DCP baseline
did): random-looking to zstd (fp32 compresses ~1.08x, bf16 N(0, 0.02) ~1.3x), and any box
is rebuilt by one slice copy per row.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from reshard.core.layout import Box, shard_box

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Spec:
    """One tensor of a benchmark state: name, global shape, dtype, value recipe."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str = "rand"  # "rand" (row+col or randn), "zeros", "step"
    scale: float = 1.0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def _round(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def model_specs(size_gib: float) -> list[Spec]:
    """A ~``size_gib`` transformer-like state: fp32 embed/head and flat buffers, bf16
    block matrices, fp32 norms, a bf16 bias; 2-D and 1-D mixed.

    Element bytes: 2 x (8h x h) fp32 + 3 blocks x 12 h^2 bf16 = 136 h^2, plus two flat
    fp32 buffers of ~4% each. h is a multiple of 64 so every split used here is even.
    """
    total = size_gib * GIB
    h = _round(math.sqrt(0.92 * total / 136), 64)
    flat = _round(0.04 * total / 4, 64)
    specs = [Spec("embed.weight", (8 * h, h), torch.float32)]
    for b in range(3):
        p = f"blocks.{b}."
        specs += [
            Spec(p + "norm1.weight", (h,), torch.float32),
            Spec(p + "attn.qkv.weight", (3 * h, h), torch.bfloat16),
            Spec(p + "attn.out.weight", (h, h), torch.bfloat16),
            Spec(p + "norm2.weight", (h,), torch.float32),
            Spec(p + "mlp.up.weight", (4 * h, h), torch.bfloat16),
            Spec(p + "mlp.down.weight", (h, 4 * h), torch.bfloat16),
        ]
    specs += [
        Spec("final_norm.weight", (h,), torch.float32),
        Spec("head.weight", (8 * h, h), torch.float32),
        Spec("head.bias", (8 * h,), torch.bfloat16),
        Spec("buffers.a", (flat,), torch.float32),
        Spec("buffers.b", (flat,), torch.float32),
    ]
    return specs


def zstd_specs(dataset: str, size_gib: float) -> list[Spec]:
    """The three zstd datasets: random fp32, bf16 N(0, 0.02) weights, Adam state at init."""
    base = model_specs(size_gib)
    if dataset == "fp32":
        return [Spec(s.name, s.shape, torch.float32) for s in _scaled(base, 0.5)]
    if dataset == "bf16":
        return [Spec(s.name, s.shape, torch.bfloat16, scale=0.02) for s in base]
    if dataset == "optim":
        params = _scaled([Spec(s.name, s.shape, torch.float32) for s in base], 1 / 3)
        out: list[Spec] = []
        for s in params:
            out += [Spec("param." + s.name, s.shape, torch.float32),
                    Spec("exp_avg." + s.name, s.shape, torch.float32, kind="zeros"),
                    Spec("exp_avg_sq." + s.name, s.shape, torch.float32, kind="zeros")]
        return out + [Spec("step", (), torch.float32, kind="step")]
    raise ValueError(f"unknown zstd dataset {dataset!r}")


def _scaled(specs: list[Spec], factor: float) -> list[Spec]:
    """Shrink the shapes so the total bytes scale by ``factor`` (dims stay multiples of 4)."""
    f = math.sqrt(factor)
    out = []
    for s in specs:
        shape = tuple(_round(d * f, 4) for d in s.shape) if len(s.shape) == 2 else (
            tuple(_round(d * factor, 4) for d in s.shape))
        out.append(Spec(s.name, shape, s.dtype, s.kind, s.scale))
    return out


def tiny_specs(n: int) -> list[Spec]:
    return [Spec(f"tiny.{i:05d}", (256,), torch.float32) for i in range(n)]


def total_bytes(specs: list[Spec]) -> int:
    return sum(s.nbytes for s in specs)


# Values


POOL = 1 << 23  # 8M values: 32 MiB of fp32, far beyond zstd's match window
_POOLS: dict[float, torch.Tensor] = {}


def _pool(scale: float) -> torch.Tensor:
    """A seeded N(0, scale) pool, doubled so any window of up to POOL values is one slice."""
    if scale not in _POOLS:
        p = torch.randn(POOL, generator=torch.Generator().manual_seed(1234)) * scale
        _POOLS[scale] = torch.cat([p, p])
    return _POOLS[scale]


def _flat_values(pool: torch.Tensor, start: int, n: int, out: torch.Tensor) -> None:
    """``out[:n] = values at flat indices start..start+n`` (the pool tiled, wrapping)."""
    done = 0
    while done < n:
        s = (start + done) % POOL
        take = min(n - done, POOL)
        out[done:done + take].copy_(pool[s:s + take])
        done += take


def expected(spec: Spec, box: Box) -> torch.Tensor:
    """The saved values of ``box`` of ``spec`` (a fresh, contiguous tensor).

    Element at flat index i of the global tensor is pool[(i + seed) % POOL]: random-looking
    bits (zstd gets only the exponent redundancy), rebuilt for any box by row slices.
    """
    if spec.kind == "zeros":
        return torch.zeros(box.sizes, dtype=spec.dtype)
    if spec.kind == "step":
        return torch.tensor(1000.0, dtype=spec.dtype)
    pool = _pool(spec.scale)
    off = spec.seed
    if len(spec.shape) == 1:
        out = torch.empty(box.sizes, dtype=torch.float32)
        _flat_values(pool, off + box.offsets[0], box.sizes[0], out)
        return out.to(spec.dtype)
    cols = spec.shape[1]
    (r0, c0), (nr, nc) = box.offsets, box.sizes
    out = torch.empty((nr, nc), dtype=spec.dtype)
    i = 0
    while i < nr:
        # Rows start `cols` apart in the doubled pool until a start would pass its end:
        # one strided view covers them all.
        s = (off + (r0 + i) * cols + c0) % POOL
        k = min(nr - i, (2 * POOL - nc - s) // cols + 1)
        out[i:i + k].copy_(pool.as_strided((k, nc), (cols, 1), s))  # casts on the way
        i += k
    return out


# Layouts: how a state is placed on a world


@dataclass(frozen=True, slots=True)
class Layout:
    """``mesh`` shape and placements (``("shard", d)`` / ``("replicate", -1)`` per mesh
    dim) for 2-D tensors; 1-D tensors use ``placements_1d``; "full" means plain tensors."""

    name: str
    mesh: tuple[int, ...]
    placements_2d: tuple[tuple[str, int], ...]
    placements_1d: tuple[tuple[str, int], ...]

    @property
    def world(self) -> int:
        return math.prod(self.mesh)

    def placements(self, spec: Spec) -> tuple[tuple[str, int], ...]:
        if len(spec.shape) == 0:
            return tuple(("replicate", -1) for _ in self.mesh)
        return self.placements_2d if len(spec.shape) == 2 else self.placements_1d


def layout(name: str, world: int) -> Layout:
    if name == "S0":
        return Layout(f"w{world} Shard(0)", (world,), (("shard", 0),), (("shard", 0),))
    if name == "S1":
        return Layout(f"w{world} Shard(1)", (world,), (("shard", 1),), (("shard", 0),))
    if name == "2D":
        return Layout("w4 (2,2) [Shard(0),Shard(1)]", (2, 2), (("shard", 0), ("shard", 1)),
                      (("shard", 0), ("shard", 0)))
    if name == "full":
        return Layout(f"w{world} full tensors", (), (), ())
    raise ValueError(f"unknown layout {name!r}")


def local_box(spec: Spec, lay: Layout, rank: int) -> Box:
    if not lay.mesh:
        return Box((0,) * len(spec.shape), spec.shape)
    coord, r = [], rank
    for n in reversed(lay.mesh):
        coord.append(r % n)
        r //= n
    return shard_box(spec.shape, lay.mesh, lay.placements(spec), tuple(reversed(coord)))


_MESHES: dict[tuple[int, ...], object] = {}


def _mesh(shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    from torch.distributed.device_mesh import init_device_mesh

    if shape not in _MESHES:
        names = ("a", "b", "c")[:len(shape)]
        _MESHES[shape] = init_device_mesh("cpu", shape, mesh_dim_names=names)
    return _MESHES[shape]


def wrap(spec: Spec, lay: Layout, local: torch.Tensor):  # type: ignore[no-untyped-def]
    """``local`` as the leaf a program would hold: a DTensor, or itself for "full"."""
    if not lay.mesh or len(spec.shape) == 0:
        return local
    from torch.distributed.tensor import DTensor, Replicate, Shard

    placements = [Shard(d) if k == "shard" else Replicate() for k, d in lay.placements(spec)]
    stride = tuple(math.prod(spec.shape[i + 1:]) for i in range(len(spec.shape)))
    return DTensor.from_local(local, _mesh(lay.mesh), placements, run_check=False,
                              shape=torch.Size(spec.shape), stride=stride)


def build(specs: list[Spec], lay: Layout, rank: int) -> dict[str, object]:
    """The state dict this rank saves: its shards of every tensor, owning their storage."""
    return {s.name: wrap(s, lay, expected(s, local_box(s, lay, rank))) for s in specs}


def targets(specs: list[Spec], lay: Layout, rank: int) -> dict[str, object]:
    """Zeroed load targets (allocated and touched, as a real model's parameters are)."""
    return {s.name: wrap(s, lay, torch.zeros(local_box(s, lay, rank).sizes, dtype=s.dtype))
            for s in specs}


def local_of(leaf: object) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return leaf._local_tensor if isinstance(leaf, DTensor) else leaf  # type: ignore[return-value]


def needed_bytes(specs: list[Spec], lay: Layout, rank: int) -> int:
    return sum(local_box(s, lay, rank).numel * s.nbytes // max(1, math.prod(s.shape))
               for s in specs)


def verify(specs: list[Spec], lay: Layout, rank: int, sd: dict[str, object]) -> list[str]:
    """Names of tensors whose loaded local values differ from the saved ones."""
    bad = []
    for s in specs:
        got = local_of(sd[s.name])
        want = expected(s, local_box(s, lay, rank))
        if got.dtype != want.dtype or not torch.equal(got, want):
            bad.append(s.name)
    return bad


def zero_(sd: dict[str, object]) -> None:
    """Reset load targets between repetitions so a load that skips data is caught."""
    for leaf in sd.values():
        local_of(leaf).zero_()
