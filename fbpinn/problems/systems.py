"""Systems of equations: problems with several fields.

``acoustic1d``: the (1+1)-D acoustic wave equation as a first-order system in pressure p and
particle velocity v,

    p_t + K v_x = 0,   rho v_t + p_x = 0,   x in [0, 1],  t in [0, T],

with bulk modulus K and density rho (sound speed c = sqrt(K / rho), impedance Z = rho c), rigid
walls v(0, t) = v(1, t) = 0 and the fluid at rest at t = 0.  Its exact solution is a sum of
standing waves,

    p = sum_n a_n cos(n pi x) cos(n pi c t),   v = sum_n a_n sin(n pi x) sin(n pi c t) / Z,

for the modes n = 1 and 3 (a_1 = 1, a_3 = ``a3``).  Hard constraints give the initial pressure,
v(x, 0) = 0 and the walls exactly: ``p = p(x, 0) + tanh(t/s) p_hat`` and
``v = tanh(t/s) tanh(x/s) tanh((1-x)/s) v_hat``.

``lotka_volterra``: the predator-prey system in the fields prey and predator,

    prey' = alpha prey - beta prey predator,   predator' = delta prey predator - gamma predator,

on t in [0, T] from (prey0, predator0), against a fine Runge-Kutta reference
(:func:`fbpinn.reference.ode.rk4`); the initial values hold through ``u = u0 + tanh(t/s) u_hat``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import register
from . import SCALE, Params, Problem


@dataclass
class AcousticParams(Params):
    K: float = 1.0  # bulk modulus
    rho: float = 1.0  # density
    a3: float = 0.5  # amplitude of the third mode
    t_end: float = 1.0  # T
    sigma: float = 0.1  # width of the ansatz's tanh ramps

    def validate(self):
        bad = super().validate() or self.first_not_positive("K", "rho", "t_end", "sigma")
        return bad or self.first_out_of_range(1 / SCALE, SCALE, "K", "rho", "t_end", "sigma") \
            or self.first_out_of_range(-SCALE, SCALE, "a3")


@register("problem", "acoustic1d")
class Acoustic1d(Problem):
    """Acoustic waves as a first-order system ``p_t + K v_x = 0``, ``rho v_t + p_x = 0`` between rigid walls."""

    axes = ("x", "t")
    fields = ("p", "v")
    needs = ("p_x", "p_t", "v_x", "v_t")
    Params = AcousticParams
    has_constraint = True

    @property
    def hi(self):
        return (1.0, self.p.t_end)

    lo = (0.0, 0.0)

    @property
    def c(self) -> float:
        return math.sqrt(self.p.K / self.p.rho)

    def _modes(self):
        return [(1, 1.0), (3, self.p.a3)]

    def constraint(self, x):
        s = self.p.sigma
        ramp = torch.tanh(x[:, 1] / s)
        walls = torch.tanh(x[:, 0] / s) * torch.tanh((1 - x[:, 0]) / s)
        p0 = sum(a * torch.cos(n * math.pi * x[:, 0]) for n, a in self._modes())
        a = torch.stack([p0, torch.zeros_like(p0)], dim=1)
        b = torch.stack([ramp, ramp * walls], dim=1)
        return a, b

    def residual(self, x, d):
        return d["p_t"] + self.p.K * d["v_x"], self.p.rho * d["v_t"] + d["p_x"]

    def exact(self, x):
        x = x.double()
        c, z = self.c, self.p.rho * self.c
        p = sum(a * torch.cos(n * math.pi * x[:, 0]) * torch.cos(n * math.pi * c * x[:, 1]) for n, a in self._modes())
        v = sum(a * torch.sin(n * math.pi * x[:, 0]) * torch.sin(n * math.pi * c * x[:, 1]) for n, a in self._modes())
        return torch.stack([p, v / z], dim=1)


@dataclass
class LotkaVolterraParams(Params):
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    delta: float = 1.0
    prey0: float = 2.0
    predator0: float = 1.0
    t_end: float = 10.0
    sigma: float = 0.5  # width of the ansatz's tanh ramp

    def validate(self):
        names = ("alpha", "beta", "gamma", "delta", "prey0", "predator0", "t_end", "sigma")
        bad = super().validate() or self.first_not_positive(*names)
        return bad or self.first_out_of_range(1 / SCALE, SCALE, *names)


@register("problem", "lotka_volterra")
class LotkaVolterra(Problem):
    """Predator-prey system ``prey' = alpha prey - beta prey predator``, ``predator' = delta prey predator - gamma predator``."""

    axes = ("t",)
    fields = ("prey", "predator")
    needs = ("prey", "prey_t", "predator", "predator_t")
    Params = LotkaVolterraParams
    has_constraint = True
    lo = (0.0,)
    reference_name = "classical Runge-Kutta, 200 steps between test points (float64)"

    @property
    def hi(self):
        return (self.p.t_end,)

    def constraint(self, x):
        ramp = torch.tanh(x[:, 0] / self.p.sigma)
        a = torch.stack([torch.full_like(ramp, self.p.prey0), torch.full_like(ramp, self.p.predator0)], dim=1)
        return a, torch.stack([ramp, ramp], dim=1)

    def residual(self, x, d):
        p = self.p
        u, w = d["prey"], d["predator"]
        return d["prey_t"] - (p.alpha * u - p.beta * u * w), d["predator_t"] - (p.delta * u * w - p.gamma * w)

    def rates(self, t, y):
        """The right-hand side of the system for the reference integrator."""
        p = self.p
        return np.array([p.alpha * y[0] - p.beta * y[0] * y[1], p.delta * y[0] * y[1] - p.gamma * y[1]])

    def reference(self, axes):
        from ..reference.ode import rk4

        times = axes[0].double().numpy()
        return torch.from_numpy(rk4(self.rates, [self.p.prey0, self.p.predator0], times))  # (n_t, 2)
