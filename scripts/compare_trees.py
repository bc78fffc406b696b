"""Step time of the shipped studies in two source trees, measured alternately on this machine.

Each round runs every tree once, in its own process, one after the other, and each process
times the studies with that tree's own ``scripts/bench.py`` ``step_time`` (one thread; eager or
compiled): so a change is measured against the code before it under the same load.  The medians
over rounds and their ratios go to the section "Step time across a change" of docs/benchmarks.md.

    git worktree add /tmp/before <commit>
    python scripts/compare_trees.py /tmp/before . --rounds 2           # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mdsection import replace_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Step time across a change"
STUDIES = [("harmonic_oscillator", False), ("cos1d", False), ("laplace2d_multiscale", False), ("wave1d", False),
           ("harmonic_oscillator", True), ("cos1d", True)]

# Run inside each tree: its own fbpinn and its own bench.step_time.
WORKER = """
import json, logging, sys
tree = sys.argv[1]
sys.path[:0] = [tree, tree + "/scripts"]
logging.disable(logging.WARNING)
import fbpinn
assert fbpinn.__file__.startswith(tree), fbpinn.__file__
from bench import step_time
out = {}
for name, compiled in json.loads(sys.argv[2]):
    cfg = fbpinn.load_config(f"{tree}/configs/{name}.toml")
    out[f"{name}, {'compiled' if compiled else 'eager'}"] = step_time(cfg, 1, compiled, 30, 5, 5 if name == "wave1d" else 40)
print(json.dumps(out))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", help="source tree of the code before the change (a git worktree)")
    p.add_argument("after", help="source tree of the code after it")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--label", default="", help="what the change is, for the table's heading")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args(argv)
    trees = [str(Path(t).resolve()) for t in (args.before, args.after)]
    times = {t: {} for t in trees}
    for r in range(args.rounds):
        for t in trees:
            proc = subprocess.run([sys.executable, "-c", WORKER, t, json.dumps(STUDIES)], capture_output=True,
                                  text=True, check=True)
            for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                times[t].setdefault(k, []).append(v)
            print(f"round {r + 1}, {t}: done", flush=True)
    rows = []
    for k in times[trees[0]]:
        a, b = (statistics.median(times[t][k]) for t in trees)
        shown = lambda t: ", ".join(f"{v:.3f}" for v in times[t][k])  # noqa: E731
        rows.append(f"| {k} | {shown(trees[0])} | {shown(trees[1])} | {b / a:.3f} |")
    body = [
        f"Command: `python scripts/compare_trees.py BEFORE AFTER --rounds {args.rounds}` (from the repository root; "
        "BEFORE and AFTER are source trees, e.g. git worktrees). Each round times both trees one after the other; "
        "ms per step, one thread, medians of 5 blocks after warm-up.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}. {args.label}",
        "",
        "| study, mode | before (ms, each round) | after (ms, each round) | after / before (medians) |",
        "|---|---|---|---|",
        *rows,
    ]
    replace_section(Path(args.out), "Benchmarks", SECTION, body)
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
