"""Viscous Burgers equation.

    u_t + u u_x = nu u_xx,   x in [-1, 1],   t in [0, 1],
    u(x, 0) = -sin(pi x),   u(-1, t) = u(1, t) = 0,   nu = 0.01 / pi.

The two halves of the initial sine run into each other and form a steep front at
x = 0 whose width is of order nu.  The ansatz

    u = -sin(pi x) + tanh((1 + x) / s) tanh((1 - x) / s) tanh(t / s) u_hat,   s = sigma,

makes the initial and boundary conditions hold exactly.  The reference solution is
the Cole-Hopf integral evaluated by quadrature (:mod:`fbpinn.reference.burgers`),
exact to about 1e-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import register
from . import SCALE, Params, Problem


@dataclass
class BurgersParams(Params):
    nu: float = 0.01 / math.pi  # viscosity
    sigma: float = 0.1  # length and time scale of the ansatz's tanh ramps

    def validate(self):
        bad = super().validate() or self.first_not_positive("nu", "sigma")
        if bad:
            return bad
        if self.nu < 1e-4:
            return "nu", f"must be >= 1e-4 for the reference quadrature to stay accurate, got {self.nu}"
        return self.first_out_of_range(1e-4, SCALE, "nu") or self.first_out_of_range(1 / SCALE, SCALE, "sigma")


@register("problem", "burgers")
class Burgers(Problem):
    """Viscous Burgers equation ``u_t + u u_x = nu u_xx`` with u(x, 0) = -sin(pi x), u(+-1, t) = 0."""

    axes = ("x", "t")
    lo, hi = (-1.0, 0.0), (1.0, 1.0)
    needs = ("u", "u_t", "u_x", "u_xx")
    Params = BurgersParams
    has_constraint = True

    def constraint(self, x):
        s = self.p.sigma
        b = torch.tanh((1 + x[:, 0]) / s) * torch.tanh((1 - x[:, 0]) / s) * torch.tanh(x[:, 1] / s)
        return -torch.sin(math.pi * x[:, 0]), b

    def residual(self, x, d):
        return d["u_t"] + d["u"] * d["u_x"] - self.p.nu * d["u_xx"]

    reference_name = "Cole-Hopf integral by quadrature (fbpinn.reference.burgers)"

    def reference(self, axes):
        from ..reference.burgers import solution

        xs, ts = (a.double().numpy() for a in axes)
        u = solution(xs[:, None], ts[None, :], nu=self.p.nu)
        return torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64))  # (n_x, n_t)
