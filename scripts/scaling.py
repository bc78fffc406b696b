"""Weak and strong scaling of MPI training on this machine, plus a communication model.

Measures, with one torch thread per rank:

* weak scaling: the work per rank fixed (``--per-rank`` subdomains and 100 grid points
  per subdomain of cos1d per rank; R ranks solve an R times larger decomposition);
* strong scaling: one fixed problem on 1 and 2 ranks;

reporting the median step time, the efficiency (weak: t1 / tR, strong: t1 / (R tR)) and
the bytes each rank sends per step (its part of the gradients of the subdomains it shares).  A
communication model then counts, from the same halo structure the trainer uses
(:class:`fbpinn.parallel.Partition`), the bytes per step per rank of 2-D and 3-D
decompositions with a fixed block of subdomains per rank, up to 1,024 ranks.  Results
and the command go to docs/scaling.md.

    python scripts/scaling.py                 # about 3 minutes on 2 CPU cores
    mpiexec -n 2 python scripts/scaling.py --worker 32 3200 --steps 200   # one measurement

Runs under ``mpiexec`` from the same environment (the mpich wheel's ``mpiexec``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = [16, 16]


def worker(subdomains: int, points: int, steps: int, grid=None, compiled: bool = False) -> None:
    """Time ``steps`` training steps of cos1d on this MPI job (``grid`` (nx, ny): of laplace 2-D with
    that subdomain grid, 8 x 8 points per subdomain, split in blocks; ``compiled``: with
    training.compile, whose compilation falls in the warm-up); rank 0 prints JSON."""
    import torch

    import fbpinn
    from fbpinn.parallel import Context
    from fbpinn.trainer import Trainer, configure_threads

    ctx = Context.from_environment()
    if grid:
        subdomains, points = grid[0] * grid[1], 64 * grid[0] * grid[1]
        cfg = fbpinn.load_config(data={
            "problem": {"name": "laplace2d_multiscale", "scales": 3, "output_scale": 0.75},
            "decomposition": {"subdomains": list(grid), "overlap": 1.9}, "network": {"hidden": [16]},
            "training": {"steps": steps, "points": [8 * grid[0], 8 * grid[1]], "threads": 1, "dtype": "float32",
                         "compile": compiled}})
    else:
        cfg = fbpinn.load_config(data={
            "problem": {"name": "cos1d", "output_scale": 1.0},
            "decomposition": {"subdomains": [subdomains], "overlap": 2.99},
            "network": {"hidden": HIDDEN},
            "training": {"steps": steps, "points": [points], "threads": 1, "dtype": "float32",
                         "compile": compiled}})
    configure_threads(1, ctx)
    trainer = Trainer(cfg, ctx)
    warm = 30
    for s in range(1, warm + 1):
        trainer.step(s)
    trainer.bytes_sent, trainer.comm_seconds = 0, 0.0
    blocks, block = 5, max(steps // 5, 1)
    times, each = [], []
    for b in range(blocks):
        ctx.barrier()
        t0 = time.perf_counter()
        for s in range(block):
            t1 = time.perf_counter()
            trainer.step(warm + b * block + s + 1, wait=False)  # as an ordinary step of a run
            each.append(time.perf_counter() - t1)
        trainer.finish_losses()
        ctx.barrier()
        times.append((time.perf_counter() - t0) / block)
    sent = ctx.gather(trainer.bytes_sent / (blocks * block))
    comm = ctx.gather(trainer.comm_seconds / sum(t * block for t in times))
    if ctx.rank == 0:
        print(json.dumps({"ranks": ctx.size, "subdomains": subdomains, "points": points, "compiled": compiled,
                          "step_ms": 1e3 * statistics.median(times), "typical_ms": 1e3 * statistics.median(each),
                          "bytes_per_step": max(sent),
                          "comm_share": max(comm),
                          "torch_threads": torch.get_num_threads()}))


def measure(ranks: int, subdomains: int, points: int, steps: int) -> dict:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", str(subdomains), str(points),
           "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def model_bytes(shape, ranks: int, overlap: float, params_per_subdomain: int, bytes_per_value: int = 4) -> dict:
    """Bytes per step per rank from the halo structure of a level split over ``ranks``: in an Adam step
    each rank sends its part of the gradient of every subdomain it shares to each rank that holds it."""
    from alphabeta import shared_subdomains

    part, shares = shared_subdomains(shape, ranks, overlap)
    per_rank = np.array([sum(s.values()) for s in shares], dtype=float) * params_per_subdomain * bytes_per_value
    halo_max = max(len(part.halo(r)) for r in range(ranks))
    return {"max": float(per_rank.max()), "mean": float(per_rank.mean()), "halo_max": int(halo_max)}


def params_per_subdomain(dim: int, hidden) -> int:
    sizes = [dim, *hidden, 1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, type=int, metavar=("SUBDOMAINS", "POINTS"), help="one measurement (under mpiexec)")
    p.add_argument("--grid", nargs=2, type=int, metavar=("NX", "NY"),
                   help="with --worker: laplace 2-D on this subdomain grid instead of cos1d (SUBDOMAINS and "
                        "POINTS are then ignored)")
    p.add_argument("--compiled", action="store_true", help="with --worker: training.compile = true")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--per-rank", type=int, nargs="+", default=[32, 128],
                   help="subdomains per rank in the weak-scaling runs (one study per value)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    p.add_argument("--out", default=str(ROOT / "docs" / "scaling.md"))
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.steps, args.grid, args.compiled)
        return 0

    from fbpinn.parallel import rank_grid

    command = "python scripts/scaling.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    k = args.per_rank[0]
    # (ranks, subdomains): weak 1 and 2 ranks per size, 2 ranks with twice the subdomains (bytes vs total
    # count), strong 1 and 2 ranks.  Rounds interleave the runs so that drifts of the machine hit all
    # alike; each figure is the median over the rounds.
    runs = [(1, k), (2, 2 * k), (2, 4 * k), (1, 2 * k)] + [(r, r * j) for j in args.per_rank[1:] for r in (1, 2)]
    rounds = [[measure(r, j, 100 * j, args.steps) for r, j in runs] for _ in range(args.rounds)]
    med = []
    for i in range(len(runs)):
        rows = [rnd[i] for rnd in rounds]
        row = dict(rows[0])
        row["step_ms"] = statistics.median(x["step_ms"] for x in rows)
        row["typical_ms"] = statistics.median(x["typical_ms"] for x in rows)
        row["all_ms"] = [round(x["step_ms"], 3) for x in rows]
        med.append(row)
        print(row, flush=True)
    weak, weak_big, strong = [med[0], med[1]], med[2], [med[3], med[1]]
    weak_sizes = [weak] + [med[4 + 2 * i:6 + 2 * i] for i in range(len(args.per_rank) - 1)]

    lines = ["# Scaling", "", f"Command: `{command}` (from the repository root).", "",
             "Machine: 2 CPU cores, one torch thread per rank, MPICH from the `mpich` wheel, float32, "
             f"cos1d with [1, {', '.join(map(str, HIDDEN))}, 1] subdomain networks, overlap 2.99, 100 grid points "
             "per subdomain. Step time: median of 5 blocks after 30 warm-up steps, ranks synchronised by a barrier "
             f"around each block; each figure is the median of {args.rounds} interleaved rounds (all rounds in brackets). "
             "Bytes: sent per step by the busiest rank (its part of the gradients of the subdomains it shares "
             "with its neighbours).",
             "", "## Weak scaling (work per rank fixed)", "",
             "| ranks | subdomains | points | ms/step | efficiency t1/tR | median single step (ms) | efficiency of median steps | communication share | bytes/step/rank |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pair in weak_sizes:
        for row in pair:
            lines.append(f"| {row['ranks']} | {row['subdomains']} | {row['points']} | {row['step_ms']:.3f} "
                         f"{row['all_ms']} | {pair[0]['step_ms'] / row['step_ms']:.2f} | {row['typical_ms']:.3f} | "
                         f"{pair[0]['typical_ms'] / row['typical_ms']:.2f} | "
                         f"{100 * row['comm_share']:.1f}% | {row['bytes_per_step']:.0f} |")
    lines += ["", f"Bytes per step per rank do not grow with the total subdomain count: 2 ranks with "
              f"{weak[1]['subdomains']} subdomains send {weak[1]['bytes_per_step']:.0f} B/step, 2 ranks with "
              f"{weak_big['subdomains']} subdomains send {weak_big['bytes_per_step']:.0f} B/step.", "",
              "## Strong scaling (fixed problem)", "",
              "| ranks | subdomains | points | ms/step | efficiency t1/(R tR) | communication share | bytes/step/rank |",
             "|---|---|---|---|---|---|---|"]
    for row in strong:
        eff = strong[0]["step_ms"] / (row["ranks"] * row["step_ms"])
        lines.append(f"| {row['ranks']} | {row['subdomains']} | {row['points']} | {row['step_ms']:.3f} {row['all_ms']} | "
                     f"{eff:.2f} | {100 * row['comm_share']:.1f}% | {row['bytes_per_step']:.0f} |")

    lines += ["", "Communication share: the part of the step the busiest rank spends in the halo exchange, the "
              "gradient return and the loss reduction, waiting for the other rank included.", "",
              "ms/step is the wall time of many steps divided by their number: what a run sees. The median "
              "single step leaves out the occasional slow step.", "",
              "## Communication model", "",
              "Bytes per step per rank counted from the halo structure (`fbpinn.parallel.Partition`, the same code "
              "the trainer uses) for a fixed block of subdomains per rank, float32 parameters, [d, 16, 16, 1] networks "
              "(the halo depth follows from the overlap: subdomains within one half-width of a block's cells).", "",
              "| decomposition | block per rank | overlap | ranks | subdomains | halo subdomains (max) | bytes/step/rank (max) | (mean) |",
              "|---|---|---|---|---|---|---|---|"]
    for dim, block, overlap in ((2, 4, 1.9), (2, 8, 2.99), (3, 4, 1.9)):
        pps = params_per_subdomain(dim, HIDDEN)
        for ranks in ([1, 4, 16, 64, 256, 1024] if dim == 2 else [1, 8, 64, 512, 1024]):
            dims = rank_grid([1 << 20] * dim, ranks)  # the trainer's own rank grid
            shape = [block * d for d in dims]
            m = model_bytes(shape, ranks, overlap, pps)
            lines.append(f"| {dim}-D | {block}^{dim} | {overlap} | {ranks} | {math.prod(shape)} | {m['halo_max']} | "
                         f"{m['max']:.0f} | {m['mean']:.0f} |")
    lines += ["", "Once every rank has neighbours on all sides the bytes per rank stop growing: they depend on the "
              "block size, the overlap and the network size, not on the number of ranks or subdomains. At 1 GB/s "
              "of network bandwidth the largest figure above is well under a millisecond per step.", ""]
    out = Path(args.out)
    # Sections this script does not write (the alpha-beta prediction of scripts/alphabeta.py, the
    # hand-written "## Notes") survive a re-run, in their order.
    own = {line for line in lines if line.startswith("## ")}
    kept = ""
    if out.is_file():
        for section in ("\n" + out.read_text()).split("\n## ")[1:]:
            if "## " + section.splitlines()[0].strip() not in own:
                kept += "\n## " + section.rstrip("\n") + "\n"
    out.write_text("\n".join(lines) + kept)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
