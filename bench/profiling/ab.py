"""Before/after comparison of two reshard source trees, interleaved in one run.

    PYTHONPATH=$PWD/src:$PWD python -m bench.profiling.ab --a /tmp/base/src --b src \
        --rounds 3 -- --only tiny,w2 --reps 1 --size-gib 0.25

Runs ``python -m bench.run <args>`` alternately with PYTHONPATH pointing at source tree
A and B (A, B, A, B, ...), each run measuring reshard and DCP interleaved, and prints
the median reshard time per scenario for A and B, with DCP's median as the control.
Export a tree with e.g. ``git archive <commit> src | tar -x -C /tmp/base``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True, help="reshard source tree A (the folder holding reshard/)")
    p.add_argument("--b", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    a = p.parse_args()
    rest = [x for x in a.rest if x != "--"]
    here = os.getcwd()
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for label, src in (("A", a.a), ("B", a.b)):
                out = os.path.join(tmp, f"{label}{r}.json")
                env = dict(os.environ, PYTHONPATH=f"{os.path.abspath(src)}:{here}")
                subprocess.run([sys.executable, "-m", "bench.run", *rest, "--out-json", out],
                               env=env, check=True, stdout=subprocess.DEVNULL)
                with open(out) as f:
                    doc = json.load(f)
                for row in doc["table"]:
                    t = times.setdefault(row["scenario"], {"A": [], "B": [], "dcp": []})
                    t[label].append(row["reshard_s"])
                    t["dcp"].append(row["dcp_s"])
    print(f"| scenario | A median s | B median s | B speedup | DCP median s |\n|---|---|---|---|---|")
    for name, t in times.items():
        ma, mb, md = (statistics.median(t[k]) for k in ("A", "B", "dcp"))
        print(f"| {name} | {ma:.3f} | {mb:.3f} | {ma / mb:.2f}x | {md:.3f} |")


if __name__ == "__main__":
    main()
