"""Training: sample -> loss -> step -> log -> evaluate, then the results file.

Glossary of short names used below:

    cfg     resolved :class:`fbpinn.config.Config`
    x       (N, d) points; ``x_test`` this rank's box of the test grid
    term    one loss term (residual, soft condition or observations) and its points
    batch   a term's points prepared by :meth:`FBPINN.prepare` (pairs, windows, ansatz)
    U       (K, N, F) fields and derivatives at a batch's points
    F       the problem's fields (one for most problems: u)
    rel_l2  ||u - u_exact|| / ||u_exact|| on the test grid, over all fields

:func:`train` runs a config and returns a :class:`Run`, which :mod:`fbpinn.io` writes
to ``run.h5``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import history, provenance, registry, schedulers
from .config import Config, adaptive_count, to_toml
from .cudagraph import CapturedStep
from .decomposition import config_levels
from .derivatives import closure, parse, traced_for_compiler
from .domains import sample
from .model import FBPINN, parameter_key, stacked_parameters
from .optim import LBFGS, Adam, FlatSpace, adam_update
from .parallel import Context, Distribution, configure_threads as parallel_threads, select_device
from .problems import Derivs, Term
from .signals import received, stop_signals

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is no longer finite)."""


@dataclass
class Run:
    """A finished run as plain data: what :func:`train` returns and the results writer
    (:func:`fbpinn.io.write_results`) stores.  Arrays are NumPy arrays; ``model`` and ``problem``
    are the trained objects, for use in the same process only (the writer does not touch them).

    On rank 0: the test-grid solution ``u_test`` (N,) for one field, (N, F) otherwise, first
    axis of the grid slowest, and the target ``u_exact`` the same way (or None); with
    ``output.per_rank`` every rank has its own ``block`` instead.  ``parameters``: the model's
    full stacked arrays by key (:func:`fbpinn.model.parameter_key`), ``learned`` the problem's
    learned constants, ``history`` and ``loss_per_step`` as :mod:`fbpinn.history` defines them."""

    cfg: Config
    model: FBPINN
    problem: object
    term_names: list
    history: dict = field(default_factory=dict)  # name -> list, aligned at evaluation steps
    loss_per_step: list = field(default_factory=list)
    axes: tuple = ()  # the problem's axis names, e.g. ("x", "t")
    fields: tuple = ("u",)  # the problem's field names
    grid: list = field(default_factory=list)  # the test grid's coordinates along each axis (float64)
    domain: tuple = ((), ())  # (lo, hi) of the problem's domain
    levels: list = field(default_factory=list)  # per level: {"shape", "centres", "half_widths"}
    observations: tuple | None = None  # (x (n, d), u) of a data term, or None
    u_test: np.ndarray | None = None
    u_exact: np.ndarray | None = None
    has_exact: bool = False  # whether u_exact (or the per-rank blocks' "exact") is set
    target: str = "exact"  # "exact" or "reference": what u_exact holds
    reference_method: str = ""  # how the reference was computed (target "reference")
    learned: dict = field(default_factory=dict)
    wall_time: float = 0.0
    start_time: float = 0.0
    n_ranks: int = 1
    parameters: dict = field(default_factory=dict)  # "level0/W0" -> full stacked array
    block: dict | None = None  # this rank's solution block when written per rank (output.per_rank)
    provenance: dict | None = None  # on rank 0: the record of fbpinn.provenance, its last segment closed
    receivers: dict | None = None  # on rank 0 with output.receivers: see Trainer.traces


def configure_threads(threads: int, ctx: Context | None = None) -> int:
    """Set torch's CPU threads (see :func:`fbpinn.parallel.configure_threads`)."""
    return parallel_threads(ctx or Context(None), threads)


def build(cfg: Config, ctx: Context | None = None):
    """Problem, model, seeded generator and :class:`Distribution` of a config.

    Under MPI the model holds only this rank's subdomains and their halo; the
    initial weights are the same as in a one-process run."""
    ctx = ctx or Context(None)
    dtype = getattr(torch, cfg.training.dtype)
    torch.manual_seed(cfg.training.seed)
    gen = torch.Generator().manual_seed(cfg.training.seed)
    problem = registry.get("problem", cfg.problem_name)(cfg.problem, dtype)
    levels = config_levels(cfg, problem)
    axes = cfg.parallel.axes or None
    if cfg.schedule.kind == "time_marching" and axes is None:
        axes = [d for d, name in enumerate(problem.axes) if name != "t"]  # march in t, split space
    dist = Distribution(ctx, levels, axes)
    device = select_device(ctx, cfg.training.device)
    model = FBPINN(problem, levels, cfg.network.hidden, cfg.network.activation, gen, dtype, held=dist.held,
                   device=device, input_scale=cfg.network.input_scale)
    problem.to(device)
    dist.attach(model.nets)
    return problem, model, gen, dist


_ALLOCATOR_TUNED = False


def tune_host_allocator() -> bool:
    """Keep large CPU tensors in the heap between steps (glibc only; once per process).

    glibc serves blocks above 32 MB with fresh mmap'd pages and returns them on free, so
    a step whose intermediate tensors exceed that size pays for zeroing every page again
    at every step (about 2x the step time on a (2+1)-D wave problem with 10^5 pairs).
    Raising the mmap and trim thresholds makes freed blocks reusable.  Returns whether
    the thresholds were set."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    _ALLOCATOR_TUNED = bool(mallopt(M_MMAP_THRESHOLD, 2**30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _ALLOCATOR_TUNED


def _local(parts: torch.Tensor, stop: bool) -> np.ndarray:
    """A step's loss terms and its stop flag as one float64 array, the buffer of their sum over ranks."""
    return np.append(parts.detach().double().cpu().numpy(), float(stop))


