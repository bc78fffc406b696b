"""A fine fixed-step integrator for reference solutions of ordinary differential equations.

:func:`rk4` integrates ``y' = f(t, y)`` with the classical fourth-order Runge-Kutta method in
float64, with ``substeps`` steps between consecutive output times, so that its error (of order
``h^4``) lies far below the errors it is used to measure.  Used by the ODE problems' ``reference``.
"""

from __future__ import annotations

import numpy as np


def rk4(f, y0, times, substeps: int = 200) -> np.ndarray:
    """The solution of ``y' = f(t, y)``, ``y(times[0]) = y0``, at ``times`` (increasing): (len(times), len(y0)).

    ``f(t, y)`` takes and returns float64 arrays of the shape of ``y0``."""
    times = np.asarray(times, dtype=np.float64)
    y = np.asarray(y0, dtype=np.float64).copy()
    out = np.empty((len(times), len(y)))
    out[0] = y
    for i in range(1, len(times)):
        t, h = times[i - 1], (times[i] - times[i - 1]) / substeps
        for _ in range(substeps):
            k1 = f(t, y)
            k2 = f(t + h / 2, y + h / 2 * k1)
            k3 = f(t + h / 2, y + h / 2 * k2)
            k4 = f(t + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t += h
        out[i] = y
    return out
