"""Latency and bandwidth of MPI messages (the alpha-beta model), fitted to exchanges measured on
this machine, and the weak-scaling efficiency they predict for the training step at 1 to 1,024
ranks.  Writes the section "Predicted weak scaling (alpha-beta model)" of docs/scaling.md.

    python scripts/alphabeta.py                      # measure on 2 ranks here, fit, predict (about 20 s)
    mpiexec -n 2 python scripts/alphabeta.py --measure          # the measurement alone (JSON)
    python scripts/alphabeta.py --fit measured.json  # predict from a measurement made elsewhere

The model of one ordinary step of the slowest rank on R ranks is

    T(R) = T_compute + (m alpha + b beta) [+ 2 c (copy latency) + 2 b / PCIe bandwidth on GPUs]

with m the neighbour ranks it exchanges with and b the bytes it sends: after the backward pass
each rank sends its part of the gradient of every subdomain it shares to the ranks that hold it,
one round of messages to all of them at once, and no parameters move (docs/parallel.md; until
2026-12-02 a step had two rounds, the halo parameters out and the halo gradients back).  A multilevel decomposition adds one
Allreduce of the replicated levels' gradients: 2 log2(R) alpha + 2 n beta for n bytes.  The
loss is summed without waiting on ordinary steps (docs/parallel.md), so it adds nothing there.
Efficiency is T_compute / T(R).  The model leaves out what it cannot know: ranks slowing each
other through shared memory bandwidth, and one slow rank holding up its neighbours (jitter),
which docs/scaling.md measures separately.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
SIZES = [8, 64, 512, 4096, 32768, 262144, 1048576]  # bytes per message

# A cluster interconnect of today, for the prediction: one-way MPI latency and bandwidth between
# nodes of InfiniBand HDR (200 Gb/s) or HPE Slingshot-11 systems, as their vendors and the OSU
# micro-benchmarks report them (about 1 to 2 microseconds, 20 to 25 GB/s); taken at the slow end.
CLUSTER = {"alpha_us": 2.0, "bandwidth_gbs": 20.0}
# GPU ranks stage the halo through host memory: a device-to-host and a host-to-device copy per
# round (about 10 microseconds each for small buffers, 25 GB/s over PCIe 5 / the H200's host link).
GPU_STAGING = {"copy_us": 10.0, "bandwidth_gbs": 25.0}


def measure(repeats: int = 200) -> dict | None:
    """Ping-pong between ranks 0 and 1 for each of SIZES (one-way time: half the median round
    trip) and the time of an 8-byte Allreduce over all ranks; rank 0 returns the figures."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() < 2:
        raise SystemExit("alphabeta: --measure needs at least 2 ranks (mpiexec -n 2 ...)")
    out = {"ranks": comm.Get_size(), "pingpong": {}, "allreduce_us": None}

    def round_trip(buf):
        if rank == 0:
            comm.Send(buf, dest=1)
            comm.Recv(buf, source=1)
        elif rank == 1:
            comm.Recv(buf, source=0)
            comm.Send(buf, dest=0)

    def median_us(operation, *args) -> float:
        """Median time of ``operation(*args)`` after 10 untimed ones, every rank starting together."""
        times = []
        for i in range(repeats + 10):
            comm.Barrier()
            t0 = time.perf_counter()
            operation(*args)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6

    warm = np.zeros(8, dtype=np.uint8)
    for _ in range(100):  # the first messages set up the connection: leave them out
        round_trip(warm)
    for size in SIZES:
        out["pingpong"][size] = median_us(round_trip, np.zeros(size, dtype=np.uint8)) / 2  # one way
    out["allreduce_us"] = median_us(lambda a: comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM), np.zeros(1))
    return out if rank == 0 else None


def fit(pingpong: dict) -> tuple[float, float]:
    """Alpha (microseconds) and bandwidth (GB/s) of t(n) = alpha + n / bandwidth, by least squares
    in relative error (so that the small messages, whose time is the latency, count as much as the
    large ones)."""
    n = np.array([float(k) for k in pingpong])
    t = np.array([float(v) for v in pingpong.values()])
    A = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)  # beta: microseconds per byte
    return float(alpha), float(1e-3 / beta) if beta > 0 else math.inf


