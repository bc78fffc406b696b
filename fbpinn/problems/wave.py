"""Acoustic wave equations.

``wave1d``: a string fixed at both ends,

    u_tt = c^2 u_xx,   x in [-1, 1],   t in [0, t_max],
    u(x, 0) = exp(-(x - x0)^2 / (2 w^2)),   u_t(x, 0) = 0,   u(-1, t) = u(1, t) = 0.

The exact solution is d'Alembert's ``u = (g(x - ct) + g(x + ct)) / 2`` with ``g`` the
initial pulse extended oddly about both ends (period 4), so the two halves of the
pulse reflect from the walls with a change of sign.  The ansatz

    u = sech(t / sigma)^2 u0(x) + tanh(t / sigma)^2 (1 - x^2) u_hat

makes the initial displacement, the zero initial velocity and the fixed ends hold
exactly (``u0`` is the extended pulse, which vanishes at the walls).  The initial
pulse fades from the ansatz over a time ``sigma``, so an untrained network starts
from a quiet field rather than a pulse that stays put.

``wave2d``: a pulse in an open medium,

    u_tt = c(x, y)^2 (u_xx + u_yy),   (x, y) in [-1, 1]^2,   t in [0, t_max],
    u(x, y, 0) = exp(-|(x, y) - p0|^2 / (2 w^2)),   u_t(x, y, 0) = 0,

with the speed ``c`` constant or a smooth mixture of Gaussian bumps,
``c = c0 (1 + sum_k a_k exp(-|(x, y) - m_k|^2 / (2 s_k^2)))``.  The ansatz
``u = A + tanh(t / sigma)^2 u_hat`` makes the initial conditions hold exactly, with

- ``ansatz = "pulse"``: ``A = sech(t / sigma)^2 u0``, the pulse fading out;
- ``ansatz = "taylor"``: ``A = exp(-(t / fade)^4) (u0 + t^2 / 2 c^2 lap u0)``, the
  second-order Taylor expansion of the solution in t (``u_tt = c^2 lap u0`` at t = 0,
  and ``u_ttt = 0``), faded out by a window flat to fourth order.

The network must supply ``(u - A) / tanh(t / sigma)^2``.  With the pulse ansatz that
target is ``u0 + sigma^2 c^2 lap u0 / 2`` at t = 0, about -24 at the centre for
``w = 0.2`` and ``sigma = 1``, and any error in it enters the residual multiplied by
``2 / sigma^2``: a small sigma amplifies errors and a large one asks for large outputs.
The Taylor ansatz's residual vanishes at t = 0, so the target goes to zero there and
stays of order one (about 1 for sigma = 0.3, 2.5 for 0.5).

The medium extends beyond the square.  Inside a box, the initial data alone do not
determine the solution away from the centre (waves could enter through the sides),
and a network trained on the equation alone drifts to such solutions.  A soft
absorbing condition on the sides selects the outgoing solution (n the outward normal,
s the coordinate along the side; Engquist and Majda's one-way approximations):

- ``absorbing_order = 1``: ``u_t + c u_n = 0``, exact for waves leaving at normal
  incidence; a plane wave leaving at an angle theta to the normal is reflected with
  amplitude ``(1 - cos theta) / (1 + cos theta)`` (0.17 at 45 degrees);
- ``absorbing_order = 2``: ``c u_nt + u_tt - c^2 / 2 u_ss = 0``, which replaces
  ``cos theta`` by ``1 - sin^2 theta / 2`` and reflects
  ``|cos theta - 1 + sin^2 theta / 2| / (cos theta + 1 - sin^2 theta / 2)`` (0.03 at 45
  degrees), at the price of second derivatives on the sides.
There is no closed-form solution: the reference is the finite-difference solution of
:mod:`fbpinn.reference.wave` on a padded domain (the unbounded medium), cached to HDF5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import media, sources
from ..registry import register
from . import SCALE, WEIGHT_MAX, Params, Problem, Term


SOURCES = ("pulse", "ricker")


@dataclass
class SourceParams(Params):
    """What starts the waves: the initial pulse, or a point source (module docstring)."""

    source: str = "pulse"  # pulse: the initial pulse released at rest; ricker: a point source, quiet start
    frequency: float = 5.0  # ricker: peak frequency of the wavelet
    delay: float | None = None  # ricker: time of the wavelet's peak (default 1.5 / frequency: a quiet start)
    source_width: float = 0.05  # ricker: width of the source's Gaussian in space
    amplitude: float = 1.0  # ricker: strength A (the forcing's integral over space peaks at A)

    def check_source(self):
        """``(key, message)`` for a bad source setting, or None."""
        if self.source not in SOURCES:
            return "source", f"must be one of {', '.join(SOURCES)}, got {self.source!r}"
        bad = (self.first_not_positive("frequency", "source_width")
               or self.first_out_of_range(1 / SCALE, SCALE, "frequency", "source_width")
               or self.first_out_of_range(-SCALE, SCALE, "amplitude"))
        if bad:
            return bad
        if self.delay is not None and not 0 <= self.delay <= SCALE:
            return "delay", f"must lie in [0, {SCALE:g}], got {self.delay}"
        return None

    def point_source(self, position) -> sources.PointSource | None:
        """The Ricker point source at ``position`` (None for the initial pulse)."""
        if self.source != "ricker":
            return None
        delay = 1.5 / self.frequency if self.delay is None else self.delay
        return sources.point_source(position, self.frequency, delay, self.source_width, self.amplitude)


@dataclass
class Wave1dParams(SourceParams):
    c: float = 1.0  # wave speed
    x0: float = 0.0  # centre of the initial pulse
    width: float = 0.1  # standard deviation w of the initial pulse
    t_max: float = 2.0
    sigma: float = 0.1  # time over which the ansatz hands over from the initial pulse to the network
    ansatz: str = "pulse"  # pulse | taylor: what the ansatz carries from the initial data (module docstring)
    fade: float = 0.2  # taylor: time over which the Taylor expansion fades out

    def validate(self):
        bad = (super().validate() or self.first_not_positive("c", "width", "t_max", "sigma", "fade")
               or self.first_out_of_range(1 / SCALE, SCALE, "c", "width", "t_max", "sigma", "fade")
               or self.check_source())
        if bad:
            return bad
        if self.ansatz not in ANSATZES:
            return "ansatz", f"must be one of {', '.join(ANSATZES)}, got {self.ansatz!r}"
        width, what = (self.width, "width") if self.source == "pulse" else (self.source_width, "source_width")
        if not -1 + 6 * width <= self.x0 <= 1 - 6 * width:
            return "x0", (f"must keep the {self.source} clear of the walls: |x0| <= 1 - 6 {what} = "
                          f"{1 - 6 * width:g}, got {self.x0}")
        return None


@register("problem", "wave1d")
class Wave1d(Problem):
    """1-D wave equation ``u_tt = c^2 u_xx`` with fixed ends and a pulse released at rest."""

    axes = ("x", "t")
    needs = ("u_tt", "u_xx")
    Params = Wave1dParams
    has_constraint = True

    @property
    def lo(self):
        return (-1.0, 0.0)

    @property
    def hi(self):
        return (1.0, self.p.t_max)

    def _pulse(self, x, curvature: bool = False):
        """The initial pulse extended oddly about x = -1 and x = 1 (period 4); with ``curvature``,
        its second derivative instead."""
        s = torch.remainder(x + 1, 4.0) - 1  # in [-1, 3)
        mirrored = s > 1
        s = torch.where(mirrored, 2 - s, s)  # reflect [1, 3) onto (-1, 1]
        z = (s - self.p.x0) / self.p.width
        g = torch.exp(-0.5 * z * z)
        if curvature:
            g = g * (z * z - 1) / self.p.width**2
        return torch.where(mirrored, -g, g)

    def constraint(self, x):
        t = x[:, 1]
        ramp = torch.tanh(t / self.p.sigma) ** 2
        walls = 1 - x[:, 0] ** 2
        if self.source is not None:  # a quiet start: nothing to carry
            return torch.zeros_like(ramp), ramp * walls
        if self.p.ansatz == "taylor":  # u0 + t^2/2 c^2 u0'', faded out, as wave2d's
            fade = torch.exp(-((t / self.p.fade) ** 4))
            taylor = self._pulse(x[:, 0]) + 0.5 * t * t * self.p.c**2 * self._pulse(x[:, 0], curvature=True)
            return fade * taylor, ramp * walls
        return (1 - ramp) * self._pulse(x[:, 0]), ramp * walls

    @property
    def source(self) -> sources.PointSource | None:
        return self.p.point_source((self.p.x0,))

    def forcing(self, x):
        """The point source's forcing at points ``x`` (x, t): its profile extended odd about the
        walls (:func:`fbpinn.sources.imaged_profile`, for which the exact solution is exact)."""
        src = self.source
        return sources.imaged_profile(x[:, 0], src) * src.wavelet(x[:, 1])

    def residual(self, x, d):
        r = d["u_tt"] - self.p.c**2 * d["u_xx"]
        return r if self.source is None else r - self.forcing(x)

    def exact(self, x):
        x = x.double()
        if self.source is not None:
            return sources.exact_1d(x[:, 0], x[:, 1], self.p.c, self.source, walls=True)
        ct = self.p.c * x[:, 1]
        return 0.5 * (self._pulse(x[:, 0] - ct) + self._pulse(x[:, 0] + ct))


def _default_mixture():
    # (x, y, amplitude, width): a fast bump, a slow one and a weaker fast one.
    return [[0.4, 0.4, 0.5, 0.25], [-0.5, 0.2, -0.35, 0.2], [0.1, -0.6, 0.3, 0.3]]


VELOCITIES = ("constant", "mixture")
MIXTURE_MAX = 1000  # bumps of the mixture medium
BOUNDARY_POINTS_MAX = 100_000  # absorbing-term points per side and along t
REFERENCE_NODES_MAX = 10**8  # nodes of the finite-difference reference grid: 0.8 GB per array
ANSATZES = ("pulse", "taylor")


@dataclass
class Wave2dParams(SourceParams):
    c0: float = 1.0  # background speed
    velocity: str = "constant"  # constant | mixture | a gridded model: "model.npy" or "model.h5:/dataset"
    velocity_grid: list[list[float]] | None = None  # a .npy model's [[x_0, x_last], [y_0, y_last]]
    velocity_sha256: str = ""  # a gridded model's file hash: checked if given, recorded if not
    mixture: list[list[float]] = field(default_factory=_default_mixture)  # [x, y, amplitude, width] per bump
    x0: float = 0.0  # centre of the initial pulse
    y0: float = 0.0
    width: float = 0.1  # standard deviation w of the initial pulse
    t_max: float = 1.0
    sigma: float = 0.1  # time over which the ansatz hands over from the initial pulse to the network
    ansatz: str = "pulse"  # pulse | taylor: what the ansatz carries from the initial data (module docstring)
    fade: float = 0.2  # taylor: time over which the Taylor expansion fades out
    reference_h: float = 0.01  # largest grid spacing of the finite-difference reference
    absorbing_weight: float = 1.0  # weight of the absorbing condition on the sides (0: none)
    absorbing_order: int = 1  # 1: u_t + c u_n = 0; 2: c u_nt + u_tt - c^2/2 u_ss = 0 (module docstring)
    boundary_points: list[int] = field(default_factory=lambda: [32, 16])  # per side: along it, along t

    def validate(self):
        from ..config import reading_stored

        bad = (super().validate() or self.first_not_positive("c0", "width", "t_max", "sigma", "fade", "reference_h")
               or self.check_source())
        if bad:
            return bad
        if self.ansatz not in ANSATZES:
            return "ansatz", f"must be one of {', '.join(ANSATZES)}, got {self.ansatz!r}"
        if self.absorbing_weight < 0:
            return "absorbing_weight", f"must be >= 0, got {self.absorbing_weight}"
        if self.absorbing_order not in (1, 2):
            return "absorbing_order", f"must be 1 or 2, got {self.absorbing_order!r}"
        if len(self.boundary_points) != 2 or min(self.boundary_points) < 2:
            return "boundary_points", f"must be two counts >= 2 (along each side, along t), got {self.boundary_points}"
        if max(self.boundary_points) > BOUNDARY_POINTS_MAX:
            return "boundary_points", f"must be two counts in 2..{BOUNDARY_POINTS_MAX}, got {self.boundary_points}"
        if self.is_gridded():
            bad = None if reading_stored() else self._check_model()  # a stored config's model was checked
            if bad:
                return bad
        elif self.velocity_grid is not None:
            return "velocity_grid", f"is the grid of a gridded model (a .npy file); velocity = {self.velocity!r} " \
                                    "has none, leave it out"
        for k, bump in enumerate(self.mixture):
            if not (isinstance(bump, list) and len(bump) == 4 and all(isinstance(v, (int, float)) for v in bump)):
                return "mixture", f"entry {k} must be [x, y, amplitude, width], got {bump!r}"
            if not bump[3] > 0:
                return "mixture", f"entry {k}: the width must be positive, got {bump[3]}"
            if not bump[2] > -1:
                return "mixture", f"entry {k}: an amplitude <= -1 could make the speed vanish, got {bump[2]}"
            if not (max(abs(v) for v in bump) <= SCALE and bump[3] >= 1 / SCALE):
                return "mixture", f"entry {k}: every value must lie in [-{SCALE:g}, {SCALE:g}] and the width be >= " \
                                  f"{1 / SCALE:g}, got {bump!r}"
        if len(self.mixture) > MIXTURE_MAX:
            return "mixture", f"must hold at most {MIXTURE_MAX} bumps, got {len(self.mixture)}"
        if not sum(min(bump[2], 0) for bump in self.mixture) > -1:
            return "mixture", "the negative amplitudes must sum to more than -1, or the speed could vanish where " \
                              "the bumps overlap"
        if not (abs(self.x0) < 1 and abs(self.y0) < 1):
            return "x0" if abs(self.x0) >= 1 else "y0", "the pulse centre must lie inside (-1, 1)^2"
        bad = (self.first_out_of_range(1 / SCALE, SCALE, "c0", "width", "t_max", "sigma", "fade", "reference_h")
               or self.first_out_of_range(0, WEIGHT_MAX, "absorbing_weight"))
        if bad:
            return bad
        # The finite-difference reference covers [-1 - c_max t_max, 1 + c_max t_max]^2 with a
        # spacing of at most reference_h (and of at most the test grid's, at most 2).
        c_max = self.c0 * (1 + sum(max(b[2], 0) for b in self.mixture) if self.velocity == "mixture" else 1)
        if self.velocity not in VELOCITIES:
            if reading_stored():  # checked when the run started
                return None
            c_max = gridded(self).extremes()[1]
        nodes = ((2 + 2 * c_max * self.t_max) / min(self.reference_h, 2.0)) ** 2
        if nodes > REFERENCE_NODES_MAX:
            return "reference_h", (f"the finite-difference reference would need at least {nodes:.3g} grid nodes "
                                   f"(over {8 * nodes / 1e9:.3g} GB per array; the limit is {REFERENCE_NODES_MAX:.0e}): "
                                   "raise reference_h, or lower t_max or the speed")
        return None


    def is_gridded(self) -> bool:
        """Whether the speed is a gridded model read from a file."""
        return self.velocity not in VELOCITIES

    def resolve_paths(self, base) -> None:
        if self.is_gridded() and self.velocity.strip():
            path, dataset = media.split_source(self.velocity)
            path = path.expanduser()
            path = path if path.is_absolute() else Path(base) / path
            self.velocity = str(path.resolve()) + (f":{dataset}" if dataset else "")

    def _check_model(self):
        """``("velocity", message)`` unless the gridded model loads, is valid and covers the domain;
        records (or checks) its file's SHA-256."""
        if not self.velocity.strip():
            return "velocity", f"must be one of {', '.join(VELOCITIES)} or name a gridded model (model.npy, " \
                               "model.h5:/dataset), got ''"
        try:
            model = gridded(self)
        except media.MediumError as e:
            return "velocity", str(e)
        if self.velocity_sha256 and self.velocity_sha256 != model.sha256:
            return "velocity_sha256", (f"{media.split_source(self.velocity)[0]} has SHA-256 {model.sha256}, not "
                                       f"{self.velocity_sha256}: the model file changed (remove the key to accept it)")
        self.velocity_sha256 = model.sha256
        if not model.values.max() <= SCALE * self.c0 or not model.values.min() >= self.c0 / SCALE:
            return "velocity", (f"the model's speeds {model.values.min():g} .. {model.values.max():g} must lie within "
                                f"[c0 / {SCALE:g}, {SCALE:g} c0] (c0 = {self.c0:g} only sets this range here)")
        return None


