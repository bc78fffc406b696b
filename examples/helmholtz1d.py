"""A problem of your own: the 1-D Helmholtz equation, trained with ``fbpinn train helmholtz1d.toml``.

    u_xx + k^2 u = f(x)  on [a, b],   u(a) = u(b) = 0,

with the source ``f`` made so that the exact solution is (``xi = (x - a) / (b - a)``)

    u(x) = sin(m pi xi) + sin(3 m pi xi) / 3.

This file lives outside the fbpinn package: the config names it with
``problem.module = "helmholtz1d.py"`` (a path relative to the config's folder), fbpinn
imports it before it validates the config, and the ``@register`` decorator below makes
``problem.name = "helmholtz1d"`` known.  The domain ``[a, b]`` comes from the config's
``problem.domain`` (default ``[[0.0, 1.0]]``): the exact solution and the ansatz are written
for any interval.  docs/guide.md ("Your own problem") walks through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fbpinn.problems import SCALE, Params, Problem
from fbpinn.registry import register


@dataclass
class HelmholtzParams(Params):
    """The keys of the config's [problem] table, besides name, module and those every problem has."""

    k: float = 10.0  # wavenumber; k (b - a) / pi must not be a whole number (resonance)
    modes: int = 2  # m: the exact solution's modes are m and 3 m half-waves over the domain
    sigma: float = 0.1  # width of the ansatz's tanh ramps, as a fraction of the domain's length

    def validate(self):
        """``(key, message)`` for the first bad value, or None."""
        bad = super().validate() or self.first_not_positive("k", "sigma")
        if bad:
            return bad
        if not 1 <= self.modes <= 100:
            return "modes", f"must lie in 1..100, got {self.modes}"
        return self.first_out_of_range(1 / SCALE, SCALE, "k") or self.first_out_of_range(1e-3, 1.0, "sigma")


@register("problem", "helmholtz1d")
class Helmholtz1d(Problem):
    """1-D Helmholtz equation ``u_xx + k^2 u = f`` with u = 0 at both ends and a two-mode exact solution."""

    axes = ("x",)
    lo, hi = (0.0,), (1.0,)  # the domain unless the config sets problem.domain
    configurable_domain = True  # exact() and constraint() hold on any [a, b]
    needs = ("u", "u_xx")  # every derivative residual() reads, by name
    Params = HelmholtzParams
    has_constraint = True

    def _xi(self, x):
        """The coordinate scaled to [0, 1] over the domain."""
        a, b = self.domain.lo[0], self.domain.hi[0]
        return (x[:, 0] - a) / (b - a)

    def _modes(self):
        """(amplitude, angular frequency in x) of the exact solution's two sine modes."""
        length = self.domain.hi[0] - self.domain.lo[0]
        return [(1.0, self.p.modes * math.pi / length), (1.0 / 3.0, 3 * self.p.modes * math.pi / length)]

    def constraint(self, x):
        """u = A + B * u_hat with A = 0 and B vanishing at both ends: u(a) = u(b) = 0 exactly."""
        xi, s = self._xi(x), self.p.sigma
        b = torch.tanh(xi / s) * torch.tanh((1 - xi) / s)
        return torch.zeros_like(b), b

    def source(self, x):
        """f = u_xx + k^2 u of the exact solution."""
        length = self.domain.hi[0] - self.domain.lo[0]
        xi = self._xi(x)
        return sum(a * (self.p.k**2 - w**2) * torch.sin(w * length * xi) for a, w in self._modes())

    def residual(self, x, d):
        """Zero where the equation holds; d["u_xx"] is the second derivative in x."""
        return d["u_xx"] + self.p.k**2 * d["u"] - self.source(x)

    def exact(self, x):
        """The exact solution (float64), which the test error is measured against."""
        x = x.double()
        length = self.domain.hi[0] - self.domain.lo[0]
        xi = self._xi(x)
        return sum(a * torch.sin(w * length * xi) for a, w in self._modes())
