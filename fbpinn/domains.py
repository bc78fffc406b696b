"""Rectangular domains and collocation samplers (grid, uniform, Sobol).

Used by the trainer to draw collocation and test points.  Every sampler can be
restricted to a sub-box ``region`` so that a process can hold only the points of
the cells it owns; grid points in a region are the global grid's points inside it,
so splitting a region never changes the point set as a whole.
"""

from __future__ import annotations

import math

import torch

SAMPLERS = ("grid", "uniform", "sobol")


class Box:
    """An axis-aligned box ``[lo_0, hi_0] x ... x [lo_{d-1}, hi_{d-1}]``."""

    def __init__(self, lo, hi):
        self.lo = [float(v) for v in lo]
        self.hi = [float(v) for v in hi]
        if len(self.lo) != len(self.hi) or not self.lo:
            raise ValueError(f"box bounds must have the same non-zero length, got {lo} and {hi}")
        for d, (a, b) in enumerate(zip(self.lo, self.hi)):
            if not b > a:
                raise ValueError(f"box axis {d}: upper bound {b} must exceed lower bound {a}")

    @property
    def dim(self) -> int:
        return len(self.lo)

    def grid_axes(self, n_per_axis, dtype=torch.float64) -> list[torch.Tensor]:
        """1-D coordinate vectors of a grid with both ends included."""
        return [torch.linspace(a, b, int(n), dtype=dtype) for a, b, n in zip(self.lo, self.hi, n_per_axis)]

    def grid(self, n_per_axis, dtype=torch.float64) -> torch.Tensor:
        """All points of the grid, first axis slowest: (prod(n), d)."""
        axes = self.grid_axes(n_per_axis, dtype)
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=1)  # (n, d)

    def contains(self, x: torch.Tensor, closed_hi=None) -> torch.Tensor:
        """Boolean mask of points in the box, half-open [lo, hi) on axes whose
        ``closed_hi`` entry is False so that neighbouring regions do not share points."""
        closed_hi = closed_hi if closed_hi is not None else [True] * self.dim
        mask = torch.ones(x.shape[0], dtype=torch.bool)
        for d in range(self.dim):
            mask &= self.contains_axis(d, x[:, d], closed_hi[d])
        return mask

    def contains_axis(self, d: int, values: torch.Tensor, closed_hi: bool = True) -> torch.Tensor:
        """Boolean mask of coordinates ``values`` inside the box along axis ``d``."""
        upper = (values <= self.hi[d]) if closed_hi else (values < self.hi[d])
        return (values >= self.lo[d]) & upper


def sample(box: Box, kind: str, n_per_axis, generator: torch.Generator, dtype=torch.float64,
           region: Box | None = None, closed_hi=None) -> torch.Tensor:
    """Draw collocation points in ``box``.

    Parameters
    ----------
    kind : "grid", "uniform" or "sobol".
    n_per_axis : points per axis; random samplers draw ``prod(n_per_axis)`` points.
    region : optional sub-box; only the points inside it are returned.  Random
        samplers draw the full set and keep the region's share, so results do not
        depend on how the domain is split.
    """
    n_total = math.prod(int(n) for n in n_per_axis)
    if kind == "grid":
        x = box.grid(n_per_axis, dtype)
    elif kind == "uniform":
        u = torch.rand(n_total, box.dim, generator=generator, dtype=torch.float64)
        x = _scale(box, u)
    elif kind == "sobol":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        engine = torch.quasirandom.SobolEngine(box.dim, scramble=True, seed=seed)
        x = _scale(box, engine.draw(n_total, dtype=torch.float64))
    else:
        raise ValueError(f"unknown sampler {kind!r}; available: {', '.join(SAMPLERS)}")
    if region is not None:
        x = x[region.contains(x, closed_hi)]
    return x.to(dtype)  # (n, d)


def _scale(box: Box, u: torch.Tensor) -> torch.Tensor:
    lo = torch.tensor(box.lo, dtype=u.dtype)
    hi = torch.tensor(box.hi, dtype=u.dtype)
    return lo + (hi - lo) * u
