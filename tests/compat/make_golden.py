"""Make the golden checkpoints under tests/compat/ (run once; the results are committed).

    PYTHONPATH=src:. python tests/compat/make_golden.py [--force]

Saves ``golden_state.saving_state`` from a 2-rank gloo world (DTensor shards, so entries have
several chunks in two data files) once per codec in ``GOLDENS``. Never regenerate a golden
that is already committed: old checkpoints must keep loading, which is what they test.
"""

from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _save(rank: int, world_size: int, path: str, codec: str | None) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    import reshard
    from tests.compat.golden_state import FRAME_RAW_NBYTES, GOLDEN_COLUMN_PARTS, saving_state
    from tests.helpers.column_checks import column_checksums_on_small_boxes

    os.environ["RESHARD_FRAME_RAW_NBYTES"] = str(FRAME_RAW_NBYTES)
    mesh = init_device_mesh("cpu", (world_size,))
    with column_checksums_on_small_boxes(GOLDEN_COLUMN_PARTS.get(os.path.basename(path))):
        reshard.save(saving_state(rank, world_size, mesh), path, codec=codec)


def main(argv: list[str]) -> int:
    from tests.compat.golden_state import GOLDENS
    from tests.helpers.world import run_world

    force = "--force" in argv
    for name, codec in GOLDENS.items():
        path = os.path.join(HERE, name)
        if os.path.exists(path):
            if not force:
                print(f"{path} exists; keeping it (committed goldens are never regenerated)")
                continue
            shutil.rmtree(path)
        run_world(_save, 2, path, codec, timeout_s=300)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
