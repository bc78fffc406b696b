"""Training: sample -> loss -> step -> log -> evaluate, then the results file.

Glossary of short names used below:

    cfg     resolved :class:`fbpinn.config.Config`
    x       (N, d) points; ``x_test`` the test grid
    term    one loss term (residual, soft condition or observations) and its points
    batch   a term's points prepared by :meth:`FBPINN.prepare` (pairs, windows, ansatz)
    U       (K, N) solution and derivatives at a batch's points
    rel_l2  ||u - u_exact|| / ||u_exact|| on the test grid

:func:`train` runs a config and returns a :class:`Run`; :func:`run_and_save` also
writes ``run.h5`` through :mod:`fbpinn.io`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch

from . import registry
from .config import Config
from .decomposition import Level
from .derivatives import parse
from .domains import sample
from .model import FBPINN
from .optim import Adam
from .problems import Derivs, Term

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is no longer finite)."""


@dataclass
class Run:
    """Everything a finished run hands to the results writer."""

    cfg: Config
    model: FBPINN
    problem: object
    term_names: list
    history: dict = field(default_factory=dict)  # name -> list, aligned at evaluation steps
    loss_per_step: list = field(default_factory=list)
    x_test: torch.Tensor | None = None
    u_test: torch.Tensor | None = None
    u_exact: torch.Tensor | None = None
    learned: dict = field(default_factory=dict)
    wall_time: float = 0.0
    start_time: float = 0.0


def configure_threads(threads: int) -> int:
    """Set torch's CPU threads: the config's value, else OMP_NUM_THREADS, else torch's default.

    Also flushes denormal floats to zero: window tails and tiny Adam moments produce them
    in float32, and arithmetic on them is up to a hundred times slower on x86 CPUs."""
    torch.set_flush_denormal(True)
    if threads > 0:
        torch.set_num_threads(threads)
    elif os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return torch.get_num_threads()


def build(cfg: Config):
    """Problem, levels and model of a config, with the seeded generator."""
    dtype = getattr(torch, cfg.training.dtype)
    torch.manual_seed(cfg.training.seed)
    gen = torch.Generator().manual_seed(cfg.training.seed)
    problem = registry.get("problem", cfg.problem_name)(cfg.problem, dtype)
    dec = cfg.decomposition
    levels = [Level(problem.domain, dec.subdomains, dec.overlap, dec.window)]
    model = FBPINN(problem, levels, cfg.network.hidden, cfg.network.activation, gen, dtype)
    return problem, model, gen


def relative_l2(u: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.norm(u.double() - exact.double()) / torch.linalg.norm(exact.double()))


