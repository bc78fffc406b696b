"""A trained model, rebuilt from a results file or a checkpoint, evaluated at any points.

::

    import fbpinn
    sol = fbpinn.Solution.load("results/wave1d/run.h5")   # or a checkpoint: .../step_000500.h5
    u = sol(x)                        # (N, F) fields at points x (N, d), float64
    du = sol(x, "u_t", "u_xx")        # (N, 2): derivatives, named as the problem names them

The model is built from what the file stores -- the resolved config (and, for a problem
from ``problem.module``, that module, loaded as ``fbpinn train`` loads it), the trained
weights and the learned constants -- so no config file is needed.  A time-marching run
is evaluated in the schedule stage of the file's step (after its last step for a results
file), so that the values equal the trainer's at that step.  Points are evaluated in
chunks with the forward-mode derivatives of :class:`fbpinn.model.FBPINN`, without
gradients.  Used by ``fbpinn eval`` (:mod:`fbpinn.cli`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import torch

from .derivatives import MAX_ORDER, closure, split_name
from .io import ResultsError, file_format


class Solution:
    """A trained FBPINN and what describes it; call it to evaluate (see :meth:`__call__`).

    Attributes: ``fields`` and ``axes`` (tuples of names), ``domain`` (``(lo, hi)`` lists),
    ``problem`` (its name), ``config`` (the :class:`fbpinn.config.Config`), ``step`` (the
    training step of the weights: a checkpoint's step, a results file's last step),
    ``source`` (the file's path), ``model`` (the :class:`fbpinn.model.FBPINN`)."""

    def __init__(self, cfg, model, step: int, source: Path):
        self.config = cfg
        self.model = model
        self.step = int(step)
        self.source = Path(source)
        problem = model.problem
        self.problem = cfg.problem_name
        self.fields = tuple(problem.fields)
        self.axes = tuple(problem.axes)
        self.domain = (list(problem.domain.lo), list(problem.domain.hi))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path, device="cpu") -> "Solution":
        """The solution a results file (merged or split over per-rank part files) or a checkpoint
        holds, with its model on ``device``.

        Raises :class:`fbpinn.io.ResultsError` or :class:`fbpinn.checkpoint.CheckpointError`
        naming the file when it is neither or is damaged, and :class:`fbpinn.config.ConfigError`
        when its stored config cannot be used (e.g. its ``problem.module`` is gone)."""
        from . import checkpoint

        path = Path(path)
        if file_format(path) == checkpoint.FORMAT:
            return cls._from_state(checkpoint.read(path), path, device)
        from .io import read_results

        data = read_results(path, lazy=True)  # the solution's grid datasets stay on disk
        arrays = {f"{level}/{name}": value for level, group in data.get("parameters", {}).items()
                  if isinstance(group, dict) for name, value in group.items() if not name.endswith("attrs")}
        learned = {k: v for k, v in data.get("learned", {}).items() if not k.endswith("attrs")}
        steps = data["training"]["step"]
        return cls._build(data["attrs"]["config"], arrays, learned, int(steps[-1]) if len(steps) else 0, path,
                          device)

    @classmethod
    def _from_state(cls, state: dict, path: Path, device="cpu") -> "Solution":
        """The solution of a checkpoint's state (:func:`fbpinn.checkpoint.read`)."""
        arrays = {k[len("parameters/"):]: v for k, v in state["arrays"].items() if k.startswith("parameters/")}
        learned = {k[len("problem/"):]: v for k, v in arrays.items() if k.startswith("problem/")}
        return cls._build(state["config"], arrays, learned, state["step"], path, device)

    @classmethod
    def _build(cls, config_text: str, arrays: dict, learned: dict, step: int, path: Path, device) -> "Solution":
        """Model of the stored config with the stored weights and constants, in the stage of ``step``."""
        from . import registry, schedulers
        from .config import load_config
        from .decomposition import config_levels
        from .model import FBPINN, parameter_key, stacked_parameters

        try:
            data = tomllib.loads(config_text)
        except (tomllib.TOMLDecodeError, TypeError) as e:
            raise ResultsError(f"{path}: the stored config is not TOML ({e})") from None
        cfg = load_config(data=data, stored=True)
        dtype = getattr(torch, cfg.training.dtype)
        problem = registry.get("problem", cfg.problem_name)(cfg.problem, dtype)
        levels = config_levels(cfg, problem)
        gen = torch.Generator().manual_seed(cfg.training.seed)  # initial weights, all replaced below
        model = FBPINN(problem, levels, cfg.network.hidden, cfg.network.activation, gen, dtype, device=device,
                       input_scale=cfg.network.input_scale)
        problem.to(model.device)
        with torch.no_grad():
            for level, name, dst in stacked_parameters(model.nets):
                key = parameter_key(level, name)
                _copy(dst, arrays.get(key), key, path)
            for name, dst in problem.parameters().items():
                _copy(dst, learned.get(name), name, path)
        schedule = schedulers.build(cfg, model.levels, problem.axes)
        schedule.apply(schedule.stage(schedule.stage_of(max(step, 1))))
        return cls(cfg, model, step, path)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, x, *names: str, chunk: int = 65536) -> np.ndarray:
        """The fields (no ``names``) or the named quantities at points ``x``: (N, d) NumPy array or
        tensor; returns a float64 (N, F) or (N, len(names)) array.

        A name is a field (``"u"``) or one of its derivatives as the problem names them
        (``"u_t"``, ``"v_xx"``, orders up to :data:`fbpinn.derivatives.MAX_ORDER`).  Raises
        ValueError naming a bad name, a bad shape, or the points outside the domain."""
        names = tuple(names) or self.fields
        wanted = [self.parse(n) for n in names]
        x = self.points(x)
        orders = closure({o for _, o in wanted})
        chunk = max(int(chunk), 1)
        out = np.empty((x.shape[0], len(names)), dtype=np.float64)
        with torch.no_grad():
            for a in range(0, x.shape[0], chunk):
                batch = self.model.prepare(x[a:a + chunk], orders)
                u = self.model(batch).cpu().double()  # (K, n, F)
                for c, (f, o) in enumerate(wanted):
                    out[a:a + chunk, c] = u[batch.orders.index(o), :, f].numpy()
        return out

    def parse(self, name: str) -> tuple[int, tuple]:
        """A quantity's name as (field index, multi-index); ValueError naming a bad one."""
        if not isinstance(name, str):
            raise ValueError(f"quantity names are strings, got {name!r}")
        f, o = split_name(name, self.axes, self.fields)
        if len(o) > MAX_ORDER:
            raise ValueError(f"derivative {name!r} is of order {len(o)}; the model provides orders up to {MAX_ORDER}")
        return f, o

    def points(self, x) -> torch.Tensor:
        """``x`` as an (N, d) float64 CPU tensor, checked to lie in the domain (ValueError if not)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().to(torch.float64)
        else:
            try:
                x = torch.from_numpy(np.asarray(x, dtype=np.float64))
            except (TypeError, ValueError) as e:
                raise ValueError(f"points must be numbers: {e}") from None
        d = len(self.axes)
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"points must be an (N, {d}) array (one column per axis {', '.join(self.axes)}), "
                             f"got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{int((~torch.isfinite(x)).any(1).sum())} point(s) are not finite")
        lo, hi = (torch.tensor(v, dtype=torch.float64) for v in self.domain)
        outside = int(((x < lo) | (x > hi)).any(1).sum())
        if outside:
            box = " x ".join(f"[{a:g}, {b:g}]" for a, b in zip(*self.domain))
            raise ValueError(f"{outside} of {x.shape[0]} point(s) lie outside the domain {box} "
                             f"({', '.join(self.axes)}), where the model is not defined")
        return x

    def __repr__(self) -> str:
        return (f"Solution({str(self.source)!r}: problem {self.problem}, fields {', '.join(self.fields)}, "
                f"axes {', '.join(self.axes)}, step {self.step})")


def _copy(dst: torch.Tensor, src, name: str, path: Path) -> None:
    """Copy a stored array into a parameter: the same shape, or a results file's stacked biases
    (J, n_out) into the model's (J, 1, 1, n_out)."""
    if src is None:
        raise ResultsError(f"{path}: holds no parameters for {name}; it was not written by this model")
    src = np.asarray(src)
    shape = tuple(dst.shape)
    if src.shape != shape and not (dst.dim() == 4 and src.shape == (shape[0], shape[3])):
        raise ResultsError(f"{path}: parameters {name} have shape {src.shape}, the model built from its config "
                           f"{shape}")
    dst.copy_(torch.from_numpy(src.reshape(shape)).to(dst.device, dst.dtype))


