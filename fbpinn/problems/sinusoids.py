"""Sinusoid problems.

``cos1d``:  du/dx = omega cos(omega x),  x in [-2 pi, 2 pi],  u(0) = 0,  omega = 15.
Exact solution ``u = sin(omega x)``; the hard constraint ``u = tanh(omega x) * u_hat``
makes u(0) = 0 hold exactly.  The high frequency over a long domain is what a single
network fails on and a decomposition handles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..registry import register
from . import SCALE, Params, Problem


@dataclass
class Cos1dParams(Params):
    omega: float = 15.0

    def validate(self):
        bad = super().validate()
        if bad:
            return bad
        if self.omega <= 0:
            return "omega", "must be positive"
        return self.first_out_of_range(1 / SCALE, SCALE, "omega")


@register("problem", "cos1d")
class Cos1d(Problem):
    """First-order ODE ``u_x = omega cos(omega x)`` on [-2 pi, 2 pi] with u(0) = 0."""

    axes = ("x",)
    lo, hi = (-2 * math.pi,), (2 * math.pi,)
    needs = ("u_x",)
    Params = Cos1dParams
    has_constraint = True

    @property
    def default_output_scale(self):
        return 1.0 / self.p.omega

    def constraint(self, x):
        return torch.zeros_like(x[:, 0]), torch.tanh(self.p.omega * x[:, 0])

    def residual(self, x, d):
        return d["u_x"] - self.p.omega * torch.cos(self.p.omega * x[:, 0])

    def exact(self, x):
        return torch.sin(self.p.omega * x[:, 0].double())
