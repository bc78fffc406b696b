"""Step time and GPU memory of the shipped configs on one CUDA GPU.

For each study: the median time of one training step (loss, backward, Adam) in float32,
eager and with ``training.compile``, the (point, subdomain) pairs evaluated per step and
the peak GPU memory of a step.  One case is one rank's share of configs/wave2d_large.toml
(6 x 6 x 12 of its 24 x 24 x 12 subdomains over the same points per subdomain: the
per-GPU size of the 16-rank run), which checks the memory the config file promises.

It writes its section of docs/benchmarks.md (``--out``), keeping the others; run it on
the machine with the GPU, from the repository root:

    python scripts/gpu.py                       # a few minutes
    python scripts/gpu.py --cases cos1d --compiled --out /tmp/gpu.md   # eager only
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import fbpinn
from fbpinn.trainer import Trainer, configure_threads
from mdsection import replace_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "GPU step time and memory"

# name, config, overrides
CASES = [
    ("harmonic_oscillator", "configs/harmonic_oscillator.toml", []),
    ("cos1d", "configs/cos1d.toml", []),
    ("laplace2d_multiscale", "configs/laplace2d_multiscale.toml", []),
    ("laplace2d_multilevel", "configs/laplace2d_multilevel.toml", []),
    ("burgers", "configs/burgers.toml", []),
    ("wave2d_small", "configs/wave2d_small.toml", []),
    ("wave2d_large_share", "configs/wave2d_large.toml",
     ["decomposition.subdomains=[6, 6, 12]", "training.points=[64, 64, 128]", "schedule.kind=all_active",
      "test.points=[21, 21, 6]", "problem.reference_h=0.02"]),
]


def measure(path: str, overrides: list, compile_: bool, warmup: int, blocks: int, block: int) -> dict:
    """Median ms/step over ``blocks`` blocks of ``block`` steps, pairs per step, peak memory."""
    cfg = fbpinn.load_config(ROOT / path, overrides=[*overrides, "training.device=cuda", "training.dtype=float32",
                                                      f"training.compile={'true' if compile_ else 'false'}"])
    cfg.training.resample_every = 0  # time the step alone: resampling prepares points on the CPU
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    for s in range(1, warmup + 1):
        trainer.step(s)
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    times = []
    for b in range(blocks):
        t0 = time.perf_counter()
        for s in range(block):
            trainer.step(warmup + b * block + s + 1, wait=False)  # as an ordinary step of a run
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / block * 1e3)
    return {"ms": statistics.median(times), "pairs": trainer.pairs(), "points": trainer.n_points(),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "warm_s": warm_s, "steps": cfg.training.steps}


def table(rows: list, command: str) -> str:
    name = torch.cuda.get_device_name(0)
    lines = [
        f"Command: `{command}` (from the repository root, on the GPU machine).",
        f"Machine: {name}, {platform.machine()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "float32, one process; median over blocks of steps after warm-up; one step is loss, backward and Adam "
        "without evaluation or resampling. Peak memory: torch's largest allocation during the timed steps. "
        "'full run' is the config's steps at the best of the two step times.",
        "",
        "| study | points | pairs | ms/step (eager) | ms/step (compiled) | peak GPU memory | full run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = min(v for v in (r.get("eager"), r.get("compiled")) if v is not None)
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['points']:,} | {r['pairs']:,} | {fmt(r.get('eager'))} | "
                     f"{fmt(r.get('compiled'))} | {r['peak_gb']:.2f} GB | {best * r['steps'] / 60e3:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", help="subset of case names")
    p.add_argument("--compiled", nargs="*", metavar="NAME",
                   help="cases also timed with training.compile (default: all; none with an empty list)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu.py: torch sees no CUDA device", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    configure_threads(0)
    command = "python scripts/gpu.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    rows = []
    for name, path, overrides in CASES:
        if args.cases and name not in args.cases:
            continue
        row = {"name": f"{name} (`{path}`)"}
        compiled = args.compiled is None or name in args.compiled
        for mode in ("eager", "compiled") if compiled else ("eager",):
            try:
                m = measure(path, overrides, mode == "compiled", args.warmup, args.blocks, args.block)
            except Exception as exc:  # one failing case must not lose the others' numbers
                print(f"{name} ({mode}): {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
            row[mode] = m["ms"]
            row.update({k: m[k] for k in ("pairs", "points", "steps")})
            row["peak_gb"] = max(row.get("peak_gb", 0.0), m["peak_gb"])
            print(f"{name:32s} {mode:8s} {m['ms']:9.3f} ms/step  {m['pairs']:>10,} pairs  "
                  f"{m['peak_gb']:6.2f} GB  warm-up {m['warm_s']:.1f} s", flush=True)
            torch.cuda.empty_cache()
        if "pairs" in row:
            rows.append(row)
            replace_section(Path(args.out), "Benchmarks", SECTION, table(rows, command).splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