def fold_constants(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` with what it computes from its constants alone computed once, here: a problem's
    source term at the prepared points, the coordinates taken out of the prepared point tensors.
    Inductor compiles a traced step's operations on constants into the step, to be done again at
    every call (six sines per point on the 2-D Laplace problem).  Left as it is if the folding
    fails: that costs speed, not results."""
    from torch._inductor.constant_folding import constant_fold

    try:
        constant_fold(graph)
    except Exception as e:  # a private function of torch's, which may change
        logger.debug("the traced step's constants are not folded (%s)", e)
    return graph


def compile_traced(graph: torch.fx.GraphModule, inputs: list, cpp_wrapper: bool):
    """Inductor's program of a traced training step (see :meth:`Trainer._traced_step`), called with
    ``inputs``; ``cpp_wrapper``: its kernels are called from generated C++."""
    import torch._inductor as inductor

    return inductor.compile(graph, inputs, options={"cpp_wrapper": True} if cpp_wrapper else {})


class Trainer:
    """Owns the optimiser, the loss terms and their prepared batches for one run."""

    PREPARED_TEST_POINTS = 2**20  # larger test grids are evaluated in chunks, prepared each time

    def __init__(self, cfg: Config, ctx: Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or Context(None)
        tr = cfg.training
        tune_host_allocator()
        self.problem, self.model, self.gen, self.dist = build(cfg, self.ctx)
        self.dtype = self.model.dtype
        # Boundary and observation terms: this rank's points, fixed for the whole run.
        self.extra_terms = [t.select(self.dist.select(t.x)).to(self.model.device) for t in self.problem.terms(self.gen)]
        self.full_terms, self.terms, self.passes = [], [], []  # passes: see _prepare_terms
        self.causal_term, self.causal_bins, self.causal_counts = None, None, None  # see _prepare_causal
        self.bytes_sent = 0
        self.comm_seconds = 0.0  # time in halo exchange and reductions (includes waiting for other ranks)
        self.schedule = schedulers.build(cfg, self.model.levels, self.problem.axes)
        self.stage = self.schedule.stage(self.schedule.stage_of(1))
        self.schedule.apply(self.stage)
        self.resample()
        self.small_step_threads()
        self.params = list(self.model.parameters()) + list(self.problem.parameters().values())
        self.optimizer = Adam(self.params, lr=tr.lr)
        self.lbfgs = None  # the LBFGS of the stage's final phase (training.lbfgs_steps), once it has begun
        # This rank's box of the test grid (the whole grid on one process); no rank builds the whole grid.
        self.test_offset, self.test_shape, self.x_test = self._test_block()  # x_test: (n_local, d) float64
        self.n_fields = len(self.problem.fields)
        exact = self.problem.exact(self.x_test)
        self.target = "exact"
        if exact is None:
            exact = self._reference_block()
            self.target = "reference"
        self.exact_local = None if exact is None else exact.double().reshape(-1, self.n_fields)  # (n_local, F)
        small = self.x_test.shape[0] <= self.PREPARED_TEST_POINTS
        self.test_batch = self.model.prepare(self.x_test) if small else None
        self._loss = self._compiled_loss if tr.compile else self._loss_impl
        self._compiled = None
        self._compiled_grads = None  # see _fused_gradients
        self._compiled_whole, self._lr = None, None  # see _whole_step
        self.whole = True  # False once the compilation of the whole step has failed
        self._traced, self.trace = None, True  # see _traced_step; False once tracing has failed
        self.fused = tr.compile and hasattr(torch._dynamo.config, "trace_autograd_ops")
        self.stop_agreed = False  # some rank received a stop signal (see stop_signals)
        self._pending = None  # (step, finish) of a sum of loss terms started and not yet finished
        # (step, loss terms summed over the ranks) not yet taken by arrived(): at most the previous
        # step's and this one's (a caller that never takes them, such as a benchmark, keeps no more).
        self.reduced = collections.deque(maxlen=2)
        self.snapshots = None  # a fbpinn.io.Snapshots on rank 0 while fbpinn train writes them
        self._snapshot_block = None  # (offset, shape, points) of this rank's block of output.snapshot_points
        self.provenance = None  # on rank 0 while training: the record of fbpinn.provenance (open segment)
        self._stage_points = None  # see stage_points()
        self.causal_weights = None  # the last step's causal weights per time bin (training.causal)
        # The run so far (state_dict, load_state_dict): history rows, the loss of every step, the loss
        # terms' names, training seconds of earlier segments and when this one started, the next step.
        self.history, self.loss_per_step = history.empty(self.n_fields), []
        self.term_names = [t.name for t in self.terms]
        self._elapsed, self._t0, self.first_step = 0.0, None, 1

    SMALL_STEP = 32768  # a step_size() below which one thread is faster

    def step_size(self) -> int:
        """The (point, subdomain) pairs of a step times the widest hidden layer: the measure of a
        step's work that the thread count and the compiled wrapper are chosen by."""
        return self.pairs() * max(self.cfg.network.hidden or [1])

    def small_step_threads(self) -> bool:
        """With ``training.threads = 0`` on one process on the CPU and no OMP_NUM_THREADS, run a small step
        on one thread: below :attr:`SMALL_STEP` the kernels are too short for a second thread to pay
        for its synchronisation (on 2 cores: the harmonic oscillator's 612 pairs of width 32 take
        0.82 ms on one thread and 0.87 ms on two; cos1d's 2,988 pairs of width 16 take 1.27 and
        1.10 ms).  Returns whether it chose one thread."""
        from .config import omp_num_threads

        small = self.step_size() < self.SMALL_STEP
        if (self.cfg.training.threads or self.ctx.parallel or self.model.device.type != "cpu"
                or omp_num_threads() is not None or not small):
            return False
        if torch.get_num_threads() != 1:
            logger.info("small step (%d pairs): one thread (set training.threads to choose)", self.pairs())
            torch.set_num_threads(1)
        return True

    def resample(self, adaptive: bool = False, chosen: np.ndarray | None = None) -> None:
        """(Re)draw collocation points and prepare every term's batch.  ``adaptive``: choose
        ``training.adaptive`` of the physics points by their residual (see :meth:`_adaptive_points`);
        ``chosen``: the candidates an earlier adaptive draw from the same random state chose (resume)."""
        tr = self.cfg.training
        self.sample_state = self.gen.get_state()  # a checkpoint redraws the current points from here
        self.adaptive_chosen = None
        terms = []
        if self.cfg.problem.physics:
            region = self.dist.region if self.ctx.parallel else None
            if adaptive_count(self.cfg) and (adaptive or chosen is not None):
                x = self._adaptive_points(region, chosen)
            else:
                x = sample(self.problem.domain, tr.sampler, tr.points, self.gen, self.dtype, region=region,
                           closed_hi=self.dist.closed)
            terms.append(Term("physics", x, tuple(self.problem.needs), self.problem.residual, 1.0,
                              n_global=math.prod(tr.points)))
        self.full_terms = [t.to(self.model.device) for t in terms] + self.extra_terms
        self._prepare_terms()

    ADAPTIVE_CHUNK = 1 << 15  # candidates evaluated at once by _adaptive_points

    def _adaptive_points(self, region, chosen: np.ndarray | None) -> torch.Tensor:
        """This rank's physics points of an adaptive redraw (``training.adaptive``).

        Of the N = prod(training.points) points, the first N - k of the sampler's draw are kept and k
        are chosen from a pool of ``adaptive_pool`` N uniform candidates, in proportion to r^2 / mean(r^2)
        + 1 (r: the residual of the model as it is; the mean over the candidates the current stage
        trains), by weighted sampling without replacement: candidate i gets the key log(u_i) / w_i (u_i
        uniform, drawn for all candidates in one sequence) and the k largest keys win.  Each rank
        scores the candidates in its region; one reduction gives every rank all the scores, so all ranks
        choose the same global candidates, as a one-process run does.  ``chosen`` (a resume) skips
        the scoring."""
        tr = self.cfg.training
        n, k = math.prod(tr.points), adaptive_count(self.cfg)
        base = sample(self.problem.domain, tr.sampler, tr.points, self.gen)[:n - k]  # float64, all ranks alike
        pool = sample(self.problem.domain, "uniform", [tr.adaptive_pool * n], self.gen)
        u = torch.rand(pool.shape[0], generator=self.gen, dtype=torch.float64)
        if chosen is None:
            st = self.stage
            trained = (self._in_slab(pool, st.t_min, st.t_max) if st.t_max is not None
                       else torch.ones(len(pool), dtype=torch.bool))
            mine = trained if region is None else trained & region.contains(pool, self.dist.closed)
            scores = np.zeros(pool.shape[0])
            idx = mine.nonzero()[:, 0]
            scores[idx.numpy()] = self._squared_residuals(pool[idx])
            scores = self.ctx.allreduce(scores)
            trained = trained.numpy()
            mean = scores[trained].mean() if trained.any() else 0.0
            w = np.where(trained, scores / mean + 1.0 if mean > 0 else 1.0, 0.0)
            with np.errstate(divide="ignore"):
                keys = np.where(w > 0, np.log(u.numpy()) / np.where(w > 0, w, 1.0), -np.inf)
            chosen = np.sort(np.lexsort((np.arange(len(keys)), -keys))[:k])
        self.adaptive_chosen = np.asarray(chosen, dtype=np.int64)
        x = torch.cat([base, pool[torch.from_numpy(self.adaptive_chosen)]])
        if region is not None:
            x = x[region.contains(x, self.dist.closed)]
        return x.to(self.dtype)

    @torch.no_grad()
    def _squared_residuals(self, x: torch.Tensor) -> np.ndarray:
        """The physics residual's square (summed over the equations of a system) at points ``x`` (n, d)
        of this rank's region, by the model as it is, in chunks (float64 NumPy)."""
        orders = {parse(n, self.problem.axes, self.problem.fields) for n in self.problem.needs}
        out = []
        for c in range(0, x.shape[0], self.ADAPTIVE_CHUNK):
            xc = x[c:c + self.ADAPTIVE_CHUNK].to(self.dtype)
            batch = self.model.prepare(xc, orders)
            d = Derivs(self.model(batch), batch.orders, self.problem.axes, self.problem.fields, self.problem.name)
            r = _stacked(self.problem.residual(xc.to(self.model.device), d))
            squares = (r * r).double()
            out.append((squares if squares.dim() == 1 else squares.sum(-1)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def _prepare_terms(self) -> None:
        """Prepare the batches of the current stage's points (all of them unless time-marching)."""
        st = self.stage
        self.terms = self.full_terms if st.t_max is None else [self._within(t, st.t_min, st.t_max)
                                                                for t in self.full_terms]
        frozen = None if st.trainable is None else ~st.trainable  # summed once per pass, here
        self.passes, self._traced = [], None  # a traced step holds the old points: trace it again
        for members in self._pass_groups():
            x = torch.cat([self.terms[k].x.to(self.dtype) for k in members])  # (N, d)
            orders = {o for k in members for o in self._orders(self.terms[k])}
            self.passes.append(Pass(self.model.prepare(x, orders, frozen), members))
        # Each term's weight / global point count, as a tensor: a Python number that changes with
        # every redraw (the slab's share of the points) would make torch.compile compile again.
        self.term_scales = [torch.tensor(t.weight / (t.n_global or t.x.shape[0]), dtype=self.dtype,
                                         device=self.model.device) for t in self.terms]
        self._prepare_causal()
        if self.cfg.training.compile and self.sizes_change():
            self._mark_dynamic()

    def sizes_change(self) -> bool:
        """Whether the prepared tensors' sizes may change during the run: random points (the config
        allows redraws, adaptive ones included, of random samplers only) or the stages of a
        schedule.  When they cannot, torch.compile keeps them fixed, and its kernels with constant
        loop bounds are faster (cos1d: 2.3 against 2.6 ms per step on 2 cores); a size that changes
        after all costs one more compilation, not a wrong result."""
        return self.cfg.training.sampler != "grid" or self.schedule.n_stages > 1

    def _mark_dynamic(self) -> None:
        """Tell torch.compile which sizes of the prepared tensors change from one draw of the points
        to the next (point counts, the padded pairs per subdomain), so that its first compilation
        holds for every draw and every slab with the same layout (subdomain groups per pass).
        Without this it compiles for the first draw's sizes, again for each size that later
        changes (a cold compilation of a wave2d step takes one to two minutes), and falls back to
        eager execution once it has compiled too often.  The group sizes stay static: marked
        dynamic they gain nothing (the grouping rarely changes) and may slow the kernels."""
        mark = torch._dynamo.maybe_mark_dynamic
        for batch, _ in self.passes:
            mark(batch.x, 0)
            for t in (batch.a, batch.b, batch.fixed):
                if t is not None:
                    mark(t, 1)
            for block in batch.blocks:
                mark(block.index, 0)
                mark(block.t_in, 2)
                mark(block.win, 2)
        for term in self.terms:
            mark(term.x, 0)
            if term.target is not None:
                mark(term.target, 0)
        if self.causal_bins is not None:
            mark(self.causal_bins, 0)

    def _orders(self, term: Term) -> set:
        return {parse(n, self.problem.axes, self.problem.fields) for n in term.needs}

    def _pass_groups(self) -> list:
        """The terms (indices) of each model pass.  The term with the most points opens the first
        pass; a term whose derivatives are all among a pass's joins it, and one that needs others
        gets a pass of its own, so that a few boundary points asking for more derivatives do not
        make every point compute them (the forward path's work grows with the derivatives carried)."""
        order = sorted(range(len(self.terms)), key=lambda k: -self.terms[k].x.shape[0])
        groups, closures = [], []
        for k in order:
            need = set(closure(self._orders(self.terms[k])))
            for members, have in zip(groups, closures):
                if need <= have:
                    members.append(k)
                    break
            else:
                groups.append([k])
                closures.append(need)
        return [sorted(g) for g in groups]

    def pairs(self) -> int:
        """Padded (point, subdomain) pairs evaluated per step, over all passes."""
        return sum(p.batch.pairs() for p in self.passes)

    def n_points(self) -> int:
        """This rank's points in the current stage, over all terms."""
        return sum(p.batch.n for p in self.passes)

    def _prepare_causal(self) -> None:
        """For causal weighting (``training.causal``): the time bin of each physics point, and the
        points of each bin over all ranks (the bins split the time axis evenly)."""
        tr = self.cfg.training
        self.causal_term, self.causal_bins, self.causal_counts = None, None, None
        names = [t.name for t in self.terms]
        if not tr.causal or "physics" not in names:
            return
        i = names.index("physics")
        d = self.problem.axes.index("t")
        lo, hi = self.problem.domain.lo[d], self.problem.domain.hi[d]
        t = self.terms[i].x[:, d].double()
        bins = ((t - lo) / (hi - lo) * tr.causal_bins).floor().long().clamp(0, tr.causal_bins - 1)
        counts = np.bincount(bins.cpu().numpy(), minlength=tr.causal_bins).astype(np.float64)
        counts = self.ctx.allreduce(counts)
        self.causal_term, self.causal_bins = i, bins.to(self.model.device)
        self.causal_counts = torch.as_tensor(np.maximum(counts, 1.0), dtype=self.dtype, device=self.model.device)

    def _within(self, term: Term, t_min: float | None, t_max: float) -> Term:
        """The part of ``term`` with t_min < t < t_max (the slab's open support; t <= t_max at
        the domain's end), normalised by its global point count."""
        keep = self._in_slab(term.x, t_min, t_max)
        n = int(self.ctx.allreduce(np.array([float(keep.sum())]))[0])
        target = None if term.target is None else term.target[keep]
        return Term(term.name, term.x[keep], term.needs, term.residual, term.weight, target, max(n, 1))

    def _in_slab(self, x: torch.Tensor, t_min: float | None, t_max: float | None) -> torch.Tensor:
        """Which of the points ``x`` lie in t_min < t < t_max (t <= t_max at the domain's end; no
        bound where None)."""
        d = self.problem.axes.index("t")
        t = x[:, d].double()
        keep = torch.ones_like(t, dtype=torch.bool)
        if t_max is not None:
            keep &= (t <= t_max) if t_max >= self.problem.domain.hi[d] else (t < t_max)
        if t_min is not None:
            keep &= t > t_min
        return keep

    def _enter(self, index: int) -> None:
        """Switch to stage ``index`` of the schedule: windows, frozen subdomains, a fresh optimiser
        (the caller prepares the stage's points)."""
        self.stage = self.schedule.stage(index)
        self.schedule.apply(self.stage)
        if self.test_batch is not None:
            self.test_batch = self.model.prepare(self.x_test)
        self.optimizer = Adam(self.params, lr=self.cfg.training.lr)
        self.lbfgs = None  # each stage's L-BFGS phase starts afresh

    def _loss_impl(self):
        """Each term's part of the loss (T,), and with causal weighting the physics term's mean
        squared residual in each time bin, this rank's points' share (B,) (else None)."""
        parts, binned = [None] * len(self.terms), None
        for batch, members in self.passes:
            U = self.model(batch)  # (K, N, F)
            start = 0  # the term's first row, from the terms' sizes (compiled: symbolic, not a constant
            for k in members:  # that would fix the point count of every draw)
                term = self.terms[k]
                rows = U if len(members) == 1 else U[:, start:start + term.x.shape[0]]
                start = start + term.x.shape[0]
                d = Derivs(rows, batch.orders, self.problem.axes, self.problem.fields, self.problem.name)
                r = _stacked(term.residual(term.x, d))
                if term.target is not None:
                    r = r - term.target
                squares = r * r
                parts[k] = self.term_scales[k] * squares.sum()
                if k == self.causal_term:
                    per_point = squares if squares.dim() == 1 else squares.sum(-1)
                    binned = term.weight * torch.zeros_like(self.causal_counts).index_add(
                        0, self.causal_bins, per_point) / self.causal_counts
        return torch.stack(parts), binned

    def _weighted(self, parts, binned):
        """The loss to minimise: the terms' sum, with the physics term replaced by its causally
        weighted form when ``binned`` is given (collective: the bins' losses are summed over the
        ranks, so every rank weights alike).  Bin b's weight is exp(-epsilon * the sum of the
        losses of the bins before it), without gradient; the weighted term is the weighted mean
        over the bins, which is the physics term's mean when every weight is 1."""
        if binned is None:
            return parts.sum()
        losses = self.ctx.allreduce(binned.detach().double().cpu().numpy())
        weights = np.exp(-self.cfg.training.causal * (np.cumsum(losses) - losses))
        self.causal_weights = weights
        w = torch.as_tensor(weights, dtype=binned.dtype, device=binned.device)
        return parts.sum() - parts[self.causal_term] + (w * binned).sum() / len(weights)

    def _compiled_loss(self):
        """The loss through torch.compile; falls back to eager if compilation fails.  The first
        call compiles (tens of seconds for a large step): it is announced and timed in the log."""
        if self._compiled is None:
            self._compiled = torch.compile(self._loss_impl)
            logger.info("compiling the step (torch.compile); the first steps wait for it")
            t0 = time.perf_counter()
            try:
                out = self._compiled()
            except Exception as e:  # no C++ compiler, unsupported platform, ...
                logger.warning("torch.compile failed (%s); training without compilation", str(e).splitlines()[0])
                self._loss = self._loss_impl
                return self._loss_impl()
            logger.info("compiled the step in %.1f s", time.perf_counter() - t0)
            return out
        return self._compiled()

    def _gradients(self) -> torch.Tensor:
        """This rank's loss terms (T,), with the loss's gradient in each parameter's ``.grad`` (None
        where the loss does not depend on the parameter)."""
        if self.fused and self.causal_term is None:
            return self._fused_gradients()
        parts, binned = self._loss()
        loss = self._weighted(parts, binned)  # causal weights: a reduction between loss and gradient
        self.optimizer.zero_grad()
        loss.backward()
        return parts

    def _gradients_impl(self):
        parts, _ = self._loss_impl()
        grads = torch.autograd.grad(parts.sum(), self.params, allow_unused=True)
        return parts.detach(), grads

    WRAPPED_STEP = 10 * SMALL_STEP  # a step_size() below which the step's wrapper is compiled too
    use_cpp_wrapper = True  # False once a compilation with the C++ wrapper has failed

    def wrapped_step(self) -> bool:
        """Whether the compiled step on the CPU calls its kernels from generated C++ rather than Python
        (inductor's ``cpp_wrapper``): that saves about 0.1 ms a step, a sixth of the harmonic
        oscillator's, and costs a few seconds more compilation (laplace 8 x 8: 51 against 41 s),
        so only steps below :attr:`WRAPPED_STEP` take it (cos1d 2.49 against 2.59 ms, laplace 8 x 8
        3.49 against 3.62 ms on 2 cores)."""
        small = self.step_size() < self.WRAPPED_STEP
        return small and self.model.device.type == "cpu" and self.use_cpp_wrapper

    def _fused_gradients(self) -> torch.Tensor:
        """The loss and its gradient as one compiled program (``training.compile``).

        Compiling the loss alone leaves the backward pass to the autograd engine, which runs it as a
        second compiled graph behind its own bookkeeping; on small problems that, with the runtime
        wrapper between the two, costs more than the arithmetic (about half of a harmonic
        oscillator step).  Here dynamo traces ``torch.autograd.grad`` into the same graph, so a step
        is one call.  Falls back to the loss-only compilation if this compilation fails."""
        out = self._run_compiled("_compiled_grads", self._gradients_impl, (), "the loss and its gradient",
                                 "compiling the loss alone")
        if out is None:
            self.fused = False
            return self._gradients()
        parts, grads = out
        for p, g in zip(self.params, grads):
            p.grad = g
        return parts

    def _whole_impl(self, lr: torch.Tensor) -> torch.Tensor:
        parts, grads = self._gradients_impl()
        self.optimizer.update(grads, lr)
        return parts

    def whole_step(self, quasi_newton: bool) -> bool:
        """Whether this step's loss, gradient and Adam update are one compiled program (see
        :meth:`_whole_step`): with ``training.compile`` on one process, in an Adam phase, without
        causal weighting (whose weights need a reduction between the loss and its gradient)."""
        return (self.whole and self.fused and self.causal_term is None and not quasi_newton
                and not self.ctx.parallel)

    def _whole_step(self, lr: float) -> torch.Tensor | None:
        """One Adam step as one compiled program: the loss, its gradient and the update of the
        parameters and Adam's moments in place; returns the loss terms (T,), or None (and every later
        step takes the separate update) if this compilation fails.  On one process nothing happens
        between the gradient and the update, and the update's dozen small operations, run eagerly,
        cost a tenth of a small step; compiled they fuse into the gradient's program.  The learning
        rate goes in as a tensor: a schedule does not compile the step again.  The parameters'
        ``.grad`` are not set (none is needed after the update)."""
        if self._lr is None or self._lr.device != self.model.device:
            self._lr = torch.zeros((), dtype=torch.float64, device=self.model.device)
        self._lr.fill_(lr)
        if self.trace and not self.sizes_change():
            parts = self._traced_step()
            if parts is not None:
                return parts
        parts = self._run_compiled("_compiled_whole", self._whole_impl, (self._lr,), "the step with its update",
                                   "updating the parameters outside the compiled step")
        if parts is None:
            self.whole = False
        return parts

    def _step_inputs(self) -> list:
        """The inputs of the traced step: the parameters, Adam's moments and step counts, the rate."""
        opt = self.optimizer
        return [*self.params, *opt.exp_avg, *opt.exp_avg_sq, opt.counts, self._lr]

    def _traced_step(self) -> torch.Tensor | None:
        """The whole step as a program traced once, for runs whose points never change; None (and
        every later step takes the dynamo-compiled one) if it cannot be traced or compiled.

        A function compiled through dynamo checks, at every call, that the hundreds of Python objects
        and tensors it read (terms, batches, blocks, the optimiser) are still as it saw them, and
        runs the program behind two wrappers: on the harmonic oscillator that is 0.17 ms of a 0.43 ms
        call.  When the points are fixed, nothing but the parameters and Adam's state changes from
        step to step, so the step is traced once at the level of torch's operations (``make_fx``,
        through the gradient and the update) with the prepared points as constants, compiled by
        inductor, and called with the parameters, the moments, the step counts and the learning
        rate as its only inputs.  Preparing the points again (a new stage, a resumed run) traces it
        again.  On a GPU the program is replayed as one CUDA graph (:class:`fbpinn.cudagraph.CapturedStep`):
        its inputs are updated in place, so they keep their addresses."""
        def build(wrapper: bool):
            with torch.no_grad():
                program = compile_traced(self._trace(), self._step_inputs(), wrapper)

            def call(*inputs):
                with torch.no_grad():  # the program updates the parameters in place
                    return program(*inputs)
            return self._replayed(call)

        parts = self._compile_and_call("_traced", build, self._step_inputs(), "the traced step",
                                       "compiling it through dynamo")
        if parts is None:
            self.trace = False
        return parts

    def _replayed(self, program):
        """The traced program as each step calls it: on a GPU, replayed as one CUDA graph."""
        return CapturedStep(program) if self.model.device.type == "cuda" else program

    def _trace(self) -> torch.fx.GraphModule:
        """The whole step (:meth:`_whole_impl`) as a graph of torch operations of the flat inputs of
        :meth:`_step_inputs`, everything else it reads held as constants."""
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.nn.utils.stateless import _reparametrize_module

        names = [name for name, _ in self.model.named_parameters()]
        constants = list(self.problem.parameters())  # each also the problem's attribute of its name
        k, opt = len(self.params), self.optimizer

        def step(*flat):
            params = list(flat[:k])
            saved = {name: getattr(self.problem, name) for name in constants}
            try:
                for name, t in zip(constants, params[len(names):]):
                    setattr(self.problem, name, t)
                with _reparametrize_module(self.model, dict(zip(names, params))):
                    parts, _ = self._loss_impl()
            finally:
                for name, t in saved.items():
                    setattr(self.problem, name, t)
            grads = torch.autograd.grad(parts.sum(), params, allow_unused=True)
            adam_update(params, grads, list(flat[k:2 * k]), list(flat[2 * k:3 * k]), flat[3 * k], flat[3 * k + 1],
                        opt.beta1, opt.beta2, opt.eps)
            return parts.detach()

        with torch.enable_grad(), traced_for_compiler():
            graph = make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True)(*self._step_inputs())
        return fold_constants(graph)

    def _run_compiled(self, attr: str, impl, args: tuple, what: str, instead: str):
        """``impl(*args)`` compiled by ``torch.compile``, with dynamo tracing ``torch.autograd.grad``;
        see :meth:`_compile_and_call`."""
        options = lambda wrapper: {"cpp_wrapper": True} if wrapper else None  # noqa: E731
        config = torch._dynamo.config  # read while dynamo traces; set and restored by hand (a patch()
        traced, config.trace_autograd_ops = config.trace_autograd_ops, True  # context costs 30 us a step)
        try:
            return self._compile_and_call(attr, lambda wrapper: torch.compile(impl, options=options(wrapper)), args,
                                          what, instead)
        finally:
            config.trace_autograd_ops = traced

    def _compile_and_call(self, attr: str, build, args: tuple, what: str, instead: str):
        """The program kept in ``attr`` called with ``args``; the first call builds it with ``build(wrapper)``
        (announced and timed in the log), where a small CPU step first tries inductor's C++ wrapper
        (:meth:`wrapped_step`) and without it if that fails.  None if it does not compile (the warning
        names ``what`` failed and what the run does ``instead``)."""
        compiled = getattr(self, attr)
        if compiled is not None:
            return compiled(*args)
        logger.info("compiling the step (torch.compile); the first steps wait for it")
        t0 = time.perf_counter()
        while True:
            wrapper = self.wrapped_step()
            try:
                compiled = build(wrapper)
                out = compiled(*args)
            except Exception as e:  # no C++ compiler, an operation that cannot be traced, ...
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                if not wrapper:
                    logger.warning("torch.compile of %s failed (%s); %s", what, first, instead)
                    return None
                logger.warning("torch.compile with a C++ wrapper failed (%s); compiling without", first)
                self.use_cpp_wrapper = False
                continue
            logger.info("compiled the step in %.1f s", time.perf_counter() - t0)
            setattr(self, attr, compiled)
            return out

    def step(self, step: int, wait: bool = True):
        """One optimisation step (1-based ``step``); returns (loss, loss per term, lr), summed over the
        ranks.  With ``wait`` False the sum is only started (:meth:`_reduce_losses`): the loss and its terms
        are None, and the sum arrives, with the next step's, through :meth:`finish_losses`."""
        tr = self.cfg.training
        entering = self.schedule.stage_of(step) != self.stage.index
        if entering:
            self._enter(self.schedule.stage_of(step))
        quasi_newton = self.in_lbfgs_phase(step)
        if quasi_newton and self.lbfgs is None:
            self.lbfgs = self._new_lbfgs()
            logger.info("L-BFGS from step %d to %d (history %d, step length %g, no line search); %s", step,
                        schedulers.stage_end(self.cfg, step), tr.lbfgs_history, tr.lbfgs_lr,
                        f"the collocation points are redrawn every {tr.lbfgs_resample_every} steps"
                        if tr.lbfgs_resample_every else "the collocation points are not redrawn until then")
        t0 = time.perf_counter()
        self.bytes_sent += self.dist.refresh_halo()  # before preparing: frozen halo subdomains are summed then
        t1 = time.perf_counter()
        every = tr.lbfgs_resample_every if quasi_newton else tr.resample_every
        if every and step > 1 and (step - 1) % every == 0:
            self.resample(adaptive=True)
            if quasi_newton:
                self.lbfgs.new_loss()
        elif entering:
            self._prepare_terms()
        if entering:
            logger.info("%s (%d points)", self.stage.text, sum(t.n_global or t.x.shape[0] for t in self.terms))
        lr = schedulers.learning_rate(self.cfg, step)
        self.optimizer.lr = lr
        parts = self._whole_step(lr) if self.whole_step(quasi_newton) else None
        if parts is not None:
            t2 = t3 = t4 = time.perf_counter()
        else:
            parts = self._gradients()
            t2 = time.perf_counter()
            self.bytes_sent += self.dist.reduce_gradients(self.model.nets, self.problem.parameters().values(),
                                                          everywhere=not quasi_newton)
            t3 = time.perf_counter()
            if quasi_newton:
                self.lbfgs.step()
                lr = self.lbfgs.last_t
            else:
                self.optimizer.step()
            t4 = time.perf_counter()
        self._reduce_losses(step, parts, received() > 0, wait)
        self.comm_seconds += (t1 - t0) + (t3 - t2) + (time.perf_counter() - t4)
        if self.reduced and self.reduced[-1][0] == step:
            summed = self.reduced[-1][1]
            return float(summed.sum()), summed, lr
        return None, None, lr

    def _reduce_losses(self, step: int, parts: torch.Tensor | None, stop: bool, wait: bool) -> None:
        """Sum a step's loss terms ``parts`` and whether a stop was asked for (``stop``) over the ranks
        (one reduction for both), or, on an ordinary step (``wait`` False), only start it and finish
        it at the next step, when it has long arrived.  Under MPI the sum is started as a non-blocking
        reduction, so that no collective waits for every rank on an ordinary step.  On one process
        the terms are copied on their device and read at the next step, after that step's work is
        queued: on a GPU a read waits for the device to finish, and a read at every step would keep
        the host from queueing the next step while the device runs this one.  The sums arrive in
        :attr:`reduced` as (step, terms) in step order; ``parts`` None finishes a pending sum only."""
        if self._pending is not None:
            done, finish = self._pending
            self._pending = None
            self._summed(done, finish())
        if parts is None:
            return
        if not (wait or self.ctx.parallel):
            self.stop_agreed = self.stop_agreed or stop  # a stop needs no other rank's word
            kept = parts.detach().to(torch.float64, copy=True)  # a replayed graph overwrites its output
            self._pending = (step, lambda: _local(kept, stop))
        elif wait:
            self._summed(step, self.ctx.allreduce(_local(parts, stop)))
        else:
            self._pending = (step, self.ctx.iallreduce(_local(parts, stop)))

    def _summed(self, step: int, summed: np.ndarray) -> None:
        self.stop_agreed = self.stop_agreed or bool(summed[-1] > 0)
        self.reduced.append((step, summed[:-1]))

    def arrived(self) -> list:
        """The sums of loss terms that have arrived, as (step, terms (T,)) in step order; forgets them."""
        out = list(self.reduced)
        self.reduced.clear()
        return out

    def finish_losses(self) -> list:
        """:meth:`arrived` after waiting for a pending sum."""
        self._reduce_losses(0, None, False, True)
        return self.arrived()

    def in_lbfgs_phase(self, step: int) -> bool:
        """Whether ``step`` uses L-BFGS (see :func:`fbpinn.schedulers.in_lbfgs_phase`)."""
        return schedulers.in_lbfgs_phase(self.cfg, step)

    def _new_lbfgs(self) -> LBFGS:
        tr = self.cfg.training
        return LBFGS(self.params, lr=tr.lbfgs_lr, history=tr.lbfgs_history, space=self._lbfgs_space())

    def _lbfgs_space(self) -> FlatSpace:
        """The vector L-BFGS works on: the rows of the stacked tensors this rank holds that train in
        this stage (time-marching leaves the frozen slabs out: their gradient is 0), and the learned
        constants.  Under MPI each element counts in the inner products on the rank that owns its
        subdomain (rank 0 for replicated levels and the constants), and the ranks' parts of an inner
        product are summed in rank order, so that every rank takes the same direction."""
        levels = {id(t): level for _, t, level in self.named_tensors()}
        trainable = self.stage.trainable
        parallel = self.ctx.parallel  # one process owns everything: no weights, no reduction
        rows, weights = [], []
        for p in self.params:
            level = levels[id(p)]
            if level is None:  # a learned constant
                rows.append(None)
                if parallel:
                    weights.append(torch.full((p.numel(),), float(self.ctx.rank == 0), dtype=torch.float64))
                continue
            net = self.model.nets[level]
            slots = torch.arange(net.n_held)
            if trainable is not None and level == 0:
                slots = slots[trainable[net.held]]
            rows.append(None if len(slots) == net.n_held else slots)
            if parallel:
                owned = torch.isin(slots, self.dist.owned_slots(level, net)).double()
                weights.append(owned.repeat_interleave(p[0].numel()))
        weight = torch.cat(weights).to(self.model.device) if weights else None
        return FlatSpace(self.params, rows, weight, self.ctx.allgather_sum if parallel else None)

    def _test_block(self, points=None):
        """Offset and shape of this rank's box of the test grid (or of the grid of ``points`` per
        axis), and its points (float64)."""
        offset, shape, axes = [], [], []
        box, closed = self.dist.region, self.dist.closed
        for d, axis in enumerate(self.problem.domain.grid_axes(points or self.cfg.test.points)):
            idx = box.contains_axis(d, axis, closed[d]).nonzero()[:, 0]
            offset.append(int(idx[0]) if len(idx) else 0)
            shape.append(len(idx))
            axes.append(axis[idx])
        mesh = torch.meshgrid(*axes, indexing="ij")
        return offset, shape, torch.stack([m.reshape(-1) for m in mesh], dim=1)  # first axis slowest

    def _reference_block(self):
        """This rank's block of the problem's reference solution (flattened), or None.

        Rank 0 computes the whole test grid's reference (filling any cache) and sends it
        to the others."""
        axes = self.problem.domain.grid_axes(self.cfg.test.points)
        ref = None
        if self.ctx.rank == 0:
            t0 = time.perf_counter()
            ref = self.problem.reference(axes)
            if ref is not None:
                logger.info("reference solution on the %s test grid: %s (%.1f s)",
                            "x".join(map(str, self.cfg.test.points)), self.problem.reference_name,
                            time.perf_counter() - t0)
        if self.ctx.parallel:
            ref = self.ctx.bcast(None if ref is None else ref.numpy())
            ref = None if ref is None else torch.from_numpy(ref)
        if ref is None:
            return None
        box = tuple(slice(o, o + n) for o, n in zip(self.test_offset, self.test_shape))
        return ref.reshape(*self.cfg.test.points, self.n_fields)[box].reshape(-1, self.n_fields)

    def evaluate(self):
        """This rank's test-grid fields (n_local, F) and the global relative L2 errors: over all
        fields, then per field (F + 1 values; nan without an exact solution)."""
        self.dist.refresh_halo()
        with torch.no_grad():
            if self.test_batch is not None:
                u = self.model(self.test_batch)[0].cpu()
            else:
                u = self.model.value(self.x_test)
        errors = np.full(self.n_fields + 1, math.nan)
        if self.exact_local is not None:
            e = self.exact_local
            sums = self.ctx.allreduce(np.concatenate([((u.double() - e) ** 2).sum(0).numpy(), (e * e).sum(0).numpy()]))
            num, den = sums[:self.n_fields], sums[self.n_fields:]
            errors[0] = math.sqrt(num.sum() / den.sum())
            with np.errstate(divide="ignore", invalid="ignore"):
                errors[1:] = np.sqrt(num / den)  # a field whose exact value is zero everywhere: inf or nan
        return u, errors

    def solution_block(self, u_local: torch.Tensor) -> dict:
        """This rank's box of the test grid: offset, shape, u and the exact solution."""
        shape = (*self.test_shape, self.n_fields)
        exact = None if self.exact_local is None else self.exact_local.numpy().reshape(shape)
        return {"rank": self.ctx.rank, "offset": self.test_offset, "shape": self.test_shape,
                "u": u_local.double().numpy().reshape(shape), "exact": exact, "target": self.target,
                "fields": tuple(self.problem.fields)}

    def snapshot(self, step: int, u_local, elapsed: float) -> None:
        """Append the fields after ``step`` to the snapshots file (collective; rank 0 writes): on the
        test grid (``u_local``, this rank's block, evaluated here if None) or on
        ``output.snapshot_points``."""
        out = self.cfg.output
        points = out.snapshot_points or self.cfg.test.points
        if out.snapshot_points and list(out.snapshot_points) != list(self.cfg.test.points):
            if self._snapshot_block is None:
                self._snapshot_block = self._test_block(points)
            offset, shape, x = self._snapshot_block
            self.dist.refresh_halo()
            u_local = self.model.value(x)
        else:
            offset, shape = self.test_offset, self.test_shape
            if u_local is None:
                u_local, _ = self.evaluate()
        parts = self.ctx.gather({"offset": offset, "shape": shape,
                                 "u": u_local.double().numpy().reshape(*shape, self.n_fields)})
        if parts is None:
            return
        u = np.zeros((*points, self.n_fields))
        for p in parts:
            u[tuple(slice(o, o + n) for o, n in zip(p["offset"], p["shape"]))] = p["u"]
        self.snapshots.append(step, elapsed, u, provenance.closed(self.provenance, step))

    def gather_solution(self, u_local: torch.Tensor):
        """The test-grid solution and exact solution (or None) assembled on rank 0; (None, None) elsewhere."""
        parts = self.ctx.gather(self.solution_block(u_local))
        if parts is None:
            return None, None
        shape = (*self.cfg.test.points, self.n_fields)
        u = np.zeros(shape)
        exact = None if self.exact_local is None else np.zeros(shape)
        for p in parts:
            box = tuple(slice(o, o + n) for o, n in zip(p["offset"], p["shape"]))
            u[box] = p["u"]
            if exact is not None:
                exact[box] = p["exact"]
        flat = lambda a: a.reshape(-1) if self.n_fields == 1 else a.reshape(-1, self.n_fields)  # noqa: E731
        return flat(u), None if exact is None else flat(exact)

    def traces(self) -> dict | None:
        """The fields at the receivers (``output.receivers``) at ``output.receiver_samples`` times
        over the time axis, and their target (collective; on rank 0, None elsewhere and without
        receivers): ``{"positions" (R, d - 1), "t" (T,), "u" (R, T, F), "target" (R, T, F) or None,
        "kind" ("exact" or "reference"), "method"}``.  Each rank evaluates the samples in its own
        region, so every sample is evaluated once, by the rank whose subdomains hold it."""
        from .config import receiver_positions

        out = self.cfg.output
        if not out.receivers and not out.receivers_file.strip():
            return None
        positions = receiver_positions(self.cfg)
        lo, hi = self.problem.domain.lo[-1], self.problem.domain.hi[-1]
        times = np.linspace(lo, hi, out.receiver_samples)
        r, t = np.meshgrid(np.arange(len(positions)), np.arange(len(times)), indexing="ij")
        x = torch.from_numpy(np.concatenate([positions[r.ravel()], times[t.ravel(), None]], axis=1))  # (R T, d)
        mine = self.dist.region.contains(x, self.dist.closed).nonzero()[:, 0]
        self.dist.refresh_halo()
        values = self.model.value(x[mine].to(self.dtype)).double().numpy() if len(mine) else \
            np.zeros((0, self.n_fields))
        parts = self.ctx.gather({"index": mine.numpy(), "u": values})
        if parts is None:
            return None
        u = np.full((len(x), self.n_fields), np.nan)
        for p in parts:
            u[p["index"]] = p["u"]
        shape = (len(positions), len(times), self.n_fields)
        exact = self.problem.exact(x.to(self.dtype))
        kind, method = "exact", ""
        if exact is not None:
            target = exact.double().cpu().numpy().reshape(shape)
        else:
            ref = self.problem.reference_traces(positions, times, self.problem.domain.grid_axes(self.cfg.test.points))
            target = None if ref is None else np.asarray(ref, dtype=np.float64).reshape(shape)
            kind, method = "reference", self.problem.reference_name
        return {"positions": positions, "t": times, "u": u.reshape(shape), "target": target, "kind": kind,
                "method": method}

    # ------------------------------------------------------------------ state
    def named_tensors(self):
        """``(key, tensor, level or None)`` of everything the optimiser trains: each level's stacked
        parameters (key ``level<i>/<name>``) and the problem's learned constants (``problem/<name>``,
        level None)."""
        for level, name, t in stacked_parameters(self.model.nets):
            yield parameter_key(level, name), t, level
        for name, p in self.problem.parameters().items():
            yield f"problem/{name}", p, None

    def wall_time(self) -> float:
        """Training seconds so far, the earlier segments of a resumed run included."""
        return self._elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def state_dict(self, step: int) -> dict | None:
        """The whole state of the run after ``step`` as NumPy arrays and plain values on rank 0
        (None on the others; every rank calls it): full stacked parameters and Adam's moments of
        every level, learned constants, step counts, random states, the history so far and the
        provenance.  Independent of the number of ranks; :mod:`fbpinn.checkpoint` writes it."""
        opt = self.optimizer
        index = {id(p): i for i, p in enumerate(opt.params)}
        quasi = self.lbfgs.state_dict() if self.lbfgs is not None and self.in_lbfgs_phase(step) else None
        arrays, steps, lbfgs_arrays = {}, {}, {}
        for level, net in enumerate(self.model.nets):
            tensors, extra = {}, {}
            for key, t, lv in self.named_tensors():
                if lv == level:
                    i = index[id(t)]
                    tensors.update({f"parameters/{key}": t, f"exp_avg/{key}": opt.exp_avg[i],
                                    f"exp_avg_sq/{key}": opt.exp_avg_sq[i]})
                    extra.update(_lbfgs_tensors(quasi, key, i))
                    steps[key] = float(opt.steps[i])
            full = self.dist.gather_stacked(level, net, {**tensors, **extra})
            if full is not None:
                arrays.update({k: full[k] for k in tensors})
                lbfgs_arrays.update({k: full[k] for k in extra})
        if self.ctx.rank != 0:
            return None
        for key, t, lv in self.named_tensors():
            if lv is None:  # learned constants: replicated, identical on every rank
                i = index[id(t)]
                arrays.update({f"parameters/{key}": t.detach().cpu().numpy(),
                               f"exp_avg/{key}": opt.exp_avg[i].cpu().numpy(),
                               f"exp_avg_sq/{key}": opt.exp_avg_sq[i].cpu().numpy()})
                lbfgs_arrays.update({k: v.detach().cpu().numpy() for k, v in _lbfgs_tensors(quasi, key, i).items()})
                steps[key] = float(opt.steps[i])
        cfg = self.cfg
        lbfgs_state = None if quasi is None else {
            "arrays": lbfgs_arrays, "rho": np.asarray(quasi["rho"], dtype=np.float64), "pairs": len(quasi["rho"]),
            "steps": quasi["steps"], "gamma": float(quasi["gamma"]), "gram": np.asarray(quasi["gram"], dtype=np.float64),
            "slots": np.asarray(quasi["slots"], dtype=np.int64)}
        return {"step": step, "stage": self.stage.index, "arrays": arrays, "adam_steps": steps,
                "sampler_state": self.sample_state.numpy(), "torch_state": torch.get_rng_state().numpy(),
                "adaptive": self.adaptive_chosen,
                "history": history.copy(self.history), "loss_per_step": list(self.loss_per_step),
                "wall_time": self.wall_time(), "n_ranks": self.ctx.size, "config": to_toml(cfg),
                "term_names": list(self.term_names), "fields": tuple(self.problem.fields), "lbfgs": lbfgs_state,
                "problem_module": cfg.problem_module,
                "problem_module_sha256": cfg.problem_module_sha256,
                "provenance": provenance.closed(self.provenance, step)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Go on from a state of :meth:`state_dict` (written by any number of ranks): the schedule's
        stage, parameters, optimiser state, collocation points, random states and history."""
        index = self.schedule.stage_of(state["step"])
        if index != self.stage.index:
            self._enter(index)
        opt = self.optimizer
        position = {id(p): i for i, p in enumerate(opt.params)}
        arrays = state["arrays"]
        for key, t, level in self.named_tensors():
            i = position[id(t)]
            rows = None if level is None else self.model.nets[level].held.numpy()
            for dst, kind in ((t, "parameters"), (opt.exp_avg[i], "exp_avg"), (opt.exp_avg_sq[i], "exp_avg_sq")):
                src = _held_rows(arrays.get(f"{kind}/{key}"), f"{kind}/{key}", rows, dst)
                dst.copy_(torch.from_numpy(src).to(dst.device, dst.dtype))
            opt.steps[i].fill_(state["adam_steps"][key])
        self._load_lbfgs(state)
        self.dist.halo_stale = True  # one exchange at the next step (the halo rows read are the owners' anyway)
        # The points drawn at the last resampling before the checkpoint, prepared with the restored
        # parameters (a time-marching batch holds the frozen subdomains' part of the solution).
        self.gen.set_state(torch.from_numpy(np.asarray(state["sampler_state"], dtype=np.uint8)))
        self.resample(chosen=state.get("adaptive"))
        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch_state"], dtype=np.uint8)))
        self.history = history.copy(state["history"])
        self.loss_per_step = list(state["loss_per_step"])
        self.term_names = list(state["term_names"])
        self._elapsed, self._t0 = float(state["wall_time"]), None
        self.first_step = state["step"] + 1

    def _load_lbfgs(self, state: dict) -> None:
        """The L-BFGS phase's state from a checkpoint's ``state["lbfgs"]`` (this rank's rows of the full
        arrays), where the checkpoint's step lies in this run's L-BFGS phase; else no L-BFGS yet (a
        run whose training.steps moved the phase later goes on with Adam)."""
        quasi = state.get("lbfgs")
        self.lbfgs = None
        if quasi is None or not self.in_lbfgs_phase(state["step"]):
            return
        pairs = int(quasi["pairs"])
        per_key = {}
        for key, t, level in self.named_tensors():
            rows = None if level is None else self.model.nets[level].held.numpy()
            for name in ["prev_x", "prev_g", *(f"{v}{k}" for k in range(pairs) for v in "sy")]:
                src = _held_rows(quasi["arrays"].get(f"{name}/{key}"), f"lbfgs/{name}/{key}", rows, t)
                per_key.setdefault(name, {})[id(t)] = torch.from_numpy(src)
        tensors = lambda name: [per_key[name][id(p)] for p in self.params]  # noqa: E731
        self.lbfgs = self._new_lbfgs()
        self.lbfgs.load_state_dict({
            "lr": self.cfg.training.lbfgs_lr, "history": self.cfg.training.lbfgs_history,
            "s": [tensors(f"s{k}") for k in range(pairs)], "y": [tensors(f"y{k}") for k in range(pairs)],
            "rho": list(np.asarray(quasi["rho"], dtype=np.float64)), "gamma": float(quasi["gamma"]),
            "prev_x": tensors("prev_x"), "prev_g": tensors("prev_g"), "steps": int(quasi["steps"]),
            "gram": quasi.get("gram"), "slots": quasi.get("slots")})

    # ------------------------------------------------------------------ training
    def run(self, checkpoints=None, resume: dict | None = None) -> Run:
        """Train to ``training.steps``; returns the :class:`Run`.

        ``checkpoints``: a :class:`fbpinn.checkpoint.Checkpoints` to write to (every
        ``checkpoint.every`` steps, at the end, and when SIGTERM or SIGUSR1 arrives, after
        which :class:`Stopped` is raised).  ``resume``: a state read from a checkpoint, to go
        on from."""
        from . import checkpoint as ckpt

        cfg, tr = self.cfg, self.cfg.training
        self.history, self.loss_per_step = history.empty(self.n_fields), []
        self.term_names = [t.name for t in self.terms]
        self._elapsed, self._t0, self.first_step = 0.0, None, 1
        if resume is not None:
            self.load_state_dict(resume)
        first, hist = self.first_step, self.history
        problem = self.problem
        obs = problem.observations()
        run = Run(cfg, self.model, problem, self.term_names, start_time=time.time(), n_ranks=self.ctx.size,
                  target=self.target, axes=tuple(problem.axes), fields=tuple(problem.fields),
                  grid=[a.double().numpy() for a in problem.domain.grid_axes(cfg.test.points)],
                  domain=(list(problem.domain.lo), list(problem.domain.hi)),
                  observations=None if obs is None else (obs[0].double().numpy(), obs[1].double().numpy()),
                  reference_method=problem.reference_name)
        if checkpoints is not None and cfg.output.snapshot_every:
            from .io import Snapshots

            points = cfg.output.snapshot_points or cfg.test.points
            if self.ctx.rank == 0:  # a resumed run drops the snapshots its checkpoint did not see
                self.snapshots = Snapshots(Path(checkpoints.folder).parent / "snapshots.h5", self.problem, cfg,
                                           self.problem.domain.grid_axes(points), first - 1)
        self.provenance = provenance.begin(self.ctx, cfg, self.model.device, torch.get_num_threads(), first,
                                           provenance.earlier_segments(resume))
        self._log_header()
        if resume is not None:
            logger.info("resumed from %s at step %d of %d (written by %d rank(s))", checkpoints.last if checkpoints
                        else "a checkpoint", resume["step"], tr.steps, resume["n_ranks"])
        self._t0 = time.perf_counter()
        t_log, step_log = self._t0, first - 1
        u_local = None
        with stop_signals() if checkpoints is not None else contextlib.nullcontext():
            for step in range(first, tr.steps + 1):
                if self.schedule.stage_of(step) != self.stage.index:  # measure each stage's speed on its own
                    t_log, step_log = time.perf_counter(), step - 1
                last = step == tr.steps
                snap = checkpoints is not None and cfg.output.snapshot_every and step % cfg.output.snapshot_every == 0
                # Steps that log, evaluate or write need their own loss now; the others finish its sum
                # over the ranks at the next step (no rank waits for all the others on them).
                due = (step % tr.eval_every == 0 or last or step == 1 or step % tr.log_every == 0 or snap
                       or (checkpoints is not None and checkpoints.due(step, last)))
                value, parts, lr = self.step(step, wait=due)
                # A stop agreed on the previous step's sum writes a checkpoint now: it needs this step's.
                for done, terms in self.finish_losses() if self.stop_agreed else self.arrived():
                    self._record_loss(done, terms, checkpoints)
                if step % tr.eval_every == 0 or last or step == 1:
                    u_local, errors = self.evaluate()
                    history.record(hist, step, value, parts.tolist(), errors, self.wall_time(), lr, self.stage.index)
                if snap:
                    evaluated = hist["step"] and hist["step"][-1] == step
                    self.snapshot(step, u_local if evaluated else None, self.wall_time())
                if step % tr.log_every == 0 or last:
                    now = time.perf_counter()
                    rate = (step - step_log) / max(now - t_log, 1e-9)
                    t_log, step_log = now, step
                    eta = remaining_seconds(self.schedule, step, tr.steps, rate, self.stage_points())
                    err_text = f"  rel_l2 {hist['rel_l2'][-1]:.3e}" if hist["step"][-1] == step else ""
                    if err_text and self.n_fields > 1:
                        err_text += " (" + ", ".join(f"{name} {e:.3e}" for name, e in
                                                     zip(self.problem.fields, hist["rel_l2_fields"][-1])) + ")"
                    learned = "".join(f"  {k} {v.item():.5g}" for k, v in self.problem.parameters().items())
                    if self.causal_weights is not None:  # how far along t the residual is let in yet
                        learned += f"  causal weight of the last bin {self.causal_weights[-1]:.2g}"
                    logger.info("step %*d/%d  loss %.4e%s%s  %.0f steps/s  ETA %s", len(str(tr.steps)), step,
                                tr.steps, value, err_text, learned, rate, _hms(eta))
                if checkpoints is not None and (checkpoints.due(step, last) or self.stop_agreed):
                    if not ckpt.all_finite(self):
                        kept = f"; the last good checkpoint is {checkpoints.last}" if checkpoints.last else ""
                        raise TrainingError(f"parameters or Adam's moments are no longer finite after step {step}; "
                                            f"no checkpoint written{kept}")
                    self.resync_halo()  # the checkpoint holds the owners' values: go on from them
                    checkpoints.save(self, step)
                    if self.stop_agreed and not last:
                        # No rank exits before rank 0 has written the checkpoint: srun --kill-on-bad-exit
                        # ends the whole step when the first task exits with status 75.
                        self.ctx.barrier()
                        raise Stopped(step, tr.steps, received(), checkpoints.last)
        run.wall_time = self.wall_time()
        if self.ctx.parallel and first <= tr.steps:
            logger.info("communication: %.1f%% of the training time, %.0f bytes sent per step by rank 0",
                        100 * self.comm_seconds / max(run.wall_time - self._elapsed, 1e-9),
                        self.bytes_sent / (tr.steps - first + 1))
        run.history, run.loss_per_step, run.term_names = self.history, self.loss_per_step, self.term_names
        if u_local is None:  # resumed at the last step: nothing was trained, evaluate once
            u_local, _ = self.evaluate()
        if self.ctx.parallel and cfg.output.per_rank:
            run.block = self.solution_block(u_local)  # each rank writes its own part file
            run.has_exact = self.exact_local is not None
        else:
            run.u_test, run.u_exact = self.gather_solution(u_local)
            run.has_exact = run.u_exact is not None
        run.receivers = self.traces()
        run.levels = [{"shape": list(lv.shape), "centres": lv.centres().numpy(), "half_widths": lv.half_widths().numpy()}
                      for lv in self.model.levels]  # as the last stage of the schedule leaves them
        run.parameters = self.dist.gather_parameters(self.model.nets) or {}
        run.learned = {k: v.item() for k, v in self.problem.parameters().items()}
        run.provenance = provenance.closed(self.provenance, tr.steps)
        return run

    def resync_halo(self) -> None:
        """The owners' parameters and Adam moments in this rank's halo copies (see
        :meth:`fbpinn.parallel.Distribution.resync_halo`); collective."""
        exchange = self.dist.exchange
        if exchange is None:
            return
        opt = self.optimizer
        index = {id(p): i for i, p in enumerate(opt.params)}
        tensors = exchange.tensors()
        moments = [[opt.exp_avg[index[id(t)]] for t in tensors], [opt.exp_avg_sq[index[id(t)]] for t in tensors]]
        self.bytes_sent += self.dist.resync_halo(moments)

    def _record_loss(self, step: int, terms: np.ndarray, checkpoints) -> None:
        """Append ``step``'s loss to the loss of every step; TrainingError where it is not finite."""
        value = float(terms.sum())
        self.loss_per_step.append(value)
        if not math.isfinite(value):
            kept = f"; the last checkpoint is {checkpoints.last}" if checkpoints and checkpoints.last else ""
            raise TrainingError(f"loss became {value} at step {step} (terms: "
                                + ", ".join(f"{t.name}={p:.3g}" for t, p in zip(self.terms, terms))
                                + f"); lower training.lr or check the problem's scales{kept}")

    def stage_points(self) -> list:
        """The global number of loss points of every stage of the schedule (the ETA's measure of a
        stage's cost per step); counted once, collectively, from the current points.  [0.0] for a
        schedule of one stage (nothing to compare: no points are counted)."""
        if self._stage_points is None:
            counts = np.zeros(self.schedule.n_stages)
            if self.schedule.n_stages > 1:
                for i in range(self.schedule.n_stages):
                    st = self.schedule.stage(i)
                    counts[i] = sum(float(self._in_slab(t.x, st.t_min, st.t_max).sum()) for t in self.full_terms)
                counts = self.ctx.allreduce(counts)
            self._stage_points = counts.tolist()
        return self._stage_points

    def _log_header(self) -> None:
        tr = self.cfg.training
        pairs = self.pairs()
        shapes = [list(lv.shape) for lv in self.model.levels]
        n_params = sum(sum(p[0].numel() for p in net.parameters()) * lv.n_subdomains
                       for net, lv in zip(self.model.nets, self.model.levels))
        n_params += sum(p.numel() for p in self.problem.parameters().values())
        logger.info("%s: %d subdomain(s) %s, %d parameters, %s, %s, %d thread(s), %d rank(s)",
                    self.problem.name, sum(lv.n_subdomains for lv in self.model.levels),
                    " + ".join(map(str, shapes)), n_params, tr.dtype, self.model.device, torch.get_num_threads(),
                    self.ctx.size)
        held = ", ".join(f"{net.n_held}" + ((" own + halo" if self.dist.is_split(i) else " replicated")
                                             if self.ctx.parallel else "")
                         for i, net in enumerate(self.model.nets))
        logger.info("%s %s subdomain(s), %d points, %d (point, subdomain) pairs",
                    "rank 0 holds" if self.ctx.parallel else "holds", held, self.n_points(), pairs)
        if self.ctx.parallel:  # collective: every rank logs (rank 0 prints) the ranks left without points
            counts = np.zeros(self.ctx.size)
            counts[self.ctx.rank] = self.n_points()
            empty = np.flatnonzero(self.ctx.allreduce(counts) == 0).tolist()
            if empty:
                logger.info("rank(s) %s hold no points%s: they wait in every exchange with nothing to "
                            "compute (fewer ranks or more points balance the work)", ", ".join(map(str, empty)),
                            " in this stage" if self.schedule.n_stages > 1 else "")
        if self.schedule.n_stages > 1:
            rest = tr.steps - self.schedule.slabs * self.schedule.steps_per_slab
            logger.info("time-marching: %d slabs of %d steps%s; %s", self.schedule.slabs,
                        self.schedule.steps_per_slab,
                        f", then {rest} steps with all subdomains" if rest else "", self.stage.text)


class Pass(NamedTuple):
    """One model evaluation per step: the prepared batch and the indices of the terms it serves, in
    the order of their rows in the batch (each term's rows follow from the sizes of those before)."""

    batch: object  # fbpinn.model.Batch
    members: list  # [term index]


def _stacked(r):
    """A residual as one tensor: (n,) or (n, E), from (n,), (n, E) or E tensors (n,), one per
    equation of a system."""
    return torch.stack(list(r), dim=-1) if isinstance(r, (tuple, list)) else r


def _held_rows(full, name: str, rows, like: torch.Tensor) -> np.ndarray:
    """This rank's ``rows`` (None: all) of a checkpoint's full array ``full`` called ``name``, checked
    to have the shape of ``like``; CheckpointError where it is missing or of another shape."""
    from .checkpoint import CheckpointError

    if full is None:
        raise CheckpointError(f"checkpoint has no {name}")
    src = np.asarray(full) if rows is None else np.asarray(full)[rows]
    if tuple(src.shape) != tuple(like.shape):
        raise CheckpointError(f"checkpoint {name} has shape {src.shape}, the model {tuple(like.shape)}")
    return src


def _lbfgs_tensors(quasi: dict | None, key: str, i: int) -> dict:
    """The L-BFGS state of parameter tensor ``i`` (key ``key``) by name (``s<k>/<key>``, ``y<k>/<key>``,
    ``prev_x/<key>``, ``prev_g/<key>``), from an :meth:`fbpinn.optim.LBFGS.state_dict`; {} without one."""
    if quasi is None:
        return {}
    out = {f"prev_x/{key}": quasi["prev_x"][i], f"prev_g/{key}": quasi["prev_g"][i]}
    for k, (s, y) in enumerate(zip(quasi["s"], quasi["y"])):
        out.update({f"s{k}/{key}": s[i], f"y{k}/{key}": y[i]})
    return out


class Stopped(Exception):
    """Training stopped early on a signal, after writing a checkpoint."""

    def __init__(self, step: int, steps: int, signum: int, path):
        import signal

        self.step, self.steps, self.path = step, steps, path
        self.signal = signal.Signals(signum).name if signum else "a signal to another rank"
        super().__init__(f"stopped at step {step} of {steps} on {self.signal}; checkpoint {path}")


def remaining_seconds(schedule, step: int, steps: int, rate: float, points) -> float:
    """Estimated seconds from after ``step`` to ``steps``, given the current stage's measured
    ``rate`` (steps per second) and ``points[i]``, the loss points of stage i of ``schedule``
    (an object with ``n_stages`` and ``stage_of(step)``, nondecreasing in the step).

    The current stage's remaining steps go at ``rate``; a later stage's at ``rate`` scaled by
    the ratio of the current stage's points to its own (a step's cost grows with its points:
    time-marching's final stage, where every subdomain trains, takes all the points, each slab
    only those of its own support).  0 when ``rate`` is not positive."""
    if rate <= 0 or step >= steps:
        return 0.0
    current = schedule.stage_of(step)
    base = max(float(points[current]), 1.0) if len(points) > current else 1.0
    total, lo = 0.0, step + 1
    while lo <= steps:
        stage = schedule.stage_of(lo)
        a, b = lo, steps  # the last step of this stage: binary search on the nondecreasing stage_of
        while a < b:
            mid = (a + b + 1) // 2
            a, b = (mid, b) if schedule.stage_of(mid) == stage else (a, mid - 1)
        scale = max(float(points[stage]), 1.0) / base if len(points) > stage and stage != current else 1.0
        total += (a - lo + 1) / rate * scale
        lo = a + 1
    return total


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train(cfg: Config, ctx: Context | None = None, checkpoints=None, resume: dict | None = None) -> Run:
    """Train the model a config describes; returns the :class:`Run`.

    With ``ctx`` an MPI :class:`Context` of several ranks, every rank calls this and
    the returned run's solution and parameters are complete on rank 0 only.
    ``checkpoints`` and ``resume``: see :meth:`Trainer.run`."""
    ctx = ctx or Context(None)
    configure_threads(cfg.training.threads, ctx)
    return Trainer(cfg, ctx).run(checkpoints, resume)