def checkpoint_results(path, chunk: int = 65536) -> dict:
    """A checkpoint as :func:`fbpinn.io.read_results` returns a results file, for ``fbpinn plot``:
    its history, decomposition and learned constants, and the solution evaluated on the config's
    test grid with the checkpoint's weights (in chunks of ``chunk`` points), with the exact
    solution and the error where the problem knows an exact solution (a reference solution, such
    as the wave problems' finite-difference one, is not computed: the run's results file has it).
    The root attribute ``format`` stays ``fbpinn-checkpoint`` and ``step`` holds its step.

    Raises :class:`fbpinn.checkpoint.CheckpointError` naming a damaged file."""
    from . import checkpoint
    from .history import NAMED
    from .io import solution_arrays

    path = Path(path)
    state = checkpoint.read(path)
    sol = Solution._from_state(state, path)
    cfg, model = sol.config, sol.model
    problem = model.problem
    axes = problem.domain.grid_axes(cfg.test.points)
    grid = tuple(len(a) for a in axes)
    x = problem.domain.grid(grid)
    u = sol(x, chunk=chunk).reshape(*grid, len(sol.fields))
    exact = problem.exact(x.to(model.dtype))
    exact = None if exact is None else exact.double().cpu().numpy().reshape(*grid, len(sol.fields))
    solution = {"attrs": {"target": "exact"} if exact is not None else {}}
    solution.update({f"axis_{a}": c.numpy() for a, c in zip(sol.axes, axes)})
    solution.update(solution_arrays(u, exact, sol.fields, "exact"))
    lo, hi = sol.domain
    decomposition = {"attrs": {"n_levels": len(model.levels), "window": cfg.decomposition.window,
                               "overlap": cfg.decomposition.overlap, "domain_lo": np.asarray(lo),
                               "domain_hi": np.asarray(hi)}}
    for i, level in enumerate(model.levels):
        decomposition[f"level{i}"] = {"attrs": {"shape": np.asarray(level.shape)},
                                      "centres": level.centres().numpy(), "half_widths": level.half_widths().numpy()}
    names = {"loss_terms": ",".join(state["term_names"]), "rel_l2_fields": ",".join(sol.fields)}
    training = {"attrs": {}, "loss_per_step": np.asarray(state["loss_per_step"], dtype=np.float64)}
    for key, rows in state["history"].items():
        training[key] = np.asarray(rows)
        if key in NAMED:
            training[f"{key}.attrs"] = {"names": names[key]}
    learned = {k[len("parameters/problem/"):]: np.asarray(v) for k, v in state["arrays"].items()
               if k.startswith("parameters/problem/")}
    attrs = {"format": checkpoint.FORMAT, "fbpinn_version": state.get("fbpinn_version", ""),
             "problem": cfg.problem_name, "axes": ",".join(sol.axes), "fields": ",".join(sol.fields),
             "n_ranks": state["n_ranks"], "config": state["config"], "wall_time": state["wall_time"],
             "step": state["step"]}
    out = {"attrs": attrs, "decomposition": decomposition, "training": training, "solution": solution}
    if learned:
        out["learned"] = {"attrs": {}, **learned}
    return out
