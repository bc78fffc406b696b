"""Window functions of one axis and their derivatives.

A subdomain's window is a product over axes of 1-D windows; each 1-D window is a
function of the normalised coordinate ``z = (x - c) / h`` that is positive on
``|z| < 1`` and zero outside.  :mod:`fbpinn.decomposition` divides each axis's
windows by their sum there, which makes the product a partition of unity.

Every window returns ``(phi, dphi/dz, d2phi/dz2)`` from plain torch operations, so
the same code gives the analytic derivatives used by the fast path and a
differentiable function for the autograd reference.
"""

from __future__ import annotations

import math

import torch

from .registry import register


class Window:
    """Base class: ``__call__(z)`` gives the window and its first two z-derivatives."""

    def __init__(self, overlap: float):
        self.overlap = float(overlap)  # subdomain width / centre spacing

    def __call__(self, z: torch.Tensor):
        raise NotImplementedError


@register("window", "cosine")
class CosineWindow(Window):
    """``phi(z) = cos(pi z / 2)^4 = ((1 + cos(pi z)) / 2)^2`` on ``|z| < 1``."""

    def __call__(self, z):
        inside = (z.abs() < 1).to(z.dtype)
        a = 0.5 * math.pi * z
        c, s = torch.cos(a), torch.sin(a)
        c2 = c * c
        phi = c2 * c2 * inside
        d1 = -2 * math.pi * c2 * c * s * inside
        d2 = math.pi**2 * c2 * (3 * s * s - c2) * inside
        return phi, d1, d2


@register("window", "sigmoid")
class SigmoidWindow(Window):
    """Product of two logistic ramps centred half a centre-spacing from the centre.

    ``phi(z) = sig((z + z0)/s) * sig((z0 - z)/s)`` with ``z0 = 1 / overlap``; the ramp
    width ``s`` makes ``phi`` fall to ``tol = 1e-4`` at ``|z| = 1``, where it is cut to zero.
    """

    tol = 1e-4

    def __init__(self, overlap):
        super().__init__(overlap)
        self.z0 = 1.0 / self.overlap
        self.s = (1.0 - self.z0) / math.log(1.0 / self.tol - 1.0)

    def __call__(self, z):
        inside = (z.abs() < 1).to(z.dtype)
        left = torch.sigmoid((z + self.z0) / self.s)
        right = torch.sigmoid((self.z0 - z) / self.s)
        dl = left * (1 - left) / self.s
        dr = -right * (1 - right) / self.s
        ddl = left * (1 - left) * (1 - 2 * left) / self.s**2
        ddr = right * (1 - right) * (1 - 2 * right) / self.s**2
        phi = left * right * inside
        d1 = (dl * right + left * dr) * inside
        d2 = (ddl * right + 2 * dl * dr + left * ddr) * inside
        return phi, d1, d2