class Trainer:
    """Owns the optimiser, the loss terms and their prepared batches for one run."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        tr = cfg.training
        self.problem, self.model, self.gen = build(cfg)
        self.dtype = self.model.dtype
        self.physics_needs = [parse(n, self.problem.axes) for n in self.problem.needs]
        self.extra_terms = self.problem.terms(self.gen)
        self.terms, self.batch, self.slices = [], None, []
        self.resample()
        self.params = list(self.model.parameters()) + list(self.problem.parameters().values())
        self.optimizer = Adam(self.params, lr=tr.lr)
        self.x_test = self.problem.domain.grid(cfg.test.points)  # (N_test, d) float64
        exact = self.problem.exact(self.x_test)
        self.u_exact = None if exact is None else exact.double()
        self.test_batch = self.model.prepare(self.x_test) if self.x_test.shape[0] <= 2**20 else None
        self._loss = self._compiled_loss if tr.compile else self._loss_impl
        self._compiled = None

    def resample(self) -> None:
        """(Re)draw collocation points and prepare every term's batch."""
        tr = self.cfg.training
        terms = []
        if self.cfg.problem.physics:
            x = sample(self.problem.domain, tr.sampler, tr.points, self.gen, self.dtype)
            terms.append(Term("physics", x, tuple(self.problem.needs), self.problem.residual, 1.0))
        self.terms = terms + self.extra_terms
        # All terms' points go through the model in one pass; each term reads its slice.
        x = torch.cat([t.x.to(self.dtype) for t in self.terms])  # (N, d)
        orders = {parse(n, self.problem.axes) for t in self.terms for n in t.needs}
        self.batch = self.model.prepare(x, orders)
        bounds = [0]
        for t in self.terms:
            bounds.append(bounds[-1] + t.x.shape[0])
        self.slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def _loss_impl(self):
        U = self.model(self.batch)  # (K, N)
        parts = []
        for term, sl in zip(self.terms, self.slices):
            d = Derivs(U[:, sl], self.batch.orders, self.problem.axes)
            r = term.residual(term.x, d)  # (n,)
            parts.append(term.weight * (r * r).sum() / (term.n_global or r.shape[0]))
        parts = torch.stack(parts)
        return parts.sum(), parts

    def _compiled_loss(self):
        """The loss through torch.compile; falls back to eager if compilation fails."""
        if self._compiled is None:
            self._compiled = torch.compile(self._loss_impl)
            try:
                return self._compiled()
            except Exception as e:  # no C++ compiler, unsupported platform, ...
                logger.warning("torch.compile failed (%s); training without compilation", str(e).splitlines()[0])
                self._loss = self._loss_impl
                return self._loss_impl()
        return self._compiled()

    def step(self, step: int):
        """One optimisation step (1-based ``step``); returns (loss, loss per term, lr)."""
        tr = self.cfg.training
        if tr.resample_every and step > 1 and (step - 1) % tr.resample_every == 0:
            self.resample()
        lr = tr.lr * tr.lr_decay ** ((step - 1) / tr.decay_steps)
        self.optimizer.lr = lr
        loss, parts = self._loss()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item(), parts, lr

    def evaluate(self):
        """Solution on the test grid and its relative L2 error (nan without an exact solution)."""
        with torch.no_grad():
            u = self.model(self.test_batch)[0] if self.test_batch is not None else self.model.value(self.x_test)
        err = relative_l2(u, self.u_exact) if self.u_exact is not None else math.nan
        return u, err

    def run(self) -> Run:
        cfg, tr = self.cfg, self.cfg.training
        run = Run(cfg, self.model, self.problem, [t.name for t in self.terms], start_time=time.time())
        hist = {"step": [], "loss": [], "loss_terms": [], "rel_l2": [], "time": [], "lr": []}
        pairs = self.batch.pairs()
        logger.info("%s: %d subdomain(s) %s, %d parameters, %d collocation pairs, %s, %d thread(s)",
                    self.problem.name, self.model.levels[0].n_subdomains, list(cfg.decomposition.subdomains),
                    sum(p.numel() for p in self.params), pairs, tr.dtype, torch.get_num_threads())
        t0 = time.perf_counter()
        t_log, step_log = t0, 0
        for step in range(1, tr.steps + 1):
            value, parts, lr = self.step(step)
            run.loss_per_step.append(value)
            if not math.isfinite(value):
                raise TrainingError(f"loss became {value} at step {step} (terms: "
                                    + ", ".join(f"{t.name}={p:.3g}" for t, p in zip(self.terms, parts.tolist()))
                                    + "); lower training.lr or check the problem's scales")
            last = step == tr.steps
            if step % tr.eval_every == 0 or last or step == 1:
                _, err = self.evaluate()
                hist["step"].append(step)
                hist["loss"].append(value)
                hist["loss_terms"].append(parts.detach().double().tolist())
                hist["rel_l2"].append(err)
                hist["time"].append(time.perf_counter() - t0)
                hist["lr"].append(lr)
            if step % tr.log_every == 0 or last:
                now = time.perf_counter()
                rate = (step - step_log) / max(now - t_log, 1e-9)
                t_log, step_log = now, step
                eta = (tr.steps - step) / rate if rate > 0 else 0.0
                err_text = f"  rel_l2 {hist['rel_l2'][-1]:.3e}" if hist["step"][-1] == step else ""
                learned = "".join(f"  {k} {v.item():.5g}" for k, v in self.problem.parameters().items())
                logger.info("step %*d/%d  loss %.4e%s%s  %.0f steps/s  ETA %s", len(str(tr.steps)), step,
                            tr.steps, value, err_text, learned, rate, _hms(eta))
        run.wall_time = time.perf_counter() - t0
        run.history = hist
        run.u_test, _ = self.evaluate()
        run.x_test, run.u_exact = self.x_test, self.u_exact
        run.learned = {k: v.item() for k, v in self.problem.parameters().items()}
        return run


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train(cfg: Config) -> Run:
    """Train the model a config describes; returns the :class:`Run`."""
    configure_threads(cfg.training.threads)
    return Trainer(cfg).run()
