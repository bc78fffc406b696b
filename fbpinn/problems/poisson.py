"""Poisson problems.

``laplace2d_multiscale`` (the multilevel FBPINN paper's test problem):

    -(u_xx + u_yy) = f  on [0, 1]^2,   u = 0 on the boundary,
    u(x, y) = (1/n) sum_{i=1..n} sin(w_i pi x) sin(w_i pi y),   w_i = 2^i,
    f(x, y) = (1/n) sum_i 2 (w_i pi)^2 sin(w_i pi x) sin(w_i pi y).

The boundary values hold exactly through the ansatz
``u = tanh(x/s) tanh((1-x)/s) tanh(y/s) tanh((1-y)/s) * u_hat`` with ``s = sigma``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..registry import register
from . import SCALE, Params, Problem


@dataclass
class LaplaceParams(Params):
    scales: int = 3  # n: frequencies w_i = 2^i, i = 1..n
    sigma: float = 0.125

    def validate(self):
        bad = super().validate()
        if bad:
            return bad
        if not 1 <= self.scales <= 10:
            return "scales", f"must lie in 1..10, got {self.scales}"
        if not self.sigma > 0:
            return "sigma", f"must be positive, got {self.sigma}"
        return self.first_out_of_range(1 / SCALE, SCALE, "sigma")


@register("problem", "laplace2d_multiscale")
class Laplace2dMultiscale(Problem):
    """Poisson equation ``-(u_xx + u_yy) = f`` on [0, 1]^2 with a multi-frequency exact solution."""

    axes = ("x", "y")
    lo, hi = (0.0, 0.0), (1.0, 1.0)
    needs = ("u_xx", "u_yy")
    Params = LaplaceParams
    has_constraint = True
    default_output_scale = 1.0

    def _omegas(self):
        return [2.0**i * math.pi for i in range(1, self.p.scales + 1)]

    def constraint(self, x):
        s = self.p.sigma
        b = torch.tanh(x[:, 0] / s) * torch.tanh((1 - x[:, 0]) / s) * torch.tanh(x[:, 1] / s) * torch.tanh((1 - x[:, 1]) / s)
        return torch.zeros_like(b), b

    def source(self, x):
        f = sum(2 * w * w * torch.sin(w * x[:, 0]) * torch.sin(w * x[:, 1]) for w in self._omegas())
        return f / self.p.scales

    def residual(self, x, d):
        return d["u_xx"] + d["u_yy"] + self.source(x)

    def exact(self, x):
        x = x.double()
        return sum(torch.sin(w * x[:, 0]) * torch.sin(w * x[:, 1]) for w in self._omegas()) / self.p.scales
