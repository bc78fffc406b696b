"""Schedulers: which subdomains train at each step.

``all_active`` (the default) trains every subdomain at every step.

``time_marching`` trains the subdomain grid in slabs along the time axis ``t``, one
after another, for ``steps_per_slab`` steps each:

- slab k is the k-th of ``slabs`` consecutive groups of the time-centres;
- while slab k trains, slabs 0..k-1 are frozen (their parameters do not change) and
  later slabs are switched off: they are left out of the model and the time windows
  are normalised over the included centres only, so the model is a partition of
  unity over the region the included subdomains cover;
- the loss uses the collocation points with t below slab k's last centre plus 0.9
  half-widths (``EDGE``): nearer the edge of the support the last windows are so
  small that their normalised derivatives lose all precision in float32;
- and only those inside the support of slab k's subdomains, t above its first centre
  minus a half-width: below it the solution depends on frozen parameters alone, so
  those points' residuals are constants of the slab's optimisation;
- the frozen subdomains' part of the solution is computed once per point set (see
  :meth:`fbpinn.model.FBPINN.prepare`), not at every step;
- the optimiser starts afresh for each slab.

The steps left after the last slab (``training.steps - slabs * steps_per_slab``)
train everything together.  A later slab's subdomains overlap the earlier ones, so
switching them on changes the solution only where the earlier slab's support ends;
the new slab trains there.  The stage is a function of the step alone, so a resumed
run picks up the schedule where it stopped.  Used by :mod:`fbpinn.trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .registry import get, register


EDGE = 0.9  # points of a slab reach this fraction of a half-width past its last centre


@dataclass
class Stage:
    """What trains during one stage of a schedule."""

    index: int
    limit: int | None  # included time-centres (None: all)
    t_max: float | None  # upper bound of the loss's points in t (None: everything)
    t_min: float | None  # lower bound (exclusive) of the loss's points in t (None: none)
    trainable: torch.Tensor | None  # (J,) bool over the level's subdomains (None: all)
    text: str


@register("scheduler", "all_active")
class AllActive:
    """Every subdomain trains at every step."""

    n_stages = 1

    def stage_of(self, step: int) -> int:
        return 0

    def stage(self, index: int) -> Stage:
        return Stage(0, None, None, None, None, "all subdomains train")

    def apply(self, stage: Stage) -> None:
        pass


@register("scheduler", "time_marching")
class TimeMarching:
    """Slabs of time-centres trained in order; see the module docstring.

    Parameters
    ----------
    level : the (single) :class:`fbpinn.decomposition.Level`.
    t_axis : index of the time axis.
    slabs : number of slabs, 2 .. subdomains along t.
    steps_per_slab : steps each slab trains for.
    """

    def __init__(self, level, t_axis: int, slabs: int, steps_per_slab: int):
        axis = level.axes[t_axis]
        if not 2 <= slabs <= axis.n:
            raise ValueError(f"slabs must lie in 2..{axis.n} (the subdomains along t), got {slabs}")
        self.level, self.t_axis, self.slabs, self.steps_per_slab = level, t_axis, slabs, steps_per_slab
        groups = np.array_split(np.arange(axis.n), slabs)
        self.bounds = [(int(g[0]), int(g[-1]) + 1) for g in groups]  # [first, end) time-centre index
        j = torch.arange(level.n_subdomains)
        self.t_index = (j // level.strides[t_axis]) % level.shape[t_axis]  # (J,)
        self.n_stages = slabs + 1  # the last stage trains everything

    def stage_of(self, step: int) -> int:
        """Stage of the 1-based ``step``."""
        return marching_stage(step, self.slabs, self.steps_per_slab)

    def stage(self, index: int) -> Stage:
        if index >= self.slabs:
            return Stage(index, None, None, None, None, "all subdomains train together")
        axis = self.level.axes[self.t_axis]
        first, end = self.bounds[index]
        t_max = min(axis.hi, float(axis.centres[end - 1]) + EDGE * axis.half_width)
        t_min = float(axis.centres[first]) - axis.half_width if first else None
        trainable = (self.t_index >= first) & (self.t_index < end)
        frozen = f", t-index 0..{first - 1} frozen" if first else ""
        bounds = f"{t_min:.4g} < t < {t_max:.4g}" if t_min is not None else f"t < {t_max:.4g}"
        text = f"slab {index + 1}/{self.slabs}: subdomains of t-index {first}..{end - 1} train{frozen}, points {bounds}"
        return Stage(index, end, t_max, t_min, trainable, text)

    def apply(self, stage: Stage) -> None:
        """Switch the level's later time-centres off (or all on) for ``stage``."""
        self.level.axes[self.t_axis].limit = stage.limit if stage.limit is not None else self.level.axes[self.t_axis].n


def marching_stage(step: int, slabs: int, steps_per_slab: int) -> int:
    """Time-marching: the stage of the 1-based ``step``: its slab, or ``slabs`` after the slabs."""
    return min((step - 1) // steps_per_slab, slabs)


def stage_end(cfg, step: int) -> int:
    """The last step of the stage that holds the 1-based ``step``, from the config alone (the
    checkpoint reader needs it without a model): ``training.steps``, or with time-marching the
    slab's last step or, after the slabs, ``training.steps``."""
    sc, steps = cfg.schedule, cfg.training.steps
    index = _stage_index(cfg, step)
    return steps if index is None or index == sc.slabs else min(steps, (index + 1) * sc.steps_per_slab)


def stage_start(cfg, step: int) -> int:
    """The first step of the stage that holds the 1-based ``step``, from the config alone: 1, or
    with time-marching the slab's first step or, after the slabs, the step after the last slab."""
    sc = cfg.schedule
    index = _stage_index(cfg, step)
    return 1 if index is None else index * sc.steps_per_slab + 1


def _stage_index(cfg, step: int) -> int | None:
    """Time-marching: the stage of ``step`` (:func:`marching_stage`); else None."""
    sc = cfg.schedule
    return marching_stage(step, sc.slabs, sc.steps_per_slab) if sc.kind == "time_marching" else None


def learning_rate(cfg, step: int) -> float:
    """Adam's rate at the 1-based ``step``: lr * lr_decay ** ((step - first) / decay_steps), first
    = 1, or the stage's first step with ``training.decay_per_stage``."""
    tr = cfg.training
    first = stage_start(cfg, step) if tr.decay_per_stage else 1
    return tr.lr * tr.lr_decay ** ((step - first) / tr.decay_steps)


def in_lbfgs_phase(cfg, step: int) -> bool:
    """Whether ``step`` uses L-BFGS: the last ``training.lbfgs_steps`` steps of its stage (the last of
    the run unless time-marching)."""
    n = cfg.training.lbfgs_steps
    return n > 0 and step > stage_end(cfg, step) - n


def build(cfg, levels, axes_names):
    """The scheduler a config asks for (``schedule.kind``)."""
    sc = cfg.schedule
    cls = get("scheduler", sc.kind)
    if cls is AllActive:
        return cls()
    return cls(levels[-1], list(axes_names).index("t"), sc.slabs, sc.steps_per_slab)
