"""Time the training step of a config: the median of blocks of steps after a warm-up, from its first
step or from ``--start`` (time-marching: from the slab that holds it), with the overrides given.

    python scripts/steptime.py configs/wave2d_small.toml --threads 2 --set problem.absorbing_order=2
    python scripts/steptime.py configs/wave2d_small.toml --start 14001     # the third slab

Prints one line per config: ms per step (median and the blocks), the model passes per step and the
(point, subdomain) pairs.  With ``training.compile = true`` the warm-up includes the compilation.
Run it on a quiet machine: the blocks' spread shows how noisy it was.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch

import fbpinn
from fbpinn.config import ConfigError
from fbpinn.trainer import Trainer


def time_steps(trainer, warmup: int, blocks: int, block: int, start: int = 1) -> list:
    """Milliseconds per step of ``blocks`` blocks of ``block`` steps each, after ``warmup`` steps, the
    first of them step ``start``."""
    for step in range(start, start + warmup):
        trainer.step(step)
    times = []
    for b in range(blocks):
        t0 = time.perf_counter()
        for s in range(block):
            trainer.step(start + warmup + b * block + s, wait=False)  # as an ordinary step of a run
        times.append((time.perf_counter() - t0) / block * 1e3)
    return times


def measure(cfg, warmup: int, blocks: int, block: int, start: int = 1) -> dict:
    trainer = Trainer(cfg)
    times = time_steps(trainer, warmup, blocks, block, start)
    return {"ms": statistics.median(times), "blocks": times, "passes": len(trainer.passes),
            "pairs": trainer.pairs()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--start", type=int, default=1, help="the first step (default 1)")
    args = p.parse_args(argv)
    for key in ("threads", "warmup", "blocks", "block", "start"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = fbpinn.load_config(args.config, args.set + [f"training.threads={args.threads}"])
    except (ConfigError, OSError) as e:
        print(f"steptime: {e}", file=sys.stderr)
        return 2
    last = args.start - 1 + args.warmup + args.blocks * args.block
    if last > cfg.training.steps:
        print(f"steptime: steps {args.start} to {last} go past training.steps = {cfg.training.steps}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    r = measure(cfg, args.warmup, args.blocks, args.block, args.start)
    where = f" from step {args.start}" if args.start > 1 else ""
    print(f"{args.config} {' '.join(args.set)}{where}: {r['ms']:.1f} ms/step (blocks "
          f"{', '.join(f'{t:.1f}' for t in r['blocks'])}), {r['passes']} pass(es), {r['pairs']:,} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