def shared_subdomains(shape, ranks: int, overlap: float):
    """A level of ``shape`` subdomains split over ``ranks`` as the trainer splits it: its
    :class:`fbpinn.parallel.Partition`, and per rank the number of subdomains it holds (owns or keeps
    a halo copy of) together with each other rank that holds any of the same, {rank: count}."""
    from fbpinn.decomposition import Level
    from fbpinn.domains import Box
    from fbpinn.parallel import Partition

    level = Level(Box([0.0] * len(shape), [1.0] * len(shape)), shape, overlap)
    part = Partition(level, ranks)
    held = [part.held(r) for r in range(ranks)]
    holders = {}
    for r, mine in enumerate(held):
        for j in mine:
            holders.setdefault(j, set()).add(r)
    shares = [{q: len(held[r] & held[q]) for q in set().union(*(holders[j] for j in held[r])) - {r}}
              for r in range(ranks)]
    return part, shares


def exchanges(shape, ranks: int, overlap: float, params: int, bytes_per_value: int = 4) -> dict:
    """Per rank of a level of ``shape`` subdomains split over ``ranks``, in an Adam step: the ranks it
    exchanges gradients with (those holding a subdomain it holds) and the bytes of its round (its
    part of every shared subdomain's gradient; it receives as much), the largest over the ranks,
    and the rounds per step (one: see docs/parallel.md)."""
    _, shares = shared_subdomains(shape, ranks, overlap)
    sent = [sum(s.values()) * params * bytes_per_value for s in shares]
    return {"neighbours": max(len(s) for s in shares), "bytes": float(max(sent)), "rounds": 1}


def predict(compute_ms: float, ex: dict, alpha_us: float, bandwidth_gbs: float, gpu: bool = False) -> float:
    """Efficiency of one ordinary step (see the module's docstring)."""
    round_us = ex["neighbours"] * alpha_us + ex["bytes"] / (bandwidth_gbs * 1e3) if ex["neighbours"] else 0.0
    if gpu and ex["neighbours"]:
        round_us += 2 * GPU_STAGING["copy_us"] + 2 * ex["bytes"] / (GPU_STAGING["bandwidth_gbs"] * 1e3)
    return compute_ms / (compute_ms + ex.get("rounds", 1) * round_us * 1e-3)


# Cases: (name, subdomain block per rank, overlap, network, compute ms per step of one rank, device,
# where that step time comes from).
CASES = [
    ("cos1d, 128 subdomains per rank", (128,), 2.99, [16, 16], 30.5, False,
     "1 CPU core, 12,800 points (measured on the 16-core machine, 2026-11-30)"),
    ("cos1d, 32 subdomains per rank", (32,), 2.99, [16, 16], 7.0, False,
     "1 CPU core, 3,200 points (same)"),
    ("laplace 2-D, 8 x 8 per rank", (8, 8), 1.9, [16], 5.5, False,
     "2 CPU cores, 4,096 points (laplace 8 x 8, docs/benchmarks.md)"),
    ("laplace 2-D, 32 x 32 per GPU", (32, 32), 1.9, [32, 32], 6.57, True,
     "one H200, 512^2 points (2026-11-30)"),
    ("harmonic-oscillator-sized 1-D, 20 per GPU", (20,), 2.99, [32], 1.49, True,
     "one H200, 200 points (2026-11-30): the worst case, a step of fixed costs"),
]
RANKS = [1, 2, 8, 64, 256, 1024]


def grid_for(block, ranks: int) -> tuple:
    """The subdomain grid of ``ranks`` blocks of ``block`` (ranks as square/cubic as they factor)."""
    from fbpinn.parallel import rank_grid

    dims = rank_grid(tuple(b * ranks for b in block), ranks)  # the split the trainer would choose
    return tuple(b * d for b, d in zip(block, dims))


