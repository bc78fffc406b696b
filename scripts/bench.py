"""Accuracy and step time of the seed studies, against the reference JAX FBPINN figures.

What it measures, on this machine, for configs/harmonic_oscillator.toml,
configs/cos1d.toml, configs/cos1d_pinn.toml, configs/laplace2d_multiscale.toml and
configs/laplace2d_multilevel.toml:

1. the time of one training step (median of blocks of steps after warm-up) for
   every combination of torch CPU threads (1, 2) and ``training.compile`` (off, on);
2. the test relative L2 error after ``--steps`` steps with the fastest setting,
   for ``--seeds`` seeds (the median is what the table compares).

It writes the results, the machine and the command to their section of
docs/benchmarks.md (other sections are kept).

    python scripts/bench.py                  # about 40 minutes on 2 CPU cores
    python scripts/bench.py --seeds 1 --steps 2000 --out /tmp/bench.md   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import fbpinn
from fbpinn.trainer import Trainer, configure_threads
from mdsection import replace_section
from steptime import time_steps

ROOT = Path(__file__).resolve().parent.parent

# Reference JAX FBPINNs on this 2-core CPU, float32, 10,000 steps (see docs/benchmarks.md).
CASES = [
    ("harmonic_oscillator", "configs/harmonic_oscillator.toml", 8.7e-4, 0.19),
    ("cos1d", "configs/cos1d.toml", 4.4e-4, 4.1),
    ("cos1d plain PINN", "configs/cos1d_pinn.toml", 1.02, None),
    ("laplace2d_multiscale", "configs/laplace2d_multiscale.toml", 3.2e-3, 4.5),
    ("laplace2d_multilevel", "configs/laplace2d_multilevel.toml", 3.0e-3, 21.6),
]
# Each group of studies has its own section of docs/benchmarks.md; a run of some cases
# rewrites only the sections of those cases.
SECTIONS = {"Seed studies against the reference JAX FBPINNs": ("harmonic_oscillator", "cos1d", "cos1d plain PINN"),
            "Poisson studies against the reference JAX FBPINNs": ("laplace2d_multiscale", "laplace2d_multilevel")}


def step_time(cfg, threads: int, compile_: bool, warmup: int, blocks: int, block: int) -> float:
    """Median milliseconds per step over ``blocks`` blocks of ``block`` steps."""
    cfg.training.threads, cfg.training.compile = threads, compile_
    configure_threads(threads)
    return statistics.median(time_steps(Trainer(cfg), warmup, blocks, block))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--cases", nargs="*", help="subset of case names")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    command = "python scripts/bench.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))

    rows = []
    for name, path, ref_err, ref_ms in CASES:
        if args.cases and name not in args.cases:
            continue
        timings = {}
        for threads in (1, 2):
            for compile_ in (False, True):
                cfg = fbpinn.load_config(ROOT / path)
                timings[(threads, compile_)] = step_time(cfg, threads, compile_, warmup=60, blocks=7, block=60)
                print(f"{name}: threads={threads} compile={compile_}: {timings[(threads, compile_)]:.3f} ms/step",
                      flush=True)
        best = min(timings, key=timings.get)
        errors = []
        for seed in range(args.seeds):
            cfg = fbpinn.load_config(ROOT / path, [f"training.steps={args.steps}", f"training.seed={seed}",
                                                   f"training.threads={best[0]}",
                                                   f"training.compile={'true' if best[1] else 'false'}"])
            run = fbpinn.train(cfg)
            errors.append(run.history["rel_l2"][-1])
            print(f"{name}: seed {seed}: rel_l2 {errors[-1]:.3e}", flush=True)
        rows.append((name, path, ref_err, ref_ms, timings, best, errors))

    for section, names in SECTIONS.items():
        mine = [r for r in rows if r[0] in names]
        if mine:
            write_markdown(Path(args.out), section, mine, command, args)
    print(f"wrote {args.out}")
    return 0


def write_markdown(out: Path, section: str, rows, command: str, args) -> None:
    lines = [
        f"Command: `{command}` (from the repository root).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"fbpinn {fbpinn.__version__}, {time.strftime('%Y-%m-%d')}.",
        "",
        "Settings of the reference measurements: float32, grid points, Adam lr 1e-3, full batch, subdomain centres "
        "evenly spaced with both ends of the domain included, cosine windows; subdomain width 2.99x the centre "
        "spacing and output scale 1 for the 1-D studies, 1.9x and 0.75 for the laplace studies (networks [2, 16, 1], "
        "64 x 64 points, frequencies 2, 4 and 8; multilevel: 1, 2 x 2 and 4 x 4 subdomains).  The shipped configs "
        "are those settings.",
        "",
        f"Accuracy: test relative L2 error after {args.steps} steps, median (min-max) over {args.seeds} seed(s), run "
        "with the fastest thread/compile setting.  Step time: median over 7 blocks of 60 steps after 60 warm-up "
        "steps, one training step (loss, backward, Adam) without evaluation.",
        "",
        "| study | rel L2 (ours) | rel L2 (reference) | ms/step (ours, best) | best setting | ms/step (reference) | speed ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, path, ref_err, ref_ms, timings, best, errors in rows:
        med = statistics.median(errors)
        ours = timings[best]
        ratio = f"{ref_ms / ours:.2f}x" if ref_ms else "-"
        lines.append(f"| {name} (`{path}`) | {med:.2e} ({min(errors):.1e}-{max(errors):.1e}) | {ref_err:.2e} | "
                     f"{ours:.3f} | {best[0]} thread(s), compile {'on' if best[1] else 'off'} | "
                     f"{ref_ms if ref_ms else '-'} | {ratio} |")
    lines += ["", "Speed ratio: reference ms/step divided by ours (above 1: we are faster).", ""]
    for name, path, ref_err, ref_ms, timings, best, errors in rows:
        med = statistics.median(errors)
        if ref_err > 0.5:  # a study that is meant to fail: it should fail as the reference does
            verdict = "fails like" if med > 0.5 else "unexpectedly beats"
        else:
            verdict = "reaches" if med <= ref_err else f"does not reach ({med / ref_err:.1f}x the reference's error)"
        if ref_ms:
            speed = (f"{ref_ms / timings[best]:.2f}x the reference's speed" if timings[best] < ref_ms
                     else f"{timings[best] / ref_ms:.2f}x slower than the reference")
        else:
            speed = "no reference time"
        lines.append(f"- {name}: median error {verdict} the reference's {ref_err:.2e}; {speed}.")
    lines += ["",
              "Step time for every setting (ms/step):", "",
              "| study | 1 thread | 1 thread, compiled | 2 threads | 2 threads, compiled |", "|---|---|---|---|---|"]
    for name, path, ref_err, ref_ms, timings, best, errors in rows:
        lines.append(f"| {name} | " + " | ".join(f"{timings[k]:.3f}" for k in
                                                 [(1, False), (1, True), (2, False), (2, True)]) + " |")
    replace_section(out, "Benchmarks", section, lines)


if __name__ == "__main__":
    sys.exit(main())
