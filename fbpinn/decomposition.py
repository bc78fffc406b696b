"""Subdomain grids, point-to-subdomain lookup and normalised windows.

A :class:`Level` is a tensor-product grid of overlapping rectangular subdomains.
Per axis, ``n`` centres are spaced evenly from the domain's lower to its upper end
(both included; one subdomain sits in the middle) and every subdomain is
``overlap`` times the centre spacing wide (the domain length for ``n = 1``).
Subdomains are numbered with the first axis slowest.

Lookup uses index arithmetic per axis: a point can only lie in the few subdomains
whose centres are within a half-width of it, so the candidates are found from
``floor`` of its scaled coordinate and checked; the cost is ``N * overlap^d``, never
``N * J``.  Because each window is a product of 1-D windows, dividing each axis's
windows by their sum makes the product a partition of unity, and the derivatives
of the normalised windows are products of 1-D derivatives.

Used by :mod:`fbpinn.model` and the results writer.
"""

from __future__ import annotations

import math

import torch

from .derivatives import multi_index_counts
from .domains import Box
from .registry import get


class Axis:
    """Centres and half-width of the subdomains along one axis."""

    def __init__(self, lo: float, hi: float, n: int, overlap: float):
        self.lo, self.hi, self.n = float(lo), float(hi), int(n)
        self.spacing = (self.hi - self.lo) / (self.n - 1) if self.n > 1 else (self.hi - self.lo)
        self.half_width = 0.5 * overlap * self.spacing
        if self.n > 1:
            self.centres = torch.linspace(self.lo, self.hi, self.n, dtype=torch.float64)
        else:
            self.centres = torch.tensor([0.5 * (self.lo + self.hi)], dtype=torch.float64)
        # Largest number of centres strictly within one half-width of a point, plus one
        # for rounding; candidates beyond the real ones are masked out.
        self.n_candidates = min(self.n, int(math.floor(2 * self.half_width / self.spacing)) + 2)
        # Only centres 0 .. limit-1 take part (time-marching switches later ones off); the
        # windows are then normalised over the included ones alone.
        self.limit = self.n

    def candidates(self, x: torch.Tensor):
        """Subdomain indices whose open support contains each coordinate.

        Returns ``idx`` (N, m) long and ``valid`` (N, m) bool.
        """
        if self.n == 1:
            # One subdomain spans the whole axis: every point is in it.
            idx = torch.zeros(x.shape[0], 1, dtype=torch.long)
            return idx, torch.ones(x.shape[0], 1, dtype=torch.bool)
        first = torch.floor((x.detach().double() - self.lo - self.half_width) / self.spacing).long()  # (N,)
        first = first.clamp(0, self.n - self.n_candidates)
        idx = first.unsqueeze(1) + torch.arange(self.n_candidates)  # (N, m)
        c = self.centres.to(x.dtype)[idx]
        valid = (x.unsqueeze(1) - c).abs() < self.half_width
        if self.limit < self.n:
            valid &= idx < self.limit
        return idx, valid


