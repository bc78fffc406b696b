"""Window functions of one axis and their derivatives.

A subdomain's window is a product over axes of 1-D windows; each 1-D window is a
function of the normalised coordinate ``z = (x - c) / h`` that is positive on
``|z| < 1`` and zero outside.  :mod:`fbpinn.decomposition` divides each axis's
windows by their sum there, which makes the product a partition of unity.

Every window returns ``(phi, dphi/dz, d2phi/dz2)`` from plain torch operations, so
the same code gives the analytic derivatives used by the fast path and a
differentiable function for the autograd reference.  :meth:`Window.derivatives`
gives derivatives of any order: the shipped windows have closed forms, and a window
that defines its value alone gets them from nested autograd.
"""

from __future__ import annotations

import math

import torch

from .derivatives import evaluate_polynomial, ode_polynomials
from .registry import register


class Window:
    """Base class of the 1-D windows.

    A subclass provides at least one of

    - ``value(z)``: the window ``phi`` alone, elementwise in ``z`` (each output element
      depends on its own input element only) and built from differentiable torch
      operations, zero for ``|z| >= 1``.  Every derivative then comes from nested
      autograd of it (:meth:`autograd_derivatives`);
    - ``__call__(z) -> (phi, dphi/dz, d2phi/dz2)``: analytic derivatives up to order two,
      used by the order-two path; higher orders then come from nested autograd of its
      ``phi``.

    It may also override :meth:`derivatives` with closed forms for any order, as the
    shipped windows do.  ``overlap`` (subdomain width / centre spacing) is passed to
    the constructor.
    """

    def __init__(self, overlap: float):
        self.overlap = float(overlap)  # subdomain width / centre spacing

    def _has_call(self) -> bool:
        return type(self).__call__ is not Window.__call__

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """The window at ``z``."""
        if not self._has_call():
            raise NotImplementedError(f"window {type(self).__name__} defines neither value(z) nor __call__(z)")
        return self(z)[0]

    def __call__(self, z: torch.Tensor):
        """``(phi, dphi/dz, d2phi/dz2)``; here from nested autograd of :meth:`value`."""
        return tuple(self.autograd_derivatives(z, 2))

    def derivatives(self, z: torch.Tensor, n: int) -> list:
        """``[phi, dphi/dz, ..., d^n phi/dz^n]`` at ``z``: from ``__call__`` up to order two,
        from nested autograd beyond (subclasses may override with closed forms)."""
        if n <= 2 and self._has_call():
            return list(self(z))[:n + 1]
        return self.autograd_derivatives(z, n)

    def autograd_derivatives(self, z: torch.Tensor, n: int) -> list:
        """``[phi, ..., d^n phi/dz^n]`` by nested autograd of the elementwise :meth:`value`.

        If ``z`` requires grad the results stay differentiable in ``z``; otherwise they are
        detached."""
        keep = z.requires_grad
        with torch.enable_grad():
            zz = z if keep else z.detach().requires_grad_(True)
            out = [self.value(zz)]
            for _ in range(n):
                f, g = out[-1], None
                if f.requires_grad:
                    g = torch.autograd.grad(f.sum(), zz, create_graph=True, allow_unused=True)[0]
                out.append(torch.zeros_like(f) if g is None else g)
        return out if keep else [f.detach() for f in out]


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

    def derivatives(self, z, n):
        """Any order from ``phi = 3/8 + cos(pi z)/2 + cos(2 pi z)/8`` on ``|z| < 1``:
        ``phi^(k) = pi^k/2 cos(pi z + k pi/2) + (2 pi)^k/8 cos(2 pi z + k pi/2)``."""
        out = list(self(z))[:n + 1]
        if n <= 2:
            return out
        inside = (z.abs() < 1).to(z.dtype)
        a = math.pi * z
        c1, s1, c2, s2 = torch.cos(a), torch.sin(a), torch.cos(2 * a), torch.sin(2 * a)
        cycle = ((c1, c2), (-s1, -s2), (-c1, -c2), (s1, s2))  # cos(x + k pi/2), k mod 4
        for k in range(3, n + 1):
            f1, f2 = cycle[k % 4]
            out.append((0.5 * math.pi**k * f1 + 0.125 * (2 * math.pi)**k * f2) * inside)
        return out


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

    def derivatives(self, z, n):
        """Any order by the Leibniz rule on the two ramps, whose derivatives are polynomials
        in the ramp: ``sig' = sig (1 - sig)``, so ``sig^(k) = sig (1 - sig) P_{k-1}'(sig)``
        (:func:`ode_polynomials`), with ``1 - sig`` evaluated as ``sig(-.)``: near the
        plateau, where ``sig`` is close to one, this keeps the small factor accurate."""
        out = list(self(z))[:n + 1]
        if n <= 2:
            return out
        inside = (z.abs() < 1).to(z.dtype)
        a, b = (z + self.z0) / self.s, (self.z0 - z) / self.s
        left, right = torch.sigmoid(a), torch.sigmoid(b)
        q_left, q_right = left * torch.sigmoid(-a), right * torch.sigmoid(-b)  # sig (1 - sig)
        slopes = [[i * c for i, c in enumerate(p)][1:] for p in ode_polynomials([0, 1, -1], n - 1)]
        dl = [left] + [q_left * evaluate_polynomial(p, left) / self.s**k for k, p in enumerate(slopes, 1)]
        dr = [right] + [(-1) ** k * q_right * evaluate_polynomial(p, right) / self.s**k
                        for k, p in enumerate(slopes, 1)]
        for k in range(3, n + 1):
            out.append(sum(math.comb(k, i) * dl[i] * dr[k - i] for i in range(k + 1)) * inside)
        return out
