"""The damped harmonic oscillator, forward and inverse.

    m u'' + mu u' + k u = 0,   t in [0, 1],   u(0) = 1,  u'(0) = 0

with m = 1, mu = 4, k = 400 (delta = mu / 2m = 2, omega0 = sqrt(k/m) = 20).  The
under-damped exact solution is

    u(t) = exp(-delta t) cos(omega t + phi) / cos(phi),
    omega = sqrt(omega0^2 - delta^2),  phi = arctan(-delta / omega).

Initial conditions are either hard, ``u = 1 + tanh(t/sigma)^2 * u_hat``, or soft, as
the penalty ``w0 (u(0) - 1)^2 + w1 u'(0)^2``.  Noisy observations of u on
``[0, obs_tmax]`` can be added as a data term; with ``physics = false`` the network is
fitted to them alone.  The inverse problem learns mu from those observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..registry import register
from . import SCALE, WEIGHT_MAX, Params, Problem, Term

CONSTRAINTS = ("hard", "soft", "none")
OBSERVATIONS_MAX = 10**7


@dataclass
class OscillatorParams(Params):
    m: float = 1.0
    mu: float = 4.0
    k: float = 400.0
    constraint: str = "hard"  # hard | soft | none
    sigma: float = 0.1  # width of the hard ansatz's tanh ramp
    ic_weights: list[float] = field(default_factory=lambda: [1e6, 1e2])  # soft: (u(0)-1)^2, u'(0)^2
    observations: int = 0  # number of observed points
    obs_tmax: float = 0.4  # observations lie on [0, obs_tmax]
    noise: float = 0.0  # standard deviation of the observation noise
    data_weight: float = 1e4
    learn_mu: bool = False
    mu_init: float = 0.0  # initial guess when mu is learned

    def has_data(self):
        return self.observations > 0 or self.constraint == "soft"

    def validate(self):
        bad = super().validate()
        if bad:
            return bad
        if self.constraint not in CONSTRAINTS:
            return "constraint", f"must be one of {', '.join(CONSTRAINTS)}"
        if self.m <= 0 or self.k <= 0:
            return "m" if self.m <= 0 else "k", "must be positive"
        bad = self.first_out_of_range(1 / SCALE, SCALE, "m", "k")
        if bad:
            return bad
        if not self.mu * self.mu < 4 * self.m * self.k:  # (mu**2 overflows with an error for |mu| > 1e154)
            return "mu", "must give an under-damped oscillator (mu^2 < 4 m k)"
        if self.observations < 0:
            return "observations", "must be >= 0"
        if not self.sigma > 0:
            return "sigma", f"must be positive, got {self.sigma}"
        if self.noise < 0 or self.data_weight <= 0:
            return ("noise", "must be >= 0") if self.noise < 0 else ("data_weight", "must be positive")
        if any(w < 0 for w in self.ic_weights):
            return "ic_weights", f"must be >= 0, got {self.ic_weights}"
        if not 0 < self.obs_tmax <= 1:
            return "obs_tmax", "must lie in (0, 1]"
        if len(self.ic_weights) != 2:
            return "ic_weights", "must hold two weights: for u(0) and for u'(0)"
        if self.learn_mu and self.observations == 0:
            return "observations", "must be > 0 when mu is learned"
        if not self.observations <= OBSERVATIONS_MAX:
            return "observations", f"must lie in 0..{OBSERVATIONS_MAX}, got {self.observations}"
        return (self.first_out_of_range(1 / SCALE, SCALE, "sigma")
                or self.first_out_of_range(-SCALE, SCALE, "mu_init")
                or self.first_out_of_range(0, SCALE, "noise")
                or self.first_out_of_range(0, WEIGHT_MAX, "ic_weights", "data_weight"))


@register("problem", "harmonic_oscillator")
class HarmonicOscillator(Problem):
    """Damped harmonic oscillator ``m u'' + mu u' + k u = 0`` with u(0) = 1, u'(0) = 0."""

    axes = ("t",)
    lo, hi = (0.0,), (1.0,)
    needs = ("u", "u_t", "u_tt")
    Params = OscillatorParams

    def __init__(self, params=None, dtype=torch.float64):
        super().__init__(params, dtype)
        self.mu = torch.tensor(float(self.p.mu_init if self.p.learn_mu else self.p.mu), dtype=dtype,
                               requires_grad=self.p.learn_mu)
        self._obs = None

    @property
    def has_constraint(self):
        return self.p.constraint == "hard"

    def constraint(self, x):
        t = x[:, 0]
        return torch.ones_like(t), torch.tanh(t / self.p.sigma) ** 2

    def residual(self, x, d):
        return self.p.m * d["u_tt"] + self.mu * d["u_t"] + self.p.k * d["u"]

    def exact(self, x):
        t = x[:, 0].double()
        delta = self.p.mu / (2 * self.p.m)
        omega = math.sqrt(self.p.k / self.p.m - delta**2)
        phi = math.atan(-delta / omega)
        return torch.exp(-delta * t) * torch.cos(omega * t + phi) / math.cos(phi)

    def observations(self):
        return self._obs

    def terms(self, generator):
        terms = []
        if self.p.constraint == "soft":
            x0 = torch.zeros(1, 1, dtype=self.dtype)
            w0, w1 = self.p.ic_weights
            terms.append(Term("ic_u", x0, ("u",), lambda x, d: d["u"], w0, torch.ones(1, dtype=self.dtype)))
            terms.append(Term("ic_ut", x0, ("u_t",), lambda x, d: d["u_t"], w1))
        if self.p.observations:
            t = torch.linspace(0.0, self.p.obs_tmax, self.p.observations, dtype=torch.float64)[:, None]
            u = self.exact(t) + self.p.noise * torch.randn(len(t), generator=generator, dtype=torch.float64)
            self._obs = (t, u)
            terms.append(Term("data", t.to(self.dtype), ("u",), lambda x, d: d["u"], self.p.data_weight,
                              u.to(self.dtype)))
        return terms

    def parameters(self):
        return {"mu": self.mu} if self.p.learn_mu else {}


@dataclass
class InverseParams(OscillatorParams):
    observations: int = 15
    noise: float = 0.01
    data_weight: float = 1e5
    learn_mu: bool = True


@register("problem", "harmonic_oscillator_inverse")
class HarmonicOscillatorInverse(HarmonicOscillator):
    """The oscillator with mu unknown, learned from noisy observations of u on [0, obs_tmax].

    The physics loss covers [0, 1]; the learned mu is reported (true value 4)."""

    Params = InverseParams
