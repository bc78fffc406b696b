"""Fourth-order problems: a bending beam, static and vibrating.

``biharmonic1d``: a simply supported beam under a load,

    u_xxxx = f  on [0, 1],   u = u_xx = 0 at x = 0 and 1,
    u = sin(pi x) + a3 sin(3 pi x),   f = pi^4 sin(pi x) + a3 (3 pi)^4 sin(3 pi x).

``beam``: the Euler-Bernoulli beam in time (stiffness over mass per length set to one),

    u_tt + u_xxxx = 0  on [0, 1] x [0, T],   u = u_xx = 0 at x = 0 and 1,
    u(x, 0) = sin(pi x) + a2 sin(2 pi x),   u_t(x, 0) = 0,

whose exact solution is the sum of its two vibration modes,
``u = sin(pi x) cos(pi^2 t) + a2 sin(2 pi x) cos(4 pi^2 t)``.

Both hold u = 0 at the supports through the ansatz factor ``x (1 - x)``, whose derivatives stay
small at any order (and the beam its initial state through ``u = u(x, 0) + tanh(t/s)^2 * ...``);
the bending moment u_xx = 0 at
the supports is a soft loss term, ``bc_moment``, at ``boundary_points`` points per support.
Residuals and moments are divided by pi^4 and pi^2, the scale of their lowest mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..registry import register
from . import SCALE, WEIGHT_MAX, Params, Problem, Term

PI2, PI4 = math.pi**2, math.pi**4
BOUNDARY_POINTS_MAX = 10**6


@dataclass
class SupportParams(Params):
    boundary_weight: float = 1.0  # weight of the moment condition u_xx = 0 at the supports

    def validate(self):
        bad = super().validate() or self.first_not_positive("boundary_weight")
        return bad or self.first_out_of_range(1 / WEIGHT_MAX, WEIGHT_MAX, "boundary_weight")


@dataclass
class BiharmonicParams(SupportParams):
    a3: float = 0.1  # amplitude of the third mode

    def validate(self):
        return super().validate() or self.first_out_of_range(-SCALE, SCALE, "a3")


class _SimplySupported(Problem):
    """What the two beams share: supports at x = 0 and 1 and the moment condition there."""

    has_constraint = True

    def _supports(self, x):
        return x[:, 0] * (1 - x[:, 0])

    def _moment_term(self, x) -> Term:
        return Term("bc_moment", x.to(self.dtype), ("u_xx",), lambda x, d: d["u_xx"] / PI2, self.p.boundary_weight)


@register("problem", "biharmonic1d")
class Biharmonic1d(_SimplySupported):
    """Simply supported beam under a load, ``u_xxxx = f`` on [0, 1] (fourth order)."""

    axes = ("x",)
    lo, hi = (0.0,), (1.0,)
    needs = ("u_xxxx",)
    Params = BiharmonicParams

    def constraint(self, x):
        b = self._supports(x)
        return torch.zeros_like(b), b

    def residual(self, x, d):
        f = PI4 * torch.sin(math.pi * x[:, 0]) + self.p.a3 * 81 * PI4 * torch.sin(3 * math.pi * x[:, 0])
        return (d["u_xxxx"] - f) / PI4

    def exact(self, x):
        x = x[:, 0].double()
        return torch.sin(math.pi * x) + self.p.a3 * torch.sin(3 * math.pi * x)

    def terms(self, generator):
        return [self._moment_term(torch.tensor([[0.0], [1.0]], dtype=torch.float64))]


@dataclass
class BeamParams(SupportParams):
    a2: float = 0.25  # amplitude of the second mode
    t_end: float = 0.2  # T
    sigma_t: float = 0.05  # width of the initial ramp tanh(t/sigma_t)^2
    boundary_points: int = 100  # points per support in the moment condition

    def validate(self):
        bad = super().validate() or self.first_not_positive("t_end", "sigma_t")
        if bad:
            return bad
        if not 1 <= self.boundary_points <= BOUNDARY_POINTS_MAX:
            return "boundary_points", f"must lie in 1..{BOUNDARY_POINTS_MAX}, got {self.boundary_points}"
        return self.first_out_of_range(1 / SCALE, SCALE, "t_end", "sigma_t") \
            or self.first_out_of_range(-SCALE, SCALE, "a2")


@register("problem", "beam")
class Beam(_SimplySupported):
    """Euler-Bernoulli beam ``u_tt + u_xxxx = 0``, simply supported, released from rest (fourth order in x)."""

    axes = ("x", "t")
    lo = (0.0, 0.0)
    needs = ("u_tt", "u_xxxx")
    Params = BeamParams

    @property
    def hi(self):
        return (1.0, self.p.t_end)

    def _initial(self, x):
        return torch.sin(math.pi * x) + self.p.a2 * torch.sin(2 * math.pi * x)

    def constraint(self, x):
        ramp = torch.tanh(x[:, 1] / self.p.sigma_t) ** 2
        return self._initial(x[:, 0]), ramp * self._supports(x)

    def residual(self, x, d):
        return (d["u_tt"] + d["u_xxxx"]) / PI4

    def exact(self, x):
        x, t = x[:, 0].double(), x[:, 1].double()
        return (torch.sin(math.pi * x) * torch.cos(PI2 * t)
                + self.p.a2 * torch.sin(2 * math.pi * x) * torch.cos(4 * PI2 * t))

    def terms(self, generator):
        t = torch.linspace(0.0, self.p.t_end, self.p.boundary_points, dtype=torch.float64)
        x = torch.cat([torch.stack([torch.full_like(t, edge), t], dim=1) for edge in (0.0, 1.0)])
        return [self._moment_term(x)]
