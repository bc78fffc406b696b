"""Wave sources: the Ricker wavelet, a unit-integral Gaussian, point sources and 1-D exact solutions.

A point source forces the acoustic wave equation as

    u_tt = c(x)^2 Δu + f(x, t),    f(x, t) = A R(t) G(x - x_s),

with ``R`` the Ricker wavelet of peak frequency ``frequency`` (cycles per unit time) and
delay ``t0`` (time units), and ``G`` a Gaussian of width ``w`` (space units) whose
integral over space is 1, so that ``A`` is the source's strength: the forcing's
integral over space at time t is ``A R(t)``.  The forcing has the units of ``u`` per
time squared.

Every function here accepts numpy arrays (or floats) and torch tensors and answers
in the same kind, so one source serves the finite-difference reference
(:mod:`fbpinn.reference.wave`, on numpy meshes) and a PINN residual (on tensors).

:func:`exact_1d` is the exact solution of the forced 1-D problem with constant speed
and zero initial data, in an unbounded medium or between fixed ends at ``x = ±1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _lib(x):
    """torch for tensors, numpy otherwise (the rule of ``Wave2d.speed``)."""
    return torch if isinstance(x, torch.Tensor) else np


def ricker(t, frequency: float, delay: float):
    """The Ricker wavelet ``(1 - 2 π² f² (t - t0)²) exp(-π² f² (t - t0)²)``.

    ``frequency`` f is the peak frequency of its spectrum (cycles per unit time),
    ``delay`` t0 the time of its peak, where it equals 1; it is dimensionless.
    ``|R(0)|`` is 1.9e-5 for ``t0 = 1.2 / f`` and 1.1e-8 for ``t0 = 1.5 / f``: a delay of
    that size makes a quiet start."""
    lib = _lib(t)
    a = (math.pi * frequency * (t - delay)) ** 2
    return (1 - 2 * a) * lib.exp(-a)


def gaussian(*offsets, width: float):
    """The unit-integral Gaussian ``exp(-r² / (2 w²)) / (2 π w²)^(d/2)`` in d dimensions.

    ``offsets`` are the d coordinates minus the centre's (arrays or tensors of one
    shape), ``r²`` the sum of their squares, ``width`` w the standard deviation (space
    units).  The result has units of 1 / length^d."""
    if not offsets:
        raise ValueError("gaussian needs at least one coordinate offset")
    if not width > 0:
        raise ValueError(f"the Gaussian's width must be positive, got {width}")
    lib = _lib(offsets[0])
    r2 = sum(o * o for o in offsets)
    return lib.exp(-r2 / (2 * width * width)) / (2 * math.pi * width * width) ** (len(offsets) / 2)


@dataclass(frozen=True)
class PointSource:
    """A Ricker-in-time, Gaussian-in-space source ``f(x, t) = A R(t) G(x - position)``.

    ``position`` has one coordinate per spatial axis; ``frequency`` and ``delay`` are
    those of :func:`ricker`, ``width`` that of :func:`gaussian`, ``amplitude`` A.
    Calling it, ``f(*coords, t)``, evaluates the forcing; :meth:`profile` and
    :meth:`wavelet` are its two factors, which is the separable form the
    finite-difference solver takes (``forcing=source`` or ``(source.profile,
    source.wavelet)``)."""

    position: tuple
    frequency: float
    delay: float
    width: float
    amplitude: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "position", tuple(float(p) for p in np.atleast_1d(self.position)))
        for name in ("frequency", "width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"the source's {name} must be positive, got {getattr(self, name)}")

    def profile(self, *coords):
        """``A G(x - position)``, the spatial factor, on arrays or tensors of one shape."""
        if len(coords) != len(self.position):
            raise ValueError(f"the source at {self.position} needs {len(self.position)} coordinates, "
                             f"got {len(coords)}")
        return self.amplitude * gaussian(*(x - p for x, p in zip(coords, self.position)), width=self.width)

    def wavelet(self, t):
        """``R(t)``, the time factor (:func:`ricker`)."""
        return ricker(t, self.frequency, self.delay)

    def __call__(self, *coords_and_t):
        """``A R(t) G(x - position)`` at ``(*coords, t)``."""
        *coords, t = coords_and_t
        return self.profile(*coords) * self.wavelet(t)

    def describe(self) -> dict:
        """The source as plain JSON data, for a cache key (:func:`fbpinn.reference.wave.cached_solve`)."""
        return {"type": "ricker-gaussian", "position": list(self.position), "frequency": self.frequency,
                "delay": self.delay, "width": self.width, "amplitude": self.amplitude}


def point_source(position, frequency: float, delay: float, width: float, amplitude: float = 1.0) -> PointSource:
    """The :class:`PointSource` ``f(*coords, t) = amplitude * ricker(t) * gaussian(coords - position)``."""
    return PointSource(position, frequency, delay, width, amplitude)


WALLS = (-1.0, 1.0)  # the fixed ends of exact_1d(walls=True)


def _images(source: PointSource, walls: bool, reach: float):
    """(centre, sign) of the source and, with walls, its images within ``reach`` of [-1, 1].

    The odd extension about x = 1 maps x0 to 2 - x0, about x = -1 to -2 - x0; together
    they generate a period of 4: +1 at x0 + 4k and -1 at 2 - x0 + 4k."""
    x0 = source.position[0]
    if not walls:
        return [(x0, 1.0)]
    n = math.ceil((reach + 3.0) / 4.0) + 1
    out = []
    for k in range(-n, n + 1):
        for centre, sign in ((x0 + 4 * k, 1.0), (2 - x0 + 4 * k, -1.0)):
            if -1 - reach <= centre <= 1 + reach:
                out.append((centre, sign))
    return out


def imaged_profile(x, source: PointSource, reach: float = 0.0):
    """The spatial forcing of the walled problem that :func:`exact_1d` solves exactly.

    ``A Σ_k [G(x - x0 - 4k) - G(x - 2 + x0 - 4k)]``: the source's profile extended
    odd about both walls, so zero at ``x = ±1``.  Inside [-1, 1] it differs from the
    plain profile only by the images' tails, at most about ``A G(d)`` with d the
    source's distance to the nearer wall.  Images centred more than ``reach`` + 10
    widths outside [-1, 1] are left out (below 1e-22 of the peak there)."""
    if len(source.position) != 1:
        raise ValueError(f"imaged_profile is 1-D; the source at {source.position} is not")
    return sum(sign * source.amplitude * gaussian(x - centre, width=source.width)
               for centre, sign in _images(source, True, reach + 10 * source.width))


def exact_1d(x, t, c: float, source: PointSource, walls: bool = False, nodes: int = 200):
    """The exact solution of ``u_tt = c² u_xx + A R(t) G(x - x0)`` with ``u = u_t = 0`` at t = 0.

    Unbounded medium (``walls=False``): by Duhamel's principle and d'Alembert's formula

        u(x, t) = 1/(2c) ∫_0^t A R(τ) ∫_{x - c(t-τ)}^{x + c(t-τ)} G(ξ - x0) dξ dτ,

    and the inner integral is ``(erf((x + c s - x0)/(√2 w)) - erf((x - c s - x0)/(√2 w))) / 2``
    with ``s = t - τ``.  The outer integral is done by Gauss-Legendre quadrature with
    ``nodes`` nodes over the part of [0, t] where the wavelet exceeds 1e-30
    (``|τ - t0| ≤ 2.7 / f``); the integrand is smooth, so 200 nodes reach rounding
    level for ``c / (w f)`` up to about 50.

    Fixed ends (``walls=True``): ``u = 0`` at ``x = ±1``, the sum over the method of
    images, +1 at ``x0 + 4k`` and -1 at ``2 - x0 + 4k``, which solves the problem on
    [-1, 1] with forcing ``A R(t)`` times :func:`imaged_profile` (the plain profile up
    to the images' tails).

    ``x`` and ``t`` broadcast together (arrays or tensors; the answer is of their
    kind, computed in float64); ``c`` is constant and positive.
    """
    if len(source.position) != 1:
        raise ValueError(f"exact_1d is 1-D; the source at {source.position} is not")
    if not c > 0:
        raise ValueError(f"exact_1d needs a positive constant speed, got c={c}")
    back = None
    if isinstance(x, torch.Tensor) or isinstance(t, torch.Tensor):
        ref = x if isinstance(x, torch.Tensor) else t
        back = (ref.dtype, ref.device)
        x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else x
        t = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else t
    x, t = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64))
    if np.any(t < 0):
        raise ValueError("exact_1d is defined for t >= 0")
    t_max = float(t.max()) if t.size else 0.0
    images = _images(source, walls, c * t_max + 10 * source.width)
    # quadrature in tau over [lo, hi] ∩ [0, t]: per point, map the nodes onto it
    z, wq = np.polynomial.legendre.leggauss(nodes)
    spread = 2.7 / source.frequency
    lo = np.clip(source.delay - spread, 0.0, t)
    hi = np.clip(source.delay + spread, 0.0, t)
    half = (hi - lo)[..., None] / 2
    tau = (lo + hi)[..., None] / 2 + half * z
    s = t[..., None] - tau
    xs = x[..., None]
    scale = math.sqrt(2.0) * source.width
    inner = 0.0
    erf = torch.special.erf
    for centre, sign in images:
        a = torch.from_numpy((xs + c * s - centre) / scale)
        b = torch.from_numpy((xs - c * s - centre) / scale)
        inner = inner + sign * 0.5 * (erf(a) - erf(b)).numpy()
    u = (half[..., 0] * ((wq * source.wavelet(tau)) * inner).sum(-1)) * source.amplitude / (2 * c)
    if back is not None:
        return torch.as_tensor(u, dtype=back[0], device=back[1])
    return u