_MODELS = {}  # (source, grid, file size, mtime) -> GriddedSpeed: each model is read once


def gridded(params) -> media.GriddedSpeed:
    """The gridded model that ``params.velocity`` names, loaded once per file version and checked
    to cover the domain [-1, 1]^2 (:class:`fbpinn.media.MediumError` otherwise)."""
    path, _ = media.split_source(params.velocity)
    try:
        stat = path.stat()
    except OSError:
        raise media.MediumError(f"{path}: no such file") from None
    grid = None if params.velocity_grid is None else tuple(tuple(p) for p in params.velocity_grid)
    key = (params.velocity, grid, stat.st_size, stat.st_mtime_ns)
    if key not in _MODELS:
        _MODELS[key] = media.load(params.velocity, params.velocity_grid, ((-1.0, -1.0), (1.0, 1.0)))
    return _MODELS[key]


@register("problem", "wave2d")
class Wave2d(Problem):
    """2-D acoustic wave equation ``u_tt = c(x, y)^2 (u_xx + u_yy)``, a pulse released at rest."""

    axes = ("x", "y", "t")
    needs = ("u_tt", "u_xx", "u_yy")
    Params = Wave2dParams
    has_constraint = True

    @property
    def lo(self):
        return (-1.0, -1.0, 0.0)

    @property
    def hi(self):
        return (1.0, 1.0, self.p.t_max)

    def speed(self, x, y):
        """c at coordinates ``x``, ``y`` (torch tensors or numpy arrays of one shape)."""
        if self.p.is_gridded():
            return gridded(self.p)(x, y)
        lib = torch if isinstance(x, torch.Tensor) else np
        c = self.p.c0 + 0 * x
        if self.p.velocity == "mixture":
            bumps = sum(a * lib.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * s * s))
                        for mx, my, a, s in self.p.mixture)
            c = self.p.c0 * (1 + bumps)
        return c

    def initial(self, x, y):
        """The initial pulse at coordinates ``x``, ``y`` (torch tensors or numpy arrays)."""
        lib = torch if isinstance(x, torch.Tensor) else np
        return lib.exp(-((x - self.p.x0) ** 2 + (y - self.p.y0) ** 2) / (2 * self.p.width**2))

    @property
    def source(self) -> sources.PointSource | None:
        return self.p.point_source((self.p.x0, self.p.y0))

    def constraint(self, x):
        t = x[:, 2]
        ramp = torch.tanh(t / self.p.sigma) ** 2
        if self.source is not None:  # a quiet start: nothing to carry
            return torch.zeros_like(ramp), ramp
        u0 = self.initial(x[:, 0], x[:, 1])
        if self.p.ansatz == "pulse":
            return (1 - ramp) * u0, ramp
        # u0 + t^2/2 u_tt(0), with u_tt(0) = c^2 laplacian(u0) for the Gaussian pulse
        w2 = self.p.width**2
        r2 = (x[:, 0] - self.p.x0) ** 2 + (x[:, 1] - self.p.y0) ** 2
        lap = u0 * (r2 / w2 - 2) / w2
        c = self.speed(x[:, 0], x[:, 1])
        fade = torch.exp(-((t / self.p.fade) ** 4))
        return fade * (u0 + 0.5 * t * t * c * c * lap), ramp

    def residual(self, x, d):
        c = self.speed(x[:, 0], x[:, 1])
        r = d["u_tt"] - c * c * (d["u_xx"] + d["u_yy"])
        src = self.source
        return r if src is None else r - src(x[:, 0], x[:, 1], x[:, 2])

    def terms(self, generator):
        """The absorbing condition on a grid of points on the four sides (corners left out)."""
        if self.p.absorbing_weight == 0:
            return []
        n_side, n_t = self.p.boundary_points
        s = torch.linspace(-1, 1, n_side + 2, dtype=torch.float64)[1:-1]
        t = torch.linspace(0, self.p.t_max, n_t, dtype=torch.float64)
        ss, tt = (m.reshape(-1) for m in torch.meshgrid(s, t, indexing="ij"))
        edge = torch.ones_like(ss)
        sides = [torch.stack([e * edge, ss, tt], 1) for e in (-1.0, 1.0)]
        sides += [torch.stack([ss, e * edge, tt], 1) for e in (-1.0, 1.0)]
        x = torch.cat(sides).to(self.dtype)  # (4 n_side n_t, 3)
        if self.p.absorbing_order == 1:
            return [Term("absorbing", x, ("u_t", "u_x", "u_y"), self._absorbing, self.p.absorbing_weight)]
        needs = ("u_tt", "u_xt", "u_yt", "u_xx", "u_yy")
        return [Term("absorbing", x, needs, self._absorbing2, self.p.absorbing_weight)]

    @staticmethod
    def _normal(x):
        """Outward normal (nx, ny) of the side each point lies on."""
        nx = torch.where(x[:, 0].abs() >= 1, torch.sign(x[:, 0]), torch.zeros_like(x[:, 0]))
        ny = torch.where(x[:, 1].abs() >= 1, torch.sign(x[:, 1]), torch.zeros_like(x[:, 1]))
        return nx, ny

    def _absorbing(self, x, d):
        """u_t + c du/dn with n the outward normal of the side a point lies on."""
        nx, ny = self._normal(x)
        return d["u_t"] + self.speed(x[:, 0], x[:, 1]) * (nx * d["u_x"] + ny * d["u_y"])

    def _absorbing2(self, x, d):
        """c u_nt + u_tt - c^2/2 u_ss (s along the side): the second-order condition."""
        nx, ny = self._normal(x)
        c = self.speed(x[:, 0], x[:, 1])
        u_ss = ny.abs() * d["u_xx"] + nx.abs() * d["u_yy"]  # on an x-side, s = y
        return c * (nx * d["u_xt"] + ny * d["u_yt"]) + d["u_tt"] - 0.5 * c * c * u_ss

    def reference(self, axes):
        xs, ys, ts = (a.double().numpy() for a in axes)
        return torch.from_numpy(np.ascontiguousarray(self._reference(xs, ys, ts)))  # (n_x, n_y, n_t)

    def reference_traces(self, positions, times, axes):
        xs, ys, _ = (a.double().numpy() for a in axes)
        return self._reference(xs, ys, np.asarray(times, dtype=np.float64), points=positions)  # (R, T)

    def _reference(self, xs, ys, ts, points=None):
        """The finite-difference solution on the grid of ``xs``, ``ys`` at times ``ts`` (or, with
        ``points``, its traces there), cached."""
        from ..reference import wave

        velocity = self.p.velocity
        if self.p.is_gridded():  # the model by its contents and grid, wherever the file is
            model = gridded(self.p)
            velocity = {"sha256": model.sha256, "lo": list(model.lo), "step": list(model.step)}
        key = {"problem": "wave2d", "c0": self.p.c0, "velocity": velocity,
               "mixture": self.p.mixture if self.p.velocity == "mixture" else [],
               "x0": self.p.x0, "y0": self.p.y0, "width": self.p.width, "max_h": self.p.reference_h,
               "axes": [[float(a[0]), float(a[-1]), len(a)] for a in (xs, ys, ts)]}
        src = self.source
        if src is not None:  # the same forcing, from rest
            key["source"] = src.describe()
        return wave.cached_solve(key, None, [xs, ys], ts, self.speed, self.initial if src is None else None,
                                 max_h=self.p.reference_h, forcing=src, points=points)

    reference_name = "finite differences, 4th order in space, 2nd in time (fbpinn.reference.wave)"

