"""How much of a wave2d run's error the absorbing sides alone cause.

A wave2d problem is trained on the box [-1, 1]^2 with an absorbing condition on its sides
(``problem.absorbing_order``: 1, u_t + c u_n = 0; 2, the second-order Engquist-Majda condition),
while its reference is the free-space solution. The two differ where waves meet the sides
obliquely, whatever the network does. This script measures that floor: one finite-difference
scheme (second order in space and time, spacing ``--h``) solves the box with the absorbing
condition and, on a grid padded by c_max T on every side, the free-space problem; the relative
L2 difference of the two on the config's test grid is the error of a perfect solution of the
box problem. The same scheme on both sides, so its own discretisation error cancels to first
order.

    python scripts/absorbing_floor.py configs/wave2d_small.toml --order 1 2

Prints the floor over the whole test grid and per time slice, for each order.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fbpinn.config import ConfigError, load_config  # noqa: E402
from fbpinn.trainer import build  # noqa: E402


def solve(problem, h: float, pad: int, order: int | None, times: np.ndarray, sample_axis: np.ndarray) -> np.ndarray:
    """The wave on [-1 - pad h, 1 + pad h]^2 at ``times`` (evenly spaced from 0) on the grid ``sample_axis`` x ``sample_axis``
    (nodes of the FD grid). ``order``: the absorbing condition on the sides (1 or 2), or None for
    zero sides far enough away (``pad`` cells of padding) that nothing returns before the end."""
    n = int(round(2 / h)) + 1 + 2 * pad
    x = -1 - pad * h + h * np.arange(n)
    X, Y = np.meshgrid(x, x, indexing="ij")
    c = np.asarray(problem.speed(X, Y), dtype=np.float64)
    T = float(times[-1])
    per = len(times) - 1  # whole steps between the (evenly spaced) output times
    steps = math.ceil(T / (0.3 * h / c.max()) / per) * per
    dt = T / steps
    src = problem.source
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def rhs(u, t):
        lap = np.zeros_like(u)
        lap[1:-1, 1:-1] = (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * u[1:-1, 1:-1]) / h**2
        r = c * c * lap
        if src is not None:
            r = r + np.asarray(src(Xt, Yt, torch.full_like(Xt, t)))
        return r

    u0 = np.zeros_like(X) if src is not None else np.asarray(problem.initial(X, Y), dtype=np.float64)
    um, u = u0, u0 + 0.5 * dt * dt * rhs(u0, 0.0)
    idx = np.round((sample_axis - x[0]) / h).astype(int)
    out = np.zeros((len(idx), len(idx), len(times)))
    out[:, :, 0] = u0[np.ix_(idx, idx)]
    k = 1
    for s in range(1, steps + 1):  # u is the level at time s dt
        while k < len(times) and abs(times[k] - s * dt) < dt / 2:
            out[:, :, k] = u[np.ix_(idx, idx)]
            k += 1
        if s == steps:
            break
        un = 2 * u - um + dt * dt * rhs(u, s * dt)
        if order is not None:
            _absorb(un, u, um, c, h, dt, order)
        um, u = u, un
    return out


def _absorb(un, u, um, c, h, dt, order):
    """Overwrite the sides of ``un`` (the new level) with the absorbing condition: Mur's first-order
    scheme everywhere, then on the sides' inner nodes (not the corners) for order 2 the
    Engquist-Majda condition c u_nt + u_tt - c^2/2 u_ss = 0, centred at the current level."""
    views = (lambda a: a, lambda a: a[::-1], lambda a: a.T, lambda a: a.T[::-1])  # each side as the last row
    for view in views:
        A, B, cc = view(un), view(u), view(c)[-1]
        a = (cc * dt - h) / (cc * dt + h)
        A[-1] = B[-2] + a * (A[-2] - B[-1])
    if order == 2:
        for view in views:
            A, B, C, cc = view(un), view(u), view(um), view(c)[-1, 1:-1]
            uss = (B[-1, 2:] - 2 * B[-1, 1:-1] + B[-1, :-2]) / h**2
            a = cc / (2 * dt * h)
            A[-1, 1:-1] = (a * (A[-2, 1:-1] + C[-1, 1:-1] - C[-2, 1:-1]) + (2 * B[-1, 1:-1] - C[-1, 1:-1]) / dt**2
                           + 0.5 * cc * cc * uss) / (a + 1 / dt**2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a wave2d config")
    parser.add_argument("--order", type=int, nargs="+", default=[1, 2], choices=[1, 2], help="absorbing orders")
    parser.add_argument("--h", type=float, default=0.005, help="FD spacing (default 0.005; 2 / h must be whole)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise SystemExit(f"absorbing_floor: {e}") from None
    if cfg.problem_name != "wave2d":
        raise SystemExit(f"absorbing_floor: {args.config} is a {cfg.problem_name!r} config, not wave2d")
    if abs(2 / args.h - round(2 / args.h)) > 1e-9 or not 0 < args.h <= 0.05:
        raise SystemExit(f"absorbing_floor: --h must divide 2 and lie in (0, 0.05], got {args.h}")
    problem = build(cfg)[0]
    nx, ny, nt = cfg.test.points
    if nx != ny or (2 / args.h) % (nx - 1):
        raise SystemExit(f"absorbing_floor: the test grid {cfg.test.points} must be square and on the FD grid "
                         f"(2 / h a multiple of its {nx - 1} intervals)")
    times = np.linspace(0.0, problem.p.t_max, nt)
    axis = np.linspace(-1.0, 1.0, nx)
    x = np.linspace(-1, 1, 201)
    c_max = float(np.asarray(problem.speed(*np.meshgrid(x, x, indexing="ij"))).max())
    pad = math.ceil(c_max * problem.p.t_max / args.h) + 4
    free = solve(problem, args.h, pad, None, times, axis)
    norm = np.sqrt((free**2).sum((0, 1)))
    print(f"{args.config}: FD spacing {args.h}, free space padded by {pad} cells; error of the box problem's "
          "exact solution against free space")
    for order in args.order:
        box = solve(problem, args.h, 0, order, times, axis)
        e = box - free
        total = float(np.sqrt((e**2).sum() / (free**2).sum()))
        per_t = np.sqrt((e**2).sum((0, 1))) / np.maximum(norm, 1e-300)
        shown = " ".join(f"{v:.3f}" for v in per_t)
        print(f"absorbing_order = {order}: rel L2 {total:.2e}; per time slice t = 0 .. {problem.p.t_max:g}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
