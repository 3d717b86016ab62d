"""The scenario table of SCENARIOS.md groups A-F: (name, shape, save layout, load layout).

Each row is saved by ``save.world`` ranks and loaded by ``load.world`` ranks (1 = the
pytest process, plain tensors, no torch.distributed). Every row runs once per codec
in CODECS (group F). Names start with their group letter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layouts import Full, Layout, Mesh, chunk_rows, rows


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: tuple[int, ...]
    save: Layout
    load: Layout
    dtype: torch.dtype = torch.float32

    @property
    def same_mesh(self) -> bool:
        """Saved and loaded on the same mesh shape: redistribute back must restore the save."""
        return (isinstance(self.save, Mesh) and isinstance(self.load, Mesh)
                and self.save.mesh == self.load.mesh)


def m(mesh: str, placements: str) -> Mesh:
    return Mesh(mesh, placements)


FULL1, FULL2, FULL3, FULL4 = Full(1), Full(2), Full(3), Full(4)

# 2-D placements of a (2, 2) mesh.
P2_S0 = ["R,R", "R,S0", "S0,R", "S0,S0"]
P2_S1 = ["R,R", "R,S1", "S1,R", "S1,S1"]
P2_MIXED = ["S0,S1", "S1,S0"]
P2_ALL = sorted(set(P2_S0 + P2_S1 + P2_MIXED))


def _pairs(group: str, shape: tuple[int, ...], mesh: str, placements: list[str],
           tag: str) -> list[Scenario]:
    return [Scenario(f"{group}_{tag}_{a}_to_{b}".replace(",", ""), shape, m(mesh, a), m(mesh, b))
            for a in placements for b in placements if a != b]


def _group_a() -> list[Scenario]:
    out = [
        Scenario("a_1d_s0_to_r", (7, 5), m("4", "S0"), m("4", "R")),
        Scenario("a_1d_r_to_s0", (7, 5), m("4", "R"), m("4", "S0")),
        Scenario("a_1d_s0_to_r_14", (14,), m("4", "S0"), m("4", "R"), torch.int64),
        Scenario("a_1d_r_to_s0_14", (14,), m("4", "R"), m("4", "S0"), torch.int64),
        Scenario("a_1d_s1_to_s0", (7, 5), m("4", "S1"), m("4", "S0")),
    ]
    out += _pairs("a", (7, 5), "2x2", P2_S0, "s0set")  # 12 ordered pairs
    out += _pairs("a", (13, 6), "2x2", P2_S1, "s1set")  # 12 ordered pairs
    # [S0,S1] and [S1,S0] to and from every other 2-D placement.
    for mixed in P2_MIXED:
        for other in P2_ALL:
            if other != mixed:
                out.append(Scenario(f"a_mixed_{mixed}_to_{other}".replace(",", ""), (7, 5),
                                    m("2x2", mixed), m("2x2", other)))
                if other not in P2_MIXED:
                    out.append(Scenario(f"a_mixed_{other}_to_{mixed}".replace(",", ""), (7, 5),
                                        m("2x2", other), m("2x2", mixed)))
    return out


def _group_b() -> list[Scenario]:
    out = []
    for p1 in ["S0", "S1", "R"]:
        for p2 in P2_ALL:
            tag = p2.replace(",", "")
            out.append(Scenario(f"b_1d{p1}_to_2d{tag}", (7, 5), m("4", p1), m("2x2", p2)))
            out.append(Scenario(f"b_2d{tag}_to_1d{p1}", (7, 5), m("2x2", p2), m("4", p1)))
    shape3 = (5, 3, 7)
    p3 = ["S0,R,S2", "S2,S1,S0", "R,R,S1", "S1,S0,R", "S2,R,S2", "R,S0,R", "S0,S0,S0"]
    for i, p in enumerate(p3):
        q = p3[(i + 3) % len(p3)]
        out.append(Scenario(f"b_3d{i}_to_3d", shape3, m("2x1x2", p), m("2x1x2", q)))
        out.append(Scenario(f"b_3d{i}_to_1dS2", shape3, m("2x1x2", p), m("4", "S2")))
        out.append(Scenario(f"b_1dS1_to_3d{i}", shape3, m("4", "S1"), m("2x1x2", p)))
        out.append(Scenario(f"b_3d{i}_to_2dS2S0", shape3, m("2x1x2", p), m("2x2", "S2,S0")))
    return out


# World-size change: sources on 4 ranks and targets on 3, 2 and 1, and back.
C_SHAPES = {"13x7": (13, 7), "7x5": (7, 5), "1": (1,), "5x7x11": (5, 7, 11)}
C_SOURCES_4 = [m("4", "S0"), m("4", "S1"), m("4", "R"), m("2x2", "S0,S1"), m("2x2", "S1,S0"),
               m("2x2", "S0,S0"), FULL4, rows("proto", [(0, 5)], [(5, 1)], [], [(6, 7)]),
               rows("lsw", [(0, 2), (9, 2)], [(2, 3)], [(5, 4)], [(11, 2)])]
C_TARGETS = {
    3: [m("3", "S0"), m("3", "S1"), m("3", "R"), FULL3, rows("proto", [(0, 6)], [], [(6, 7)])],
    2: [m("2", "S0"), m("2", "S1"), m("2", "R"), m("2x1", "S1,S0"), FULL2],
    1: [FULL1],
}
C_SOURCES_SMALL = {
    3: [m("3", "S0"), m("3", "S1"), m("3", "R"), FULL3, rows("lsw", [(0, 4)], [(4, 9)], [])],
    2: [m("2", "S0"), m("2", "S1"), m("1x2", "R,S0"), FULL2],
}
C_TARGETS_4 = [m("4", "S0"), m("4", "S1"), m("2x2", "S0,S1"), m("2x2", "S1,S1"), m("2x2", "R,S0"),
               FULL4, rows("proto", [(0, 1)], [(1, 8)], [], [(9, 4)])]


def _fits(layout: Layout, shape: tuple[int, ...]) -> bool:
    if isinstance(layout, Mesh):
        return all(p == "R" or int(p.lstrip("S").split("/")[0]) < len(shape)
                   for p in layout.placements.split(","))
    if isinstance(layout, Full):
        return True
    return max((o + n for r in layout.rows for o, n in r), default=0) == shape[0]


def _group_c() -> list[Scenario]:
    out = []
    for src in C_SOURCES_4:
        for world, targets in C_TARGETS.items():
            for dst in targets:
                for tag, shape in C_SHAPES.items():
                    # All shapes for the 1-D sharded sources; the main shape otherwise.
                    if tag != "13x7" and not (isinstance(src, Mesh) and src.mesh == "4"
                                              and src.placements != "S1"):
                        continue
                    if _fits(src, shape) and _fits(dst, shape):
                        out.append(Scenario(f"c_4to{world}_{src}_to_{dst}_{tag}", shape, src, dst))
    for world, sources in C_SOURCES_SMALL.items():
        for src in sources:
            for dst in C_TARGETS_4:
                for tag, shape in C_SHAPES.items():
                    if tag in ("13x7", "5x7x11") and _fits(src, shape) and _fits(dst, shape):
                        out.append(Scenario(f"c_{world}to4_{src}_to_{dst}_{tag}", shape, src, dst))
    return out


def _group_d() -> list[Scenario]:
    fl = chunk_rows("from_local", (4, 4, 4, 2))
    return [
        Scenario("d_one_elem_s0_to_s0s0", (1,), m("4", "S0"), m("2x2", "S0,S0")),
        Scenario("d_one_elem_s0s0_to_s0", (1,), m("2x2", "S0,S0"), m("4", "S0")),
        Scenario("d_one_elem_2d_s0_to_s0s0", (1, 3), m("4", "S0"), m("2x2", "S0,S0")),
        Scenario("d_from_local_4442_to_full4", (14, 3), fl, FULL4),
        Scenario("d_from_local_4442_to_full1", (14, 3), fl, FULL1),
        Scenario("d_from_local_4442_1d_to_full1", (14,), fl, FULL1, torch.int64),
        Scenario("d_full4_to_from_local_4442", (14, 3), FULL4, fl),
        Scenario("d_s1_to_from_local_4442", (14, 3), m("2x2", "S1,R"), fl),
        Scenario("d_from_local_4442_to_s0s0", (14,), fl, m("2x2", "S0,S0"), torch.int64),
        Scenario("d_from_local_4441_to_s0", (13, 2), chunk_rows("from_local", (4, 4, 4, 1)),
                 m("2x2", "S0,R")),
    ]


def _group_e() -> list[Scenario]:
    save_p = rows("proto", [(0, 5)], [(5, 2)], [], [(7, 6)])
    # Rank 1 holds an EMPTY shard at row 5, where rank 2's shard also starts.
    save_empty = rows("proto", [(0, 5)], [(5, 0)], [(5, 8)], [])
    save_multi = rows("proto", [(0, 2), (9, 4)], [(2, 1)], [(3, 6)], [])
    load_p = rows("proto", [(0, 1)], [(1, 9)], [(10, 3)], [])
    load_p2 = rows("proto", [], [(0, 13)], [(13, 0)], [])
    lsw_save = rows("lsw", [(0, 3), (7, 2)], [(3, 4)], [(9, 4)], [])
    lsw_load = rows("lsw", [(10, 3)], [], [(0, 1), (1, 2), (3, 1)], [(4, 6)])
    lsw_one = rows("lsw", [(0, 4)], [(4, 4)], [(8, 1)], [(9, 4)])
    lsw_empty = rows("lsw", [(0, 0), (0, 5)], [(5, 0)], [(5, 8)], [])
    obj_save = rows("object", [(0, 6)], [(6, 0)], [(6, 7)], [(13, 0)])
    st_save = rows("sharded", [(0, 3), (7, 2)], [(3, 4)], [(9, 4)], [])
    st_load = rows("sharded", [(10, 3)], [], [(0, 1), (1, 2), (3, 1)], [(4, 6)])
    obj_load = rows("object", [(0, 2), (11, 2)], [(2, 9)], [(0, 0)], [(11, 0)])
    return [
        Scenario("e_proto_to_proto", (13, 6), save_p, load_p),
        Scenario("e_proto_to_proto_1d", (13,), save_p, load_p2, torch.int64),
        Scenario("e_proto_empty_same_offset", (13, 6), save_empty, load_p),
        Scenario("e_proto_multi_to_proto", (13, 6), save_multi, load_p2),
        Scenario("e_proto_to_s0s1", (13, 6), save_p, m("2x2", "S0,S1")),
        Scenario("e_s1_to_proto_empty", (13, 6), m("4", "S1"), save_empty),
        Scenario("e_proto_to_full1", (13, 6), save_empty, FULL1),
        Scenario("e_proto_3d", (13, 2, 3), save_multi, load_p),
        Scenario("e_lsw_to_lsw", (13, 6), lsw_save, lsw_load),
        Scenario("e_lsw_one_to_lsw_multi", (13, 6), lsw_one, lsw_load),
        Scenario("e_lsw_multi_to_lsw_one", (13,), lsw_load, lsw_one, torch.int64),
        Scenario("e_lsw_to_proto", (13, 6), lsw_save, save_empty),
        Scenario("e_proto_to_lsw", (13, 6), save_multi, lsw_save),
        Scenario("e_lsw_to_r", (13, 6), lsw_save, m("4", "R")),
        Scenario("e_s0s0_to_lsw", (13, 6), m("2x2", "S0,S0"), lsw_load),
        Scenario("e_lsw_to_full1", (13, 6), lsw_load, FULL1),
        Scenario("e_lsw_empty_same_offset_to_lsw", (13, 6), lsw_empty, lsw_load),
        Scenario("e_proto_to_lsw_empty_same_offset", (13, 6), save_multi, lsw_empty),
        Scenario("e_object_to_object", (13, 6), obj_save, obj_load),
        Scenario("e_object_to_proto", (13, 2, 2), obj_save, save_empty, torch.int64),
        Scenario("e_proto_to_object", (13, 6), save_p, obj_load),
        Scenario("e_object_to_s1", (13, 6), obj_load, m("2x2", "S1,R")),
        Scenario("e_sharded_to_sharded", (13, 6), st_save, st_load),
        Scenario("e_sharded_to_s1", (13, 2, 3), st_save, m("2x2", "R,S2"), torch.bfloat16),
        Scenario("e_s0s1_to_sharded", (13, 6), m("2x2", "S0,S1"), st_save, torch.int64),
        Scenario("e_sharded_to_full1", (13,), st_load, FULL1),
        Scenario("e_lsw_to_sharded", (13, 6), lsw_save, st_load),
    ]


def _misc_dtypes() -> list[Scenario]:
    strided = [Mesh("2x2", "S0,S1", strided=True), Mesh("4", "S1", strided=True)]
    return [
        Scenario("a_strided_s0s1_to_s1s0", (7, 5), strided[0], m("2x2", "S1,S0")),
        Scenario("a_s1s0_to_strided_s0s1", (7, 5), m("2x2", "S1,S0"), strided[0]),
        Scenario("b_strided_s0s1_to_strided_1d", (7, 5), strided[0], strided[1], torch.int64),
        Scenario("b_strided_3d", (5, 3, 7), Mesh("2x1x2", "S2,R,S0", strided=True), strided[1]),
        Scenario("a_f16_s0s0_to_s1", (7, 5), m("2x2", "S0,S0"), m("4", "S1"), torch.float16),
        Scenario("a_u8_r_s1_to_s0r", (7, 5), m("2x2", "R,S1"), m("2x2", "S0,R"), torch.uint8),
        Scenario("a_bf16_s0s1_to_r", (7, 5), m("2x2", "S0,S1"), m("4", "R"), torch.bfloat16),
        Scenario("a_i8_s1_to_s0", (7, 5), m("4", "S1"), m("4", "S0"), torch.int8),
        Scenario("a_bool_s0_to_s1s0", (7, 5), m("4", "S0"), m("2x2", "S1,S0"), torch.bool),
    ]


def _strided_shards() -> list[Scenario]:
    """``_StridedShard`` (``SSd/f``): FSDP2 over tensor parallelism gives "SS0/2,S0"; the
    others hold indices that are not consecutive, so a rank saves and loads several boxes."""
    fsdp_tp = m("2x2", "SS0/2,S0")
    return [
        Scenario("a_ss_fsdp_tp_to_s0s1", (12, 4), fsdp_tp, m("2x2", "S0,S1")),
        Scenario("a_ss_s1r_to_fsdp_tp", (8, 6), m("2x2", "S1,R"), fsdp_tp, torch.bfloat16),
        # Not back onto its own mesh: torch 2.13 redistributes uneven strided shards wrongly.
        Scenario("d_ss_s0_ss0_to_ss1", (10, 6), m("2x2", "S0,SS0/3"), m("4", "SS1/2")),
        Scenario("d_ss_1d_to_full1", (11, 3), m("4", "SS0/3"), FULL1, torch.int64),
        Scenario("d_ss_3d_to_1d", (9, 4, 7), m("2x1x2", "SS2/2,R,S2"), m("4", "SS0/2")),
        Scenario("d_ss_empty_to_s0_ss0", (3, 5), m("4", "SS0/2"), m("2x2", "S0,SS0/2")),
        Scenario("d_ss_from_2_ranks", (13, 5), m("2", "S1"), m("2x2", "SS0/3,SS1/2")),
        Scenario("d_ss_to_3_ranks", (7, 9), m("2x2", "SS1/3,S1"), m("3", "SS0/2"), torch.bool),
        Scenario("e_ss_view_to_proto", (9, 4), Mesh("2x2", "SS0/2,S1", strided=True), chunk_rows(
            "proto", (2, 0, 4, 3))),
    ]


SCENARIOS: list[Scenario] = (
    _group_a() + _group_b() + _group_c() + _group_d() + _group_e() + _misc_dtypes()
    + _strided_shards()
)
CODECS = ("identity", "zstd", "test-rot")
# Small frames make every chunk span several frames (not a multiple of any itemsize),
# so partial-frame reads and per-frame decoding are exercised too.
FRAME_RAW_NBYTES = {"identity": "28", "zstd": "44", "test-rot": "20"}
# Small read pieces split reads of one chunk into several (checked with two codecs).
MAX_PIECE_NBYTES = {"identity": "40", "zstd": str(16 << 20), "test-rot": "24"}


def _check_table() -> None:
    names = [s.name for s in SCENARIOS]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate scenario names: {sorted(dup)}")
    for s in SCENARIOS:
        if not (_fits(s.save, s.shape) and _fits(s.load, s.shape)):
            raise ValueError(f"scenario {s.name}: a layout does not fit shape {s.shape}")


_check_table()
