"""Checks run on every rank before ``fbpinn train`` creates anything or trains a step.

Two kinds of check, each raising :class:`PreflightError` with a message that names what
to change:

- :func:`check_paths`: the results folder, ``run.h5``, ``checkpoints/`` and (with
  ``output.per_rank``) this rank's part file can be written and are not blocked by
  something of the wrong kind; an existing ``run.h5`` is only replaced when the user says so.
  Nothing is created: a folder that does not exist yet is checked through its nearest
  existing parent.
- :func:`check_memory`: an estimate of the memory the prepared batch and one training step
  need on this rank (:func:`estimate_memory`) against what the device it runs on has
  (:func:`available_memory`).

The CLI agrees on the outcome over all ranks (``Context.first_error``) and only then lets
rank 0 create the folder (:func:`fbpinn.io.new_folders`), which removes what it created
again if the run ends without leaving anything in it.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path


class PreflightError(ValueError):
    """The run cannot start: a blocked path, too little memory."""


# ----------------------------------------------------------------------------- paths
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, target: Path) -> None:
    """Create and remove a probe file in the existing ``folder`` (``target`` itself or the parent it
    would be created in); raise naming ``target`` if that is impossible."""
    where = "" if folder == target else f" (it would be created in {folder})"
    if not folder.is_dir():
        raise PreflightError(f"cannot write results to {target}: {folder} exists and is not a folder")
    probe = folder / f".fbpinn-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PreflightError(f"cannot write results to {target}{where}: {e.strerror or e}") from None


def check_paths(out: Path, *, resume: bool, overwrite: bool, part: Path | None = None) -> None:
    """Raise :class:`PreflightError` if the results could not be written to ``out``.

    Checks, without creating anything: ``out`` is a folder or can be created;
    ``out/run.h5`` and ``part`` (this rank's part file, if any) are absent or files, and an
    existing ``run.h5`` is replaced only with ``overwrite`` or when resuming (the caller
    checks that a checkpoint is actually resumed); ``out/checkpoints`` is absent or a folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PreflightError(f"results folder {out} exists and is not a folder")
    _probe_writable(_nearest_existing(out), out)
    results = out / "run.h5"
    if results.is_symlink() or (results.exists() and not results.is_file()):
        raise PreflightError(f"{results} exists and is not a plain file: the results could not be written "
                             "there after training; remove it or train into another --out folder")
    if results.is_file() and not (overwrite or resume):
        raise PreflightError(f"{results} holds a finished run; train into another --out folder, or pass "
                             "--overwrite to replace it")
    folder = out / "checkpoints"
    if folder.is_symlink() and not folder.is_dir() or (folder.exists() and not folder.is_dir()):
        raise PreflightError(f"{folder} exists and is not a folder: checkpoints could not be written; "
                             "remove it or train into another --out folder")
    if folder.is_dir():
        _probe_writable(folder, folder)
    if part is not None and (part.is_symlink() or (part.exists() and not part.is_file())):
        raise PreflightError(f"{part} exists and is not a plain file: this rank's part of the solution could "
                             "not be written there; remove it or train into another --out folder")


# ----------------------------------------------------------------------------- memory
@dataclass
class MemoryEstimate:
    """What :func:`estimate_memory` found for one rank."""

    points: int  # collocation points this rank prepares
    pairs: int  # (point, subdomain) pairs of the prepared batch
    orders: int  # derivative components carried per pair (the value included)
    bytes_per_pair: int  # all components together
    drawn: int  # points drawn on every rank before it keeps its share (whole sets)
    test_points: int  # this rank's test points
    total: int  # bytes

    def text(self) -> str:
        return (f"{self.points:,} points, {self.pairs:,} (point, subdomain) pairs x {self.bytes_per_pair:,} bytes "
                f"({self.orders} derivative component(s)), {self.drawn:,} points drawn before the split, "
                f"{self.test_points:,} test points: about {gib(self.total)}")


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


# Words (elements) per (point, subdomain) pair, from what a step keeps for the backward pass
# (the tensors saved for it, measured on eight shipped configs, are 1.4 to 3.7 times below these).
# The stacked networks carry each hidden unit with its derivative components forward; up to
# order two the first layer is folded into the second and keeps a few words per unit whatever
# the number of components (the general path of order three and more keeps every component of
# every layer).  Each component also holds the pair's inputs, window, product and output.
# The folded first layer's count is its peak (the activation's derivatives, their products
# and their gradients are alive together), measured with scripts/memory.py: 12 words per
# unit reach the peak of a network of one hidden layer, whose step is nothing else.
WORDS_PER_HIDDEN = 4
WORDS_FIRST_LAYER = 12  # order two and below
WORDS_PER_COMPONENT = 32  # order two and below
WORDS_PER_COMPONENT_GENERAL = 128  # the general path: also every Faa di Bruno term's factors
PADDING = 1.25  # subdomains are padded to the largest point count of their group
# Freed blocks stay in the heap between steps (see trainer.tune_host_allocator), and the
# peak depends on the order of frees: the measured peak per pair varies by up to 1.5 times.
WORKSPACE = 1.5


def estimate_memory(cfg, ctx) -> MemoryEstimate:
    """Memory one training step needs on this rank, from the config alone (nothing large is built).

    The point count is this rank's share of ``training.points`` (its block of the domain);
    every subdomain level contributes ``prod_d min(n_d, overlap)`` pairs per point; time-marching
    is sized for its all-together phase."""
    from . import registry
    from .decomposition import config_levels
    from .derivatives import FaaDiBruno, closure, parse
    from .parallel import Distribution

    tr = cfg.training
    problem_cls = registry.get("problem", cfg.problem_name)
    axes = tuple(problem_cls.axes)
    dim = len(axes)
    itemsize = 8 if tr.dtype == "float64" else 4
    n_drawn = math.prod(tr.points)
    n_test = math.prod(cfg.test.points)
    fraction = 1.0
    if ctx.parallel:
        problem = problem_cls(cfg.problem)
        levels = config_levels(cfg, problem)
        axes_split = cfg.parallel.axes or None
        if cfg.schedule.kind == "time_marching" and axes_split is None:
            axes_split = [d for d, name in enumerate(axes) if name != "t"]
        dist = Distribution(ctx, levels, axes_split)
        box, region = problem.domain, dist.region
        fraction = math.prod((region.hi[d] - region.lo[d]) / (box.hi[d] - box.lo[d]) for d in range(dim))
    points = math.ceil(n_drawn * fraction) if cfg.problem.physics else 0
    test_points = math.ceil(n_test * fraction)
    per_point = sum(math.prod(min(n, cfg.decomposition.overlap) for n in shape)
                    for shape in cfg.decomposition.level_shapes())
    try:
        orders = closure(parse(n, axes, tuple(problem_cls.fields)) for n in problem_cls.needs)
    except ValueError:
        orders = [()]  # an unsupported derivative is reported by the config's validation
    k = len(orders)
    hidden = list(cfg.network.hidden)
    more_fields = 4 * (len(problem_cls.fields) - 1)  # each further field: output, window product, sum
    if max(len(o) for o in orders) > 2:  # the general Taylor path also keeps every Faa di Bruno term's factors
        k += sum(r * len(index) for r, (index, _, _) in FaaDiBruno(orders).terms.items())
        words = k * (WORDS_PER_HIDDEN * sum(hidden) + WORDS_PER_COMPONENT_GENERAL + more_fields)
    else:
        first, rest = (hidden[0], hidden[1:]) if hidden else (0, [])
        words = WORDS_FIRST_LAYER * first + k * (WORDS_PER_HIDDEN * sum(rest) + WORDS_PER_COMPONENT + more_fields)
    bytes_per_pair = itemsize * words
    value_bytes = itemsize * (WORDS_PER_HIDDEN * sum(hidden) + WORDS_PER_COMPONENT + more_fields)  # the test grid
    pairs = math.ceil(points * per_point * PADDING)
    test_pairs = math.ceil(min(test_points, 2**20) * per_point * PADDING)
    total = WORKSPACE * (pairs * bytes_per_pair + test_pairs * value_bytes)
    total += 3 * 8 * dim * (n_drawn if cfg.problem.physics else 0)  # drawn as float64, masked, converted
    total += 8 * dim * test_points * 2
    return MemoryEstimate(points, pairs, k, bytes_per_pair, n_drawn, test_points, int(total))


def _cgroup_limit() -> int | None:
    """Bytes this process may still use under its cgroup's memory limit (Slurm, containers), if any."""
    candidates = [("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")]
    for limit_file, usage_file in candidates:
        try:
            text = Path(limit_file).read_text().strip()
            if text == "max":
                return None
            limit, usage = int(text), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # "no limit" in cgroup v1
            return None
        return max(limit - usage, 0)
    return None


def available_memory(device, ctx) -> tuple[int | None, str]:
    """Bytes free for this rank on ``device`` and a description; (None, ...) where unknown.

    CPU: the node's available memory (``MemAvailable``; the cgroup limit where lower), shared
    by the node's ranks.  CUDA: the GPU's free memory, shared by the ranks that use that GPU."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        sharing = max(1, math.ceil(ctx.local_size / max(torch.cuda.device_count(), 1)))
        return free // sharing, f"{gib(free)} free on {device}" + (f", shared by {sharing} ranks" if sharing > 1
                                                                     else "")
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_limit()
    if limit is not None and (free is None or limit < free):
        free, where = limit, "under this job's memory limit"
    else:
        where = "available on this node"
    if free is None:
        return None, "unknown"
    share = max(ctx.local_size, 1)
    return free // share, f"{gib(free)} {where}" + (f", shared by {share} ranks" if share > 1 else "")


def check_memory(cfg, ctx, device) -> MemoryEstimate:
    """Raise :class:`PreflightError` when the estimate exceeds the memory available to this rank."""
    est = estimate_memory(cfg, ctx)
    free, where = available_memory(device, ctx)
    if free is not None and est.total > free:
        per_rank = f"rank {ctx.rank}: " if ctx.parallel else ""
        raise PreflightError(f"{per_rank}the run needs {est.text()}, more than the {gib(free)} it can use "
                             f"({where}); lower training.points (or test.points), use fewer subdomains per "
                             "point (decomposition.overlap), smaller network.hidden, training.dtype = "
                             "\"float32\", or more ranks")
    return est