class Level:
    """One grid of subdomains covering a box.

    Parameters
    ----------
    box : the problem's domain.
    subdomains : number of subdomains per axis.
    overlap : subdomain width divided by the centre spacing (> 1 where ``n > 1``).
    window : registered window name.
    """

    def __init__(self, box: Box, subdomains, overlap: float, window: str = "cosine"):
        if len(subdomains) != box.dim:
            raise ValueError(f"{len(subdomains)} subdomain counts given for a {box.dim}-D domain")
        self.box = box
        self.shape = tuple(int(n) for n in subdomains)
        self.axes = [Axis(a, b, n, overlap) for a, b, n in zip(box.lo, box.hi, self.shape)]
        self.window = get("window", window)(overlap)
        self.n_subdomains = math.prod(self.shape)
        self.strides = [math.prod(self.shape[d + 1:]) for d in range(box.dim)]

    @property
    def dim(self) -> int:
        return len(self.shape)

    def centres(self) -> torch.Tensor:
        """Centres of all subdomains: (J, d) float64."""
        mesh = torch.meshgrid(*[a.centres for a in self.axes], indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=1)

    def half_widths(self) -> torch.Tensor:
        """Half-widths of all subdomains: (J, d) float64."""
        hw = torch.tensor([a.half_width for a in self.axes], dtype=torch.float64)
        return hw.expand(self.n_subdomains, self.dim).clone()

    def axis_windows(self, d: int, x: torch.Tensor, order: int):
        """Normalised 1-D windows of axis ``d`` at the candidate subdomains.

        Returns ``idx`` (N, m), ``valid`` (N, m) and a list of ``order + 1`` tensors
        (N, m): the normalised window and its x-derivatives.  The quotient
        ``w = phi / s`` (``s`` the sum over the candidates) has the derivatives
        ``w^(n) = (phi^(n) - sum_{k=1..n} C(n, k) s^(k) w^(n-k)) / s``, written out up to
        order two; ``phi^(k)`` carries the chain factor ``1 / h^k``.
        """
        axis = self.axes[d]
        idx, valid = axis.candidates(x)
        if axis.n == 1:
            ones = valid.to(x.dtype) + 0 * x.unsqueeze(1)
            return idx, valid, [ones] + [torch.zeros_like(ones)] * order
        c = axis.centres.to(x.dtype)[idx]
        z = (x.unsqueeze(1) - c) / axis.half_width  # (N, m)
        if order > 2:
            return idx, valid, self._normalised_windows(self.window.derivatives(z, order), valid, axis)
        phi, p1, p2 = self.window(z)
        if axis.limit < axis.n:  # switched-off centres (``valid`` is False there) leave the sums
            on = valid.to(x.dtype)
            phi, p1, p2 = phi * on, p1 * on, p2 * on
        inv_h = 1.0 / axis.half_width
        p1, p2 = p1 * inv_h, p2 * inv_h**2
        s, s1, s2 = phi.sum(1, keepdim=True), p1.sum(1, keepdim=True), p2.sum(1, keepdim=True)
        w = [phi / s]
        if order >= 1:
            w.append(p1 / s - phi * s1 / s**2)
        if order >= 2:
            w.append(p2 / s - 2 * p1 * s1 / s**2 - phi * s2 / s**2 + 2 * phi * s1**2 / s**3)
        return idx, valid, w

    @staticmethod
    def _normalised_windows(p: list, valid: torch.Tensor, axis: Axis) -> list:
        """``w = phi / sum(phi)`` and its x-derivatives to any order from the z-derivatives
        ``p`` (N, m) of the windows at the candidates, by the Leibniz recurrence."""
        if axis.limit < axis.n:  # switched-off centres (``valid`` is False there) leave the sums
            on = valid.to(p[0].dtype)
            p = [q * on for q in p]
        inv_h = 1.0 / axis.half_width
        p = [q * inv_h**k for k, q in enumerate(p)]
        s = [q.sum(1, keepdim=True) for q in p]
        w = []
        for n, q in enumerate(p):
            for k in range(1, n + 1):
                q = q - math.comb(n, k) * s[k] * w[n - k]
            w.append(q / s[0])
        return w

    def pairs(self, x: torch.Tensor, orders):
        """All (point, subdomain) pairs with ``x`` inside the subdomain's support.

        Parameters
        ----------
        x : (N, d) points.
        orders : derivative multi-indices (sorted axis tuples) wanted of the windows.

        Returns
        -------
        point : (P,) long, point index of each pair.
        sub : (P,) long, global subdomain index.
        win : (K, P) normalised window and its derivatives, in the order of ``orders``.
        """
        n = x.shape[0]
        counts = [multi_index_counts(o, self.dim) for o in orders]
        max_order = max((max(c) for c in counts), default=0)
        per_axis = [self.axis_windows(d, x[:, d], max_order) for d in range(self.dim)]
        # Cartesian product of the per-axis candidates: (N, m_0, ..., m_{d-1}) flattened.
        sub = torch.zeros(n, 1, dtype=torch.long)
        valid = torch.ones(n, 1, dtype=torch.bool)
        wins = [torch.ones(n, 1, dtype=x.dtype) for _ in orders]
        for d, (idx, ok, w) in enumerate(per_axis):
            m = sub.shape[1] * idx.shape[1]  # explicit: with no points (an empty rank) -1 is ambiguous
            sub = (sub.unsqueeze(2) + idx.unsqueeze(1) * self.strides[d]).reshape(n, m)
            valid = (valid.unsqueeze(2) & ok.unsqueeze(1)).reshape(n, m)
            wins = [(wk.unsqueeze(2) * w[c[d]].unsqueeze(1)).reshape(n, m) for wk, c in zip(wins, counts)]
        point, slot = valid.nonzero(as_tuple=True)
        return point, sub[point, slot], torch.stack([w[point, slot] for w in wins])


def config_levels(cfg, problem) -> list[Level]:
    """The levels of ``cfg``'s decomposition over ``problem``'s domain."""
    dec = cfg.decomposition
    return [Level(problem.domain, shape, dec.overlap, dec.window) for shape in dec.level_shapes()]