def report(measured: dict, command: str) -> list[str]:
    from scaling import params_per_subdomain

    alpha, bandwidth = fit(measured["pingpong"])
    lines = [f"Command: `{command}`", "",
             f"Measured on this machine ({measured.get('machine', '2 CPU cores, MPICH from the mpich wheel')}, "
             f"{measured.get('date', '')}): one-way times of a ping-pong between 2 ranks, median of 200 round trips "
             "per size, and an 8-byte Allreduce.", "",
             "| bytes | one-way (µs) | fit alpha + n beta (µs) |", "|---|---|---|"]
    for size, t in measured["pingpong"].items():
        lines.append(f"| {int(size):,} | {t:.2f} | {alpha + int(size) / (bandwidth * 1e3):.2f} |")
    lines += ["", f"Fit: alpha = {alpha:.2f} µs, bandwidth = {bandwidth:.1f} GB/s (shared memory); 8-byte Allreduce "
              f"on {measured['ranks']} ranks: {measured['allreduce_us']:.1f} µs.", "",
              f"Prediction for a cluster interconnect (alpha = {CLUSTER['alpha_us']} µs, "
              f"{CLUSTER['bandwidth_gbs']:.0f} GB/s between nodes; GPU ranks add two staging copies per round, "
              f"{GPU_STAGING['copy_us']:.0f} µs each plus the bytes at {GPU_STAGING['bandwidth_gbs']:.0f} GB/s). "
              "Weak scaling: every rank keeps its block of subdomains; float32 parameters; the step time of "
              "one rank as given. Efficiency of an ordinary step:", "",
              "| case | one-rank step (ms) | " + " | ".join(f"{r} rank{'s' * (r > 1)}" for r in RANKS) + " | neighbours, bytes per round at 1,024 ranks |",
              "|---|---|" + "---|" * len(RANKS) + "---|"]
    notes, gpu_worst = [], 1.0
    for name, block, overlap, hidden, compute, gpu, source in CASES:
        params = params_per_subdomain(len(block), hidden)
        cells, last = [], None
        for r in RANKS:
            ex = exchanges(grid_for(block, r), r, overlap, params) if r > 1 else {"neighbours": 0, "bytes": 0.0}
            e = predict(compute, ex, CLUSTER['alpha_us'], CLUSTER['bandwidth_gbs'], gpu)
            cells.append(f"{e:.3f}")
            gpu_worst = min(gpu_worst, e) if gpu else gpu_worst
            last = ex
        lines.append(f"| {name} | {compute} | " + " | ".join(cells) + f" | {last['neighbours']}, {last['bytes']:,.0f} |")
        notes.append(f"- {name}: {source}.")
    lines += ["", "Step times of one rank:", "", *notes, "",
              "Communication alone costs little once every rank has all its neighbours: the bytes per round stop "
              "growing (see the byte counts above), and one round of a few microseconds is small against a "
              "step of milliseconds. What the model leaves out decides the measured efficiency: ranks sharing a "
              "node's memory bandwidth, and a slow rank holding up its neighbours at the exchange (the measured "
              "weak scaling above). The GPU cases, with their short steps and the copies through host memory, "
              f"are the sensitive ones: down to {gpu_worst:.3f} at 1,024 ranks."]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", action="store_true", help="measure (run under mpiexec with 2 or more ranks)")
    p.add_argument("--fit", metavar="JSON", help="predict from a measurement written by --measure")
    p.add_argument("--out", default=str(ROOT / "docs" / "scaling.md"))
    args = p.parse_args(argv)
    if args.measure:
        result = measure()
        if result is not None:
            print(json.dumps(result))
        return 0
    if args.fit:
        try:
            measured = json.loads(Path(args.fit).read_text())
        except (OSError, ValueError) as e:
            print(f"alphabeta: cannot read {args.fit}: {e}", file=sys.stderr)
            return 2
        command = f"python scripts/alphabeta.py --fit {args.fit}"
    else:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
        if mpiexec is None:
            print("alphabeta: no mpiexec (pip install mpich)", file=sys.stderr)
            return 2
        proc = subprocess.run([mpiexec, "-n", "2", sys.executable, __file__, "--measure"], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            print(f"alphabeta: the measurement failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        measured = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        measured["date"] = time.strftime("%Y-%m-%d")
        command = "python scripts/alphabeta.py"
    from mdsection import replace_section

    replace_section(Path(args.out), "Scaling", "Predicted weak scaling (alpha-beta model)", report(measured, command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
