"""Accuracy of the space-time studies, systems, fourth-order and user-module examples against
their exact or numerical reference solutions.

Trains each case once with its shipped config (as the user would run it) and records
the final test relative L2 error (against the exact solution for wave1d, acoustic1d, beam and
the helmholtz1d example, the Cole-Hopf quadrature for burgers, the finite-difference solution
for wave2d, a fine Runge-Kutta solution for lotka_volterra; systems also per field), the wall time of
training and the step rate.  Each run updates its row of the table in its section of
docs/benchmarks.md; rows of cases not run this time are kept.

    python scripts/references.py                       # all cases: about 2 hours on 2 CPU cores
    python scripts/references.py --cases wave2d_small  # one case
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

import fbpinn
from mdsection import replace_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Space-time problems, systems and fourth order against reference solutions"

# name, config, overrides, what the error is measured against, target
CASES = [
    ("burgers", "configs/burgers.toml", [], "Cole-Hopf quadrature", 5e-2),
    ("wave1d", "configs/wave1d.toml", [], "d'Alembert (exact)", 1e-2),
    ("wave1d, time-marching", "configs/wave1d.toml", ["schedule.kind=time_marching", "training.lbfgs_steps=0"], "d'Alembert (exact)", None),
    ("wave2d_small", "configs/wave2d_small.toml", [], "finite differences", 1e-2),
    ("acoustic1d (system: p, v)", "configs/acoustic1d.toml", [], "standing waves (exact)", 1e-2),
    ("lotka_volterra (system: prey, predator)", "configs/lotka_volterra.toml", [], "Runge-Kutta, 200 steps per test interval", 1e-2),
    ("beam (fourth order)", "configs/beam.toml", [], "vibration modes (exact)", 1e-2),
    ("helmholtz1d (problem.module)", "examples/helmholtz1d.toml", [], "exact", 1e-2),
]
HEADER = ["| study | config and overrides | error measured against | rel L2 | target | steps | training time | "
          "steps/s | date |", "|---|---|---|---|---|---|---|---|---|"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", help="subset of case names")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    rows = {}
    for name, path, overrides, versus, target in CASES:
        if args.cases and name not in args.cases:
            continue
        cfg = fbpinn.load_config(ROOT / path, overrides)
        run = fbpinn.train(cfg)
        err = run.history["rel_l2"][-1]
        fields = run.history.get("rel_l2_fields")
        per_field = "" if not fields else " (" + ", ".join(
            f"{f} {e:.2e}" for f, e in zip(run.problem.fields, fields[-1])) + ")"
        steps = cfg.training.steps
        setting = f"`{path}`" + "".join(f" `--set {o}`" for o in overrides)
        verdict = "-" if target is None else f"≤ {target:.0e} ({'met' if err <= target else 'missed'})"
        rows[name] = (f"| {name} | {setting} | {versus} | {err:.2e}{per_field} | {verdict} | {steps} | "
                      f"{run.wall_time / 60:.1f} min | {steps / run.wall_time:.1f} | {time.strftime('%Y-%m-%d')} |")
        print(rows[name], flush=True)
    rows = {**_existing_rows(out), **rows}  # read late: another run may have added its row meanwhile
    order = [c[0] for c in CASES]
    body = [
        "Command: `python scripts/references.py [--cases NAME ...]` (from the repository root); each row is one "
        "training run of the shipped config with its own thread and compile settings.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}.",
        "",
        *HEADER,
        *[rows[n] for n in order if n in rows],
        "",
        "Training time excludes computing the reference (cached after the first run) and writing the results.",
    ]
    replace_section(out, "Benchmarks", SECTION, body)
    print(f"wrote {out}")
    return 0


def _existing_rows(out: Path) -> dict:
    """Rows of this section's table already in the file, by study name."""
    if not out.is_file():
        return {}
    text = out.read_text()
    if f"## {SECTION}" not in text:
        return {}
    section = text.split(f"## {SECTION}", 1)[1].split("\n## ", 1)[0]
    names = {c[0] for c in CASES}
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells and cells[0] in names:
            rows[cells[0]] = line
    return rows


if __name__ == "__main__":
    sys.exit(main())
