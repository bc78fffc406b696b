"""Checkpoints: the whole state of a run in one HDF5 file, to restart on any number of ranks.

A checkpoint holds, assembled from all ranks into full stacked arrays: the parameters
of every level, Adam's moments and step counts, the problem's learned constants and
their optimiser state, the sampler's random state, the step, and the training history
so far.  Nothing in it depends on how many ranks wrote it, so a run may resume on any
number of ranks.  Files are ``<results folder>/checkpoints/step_<step>.h5``, written
under a temporary name and renamed (:func:`fbpinn.io.write_atomic`); the newest
``checkpoint.keep`` are kept.  Layout: docs/hdf5.md.  No pickle: arrays and attributes only.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import tomllib
from pathlib import Path

import h5py
import numpy as np
import torch

from . import __version__
from .config import load_config, to_dict, to_toml
from .io import write_atomic

logger = logging.getLogger(__name__)

FORMAT = "fbpinn-checkpoint"
VERSION = 1
NAME = re.compile(r"^step_(\d+)\.h5$")
HISTORY = ("step", "loss", "loss_terms", "rel_l2", "time", "lr", "stage")
# Config keys a resumed run may change; every other key must equal the checkpoint's.
MAY_CHANGE = {"training.steps", "training.threads", "training.device", "training.compile", "training.log_every",
              "output.dir", "output.per_rank", "checkpoint.every", "checkpoint.keep"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run that resumes it."""


def path_for(folder, step: int) -> Path:
    return Path(folder) / f"step_{step:09d}.h5"


def listing(folder) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint files in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return sorted(found, reverse=True)


def remove_leftovers(folder) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder`` (never complete files)."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------- state
def _tensors(trainer):
    """(key, parameter tensor, level or None) of everything the optimiser trains."""
    for level, net in enumerate(trainer.model.nets):
        for l, (w, b) in enumerate(zip(net.weights, net.biases)):
            yield f"level{level}/W{l}", w, level
            yield f"level{level}/b{l}", b, level
    for name, p in trainer.problem.parameters().items():
        yield f"problem/{name}", p, None


def collect(trainer, step: int, history: dict, loss_per_step, wall_time: float) -> dict | None:
    """The run's state as numpy arrays on rank 0 (None on the others).  Every rank calls it."""
    opt = trainer.optimizer
    index = {id(p): i for i, p in enumerate(opt.params)}
    arrays, steps = {}, {}
    for level, net in enumerate(trainer.model.nets):
        tensors = {}
        for key, t, lv in _tensors(trainer):
            if lv == level:
                i = index[id(t)]
                name = key.split("/", 1)[1]
                tensors[f"parameters/{name}"] = t
                tensors[f"exp_avg/{name}"] = opt.exp_avg[i]
                tensors[f"exp_avg_sq/{name}"] = opt.exp_avg_sq[i]
                steps[key] = float(opt.steps[i])
        full = trainer.dist.gather_stacked(level, net, tensors)
        if full is not None:
            arrays.update({f"{k.split('/')[0]}/level{level}/{k.split('/')[1]}": v for k, v in full.items()})
    if trainer.ctx.rank != 0:
        return None
    for key, t, lv in _tensors(trainer):
        if lv is None:  # learned constants: replicated, identical on every rank
            i = index[id(t)]
            arrays[f"parameters/{key}"] = t.detach().cpu().numpy()
            arrays[f"exp_avg/{key}"] = opt.exp_avg[i].cpu().numpy()
            arrays[f"exp_avg_sq/{key}"] = opt.exp_avg_sq[i].cpu().numpy()
            steps[key] = float(opt.steps[i])
    return {"step": step, "stage": trainer.stage.index, "arrays": arrays, "adam_steps": steps,
            "sampler_state": trainer.sample_state.numpy(), "torch_state": torch.get_rng_state().numpy(),
            "history": {k: list(v) for k, v in history.items()}, "loss_per_step": list(loss_per_step),
            "wall_time": wall_time, "n_ranks": trainer.ctx.size, "config": to_toml(trainer.cfg),
            "term_names": [t.name for t in trainer.terms]}


def write(path, state: dict) -> Path:
    """Write a state from :func:`collect` atomically."""
    def fill(f):
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["fbpinn_version"] = __version__
        f.attrs["step"] = state["step"]
        f.attrs["stage"] = state["stage"]
        f.attrs["n_ranks"] = state["n_ranks"]
        f.attrs["wall_time"] = state["wall_time"]
        f.attrs["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["config"] = state["config"]
        for key, arr in state["arrays"].items():
            kind, name = key.split("/", 1)
            group = "parameters" if kind == "parameters" else f"adam/{kind}"
            f[f"{group}/{name}"] = arr
        for key, n in state["adam_steps"].items():
            f[f"adam/steps/{key}"] = n
        f["rng/sampler"] = state["sampler_state"]
        f["rng/torch"] = state["torch_state"]
        h = f.create_group("history")
        for k in HISTORY:
            if k == "loss_terms":
                continue
            h[k] = np.asarray(state["history"][k], dtype=np.float64 if k not in ("step", "stage") else np.int64)
        h["loss_terms"] = np.asarray(state["history"]["loss_terms"], dtype=np.float64).reshape(
            len(state["history"]["step"]), len(state["term_names"]))
        h["loss_terms"].attrs["names"] = ",".join(state["term_names"])
        h["loss_per_step"] = np.asarray(state["loss_per_step"], dtype=np.float64)
        f.attrs["complete"] = True  # last: a file without it was not written by this function

    return write_atomic(path, fill)


def read(path) -> dict:
    """A checkpoint file back as the dict :func:`collect` made; :class:`CheckpointError` if unreadable."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not an fbpinn checkpoint")
            if int(f.attrs.get("version", -1)) != VERSION:
                raise CheckpointError(f"{path}: checkpoint version {f.attrs.get('version')}; this fbpinn reads "
                                      f"version {VERSION}")
            if not f.attrs.get("complete", False):
                raise CheckpointError(f"{path}: incomplete checkpoint")
            arrays = {}
            for group, kind in (("parameters", "parameters"), ("adam/exp_avg", "exp_avg"),
                                ("adam/exp_avg_sq", "exp_avg_sq")):
                f[group].visititems(lambda name, obj, kind=kind: arrays.__setitem__(f"{kind}/{name}", obj[()])
                                    if isinstance(obj, h5py.Dataset) else None)
            steps = {}
            f["adam/steps"].visititems(lambda name, obj: steps.__setitem__(name, float(obj[()]))
                                       if isinstance(obj, h5py.Dataset) else None)
            h = f["history"]
            history = {k: h[k][()].tolist() for k in HISTORY}
            return {"step": int(f.attrs["step"]), "stage": int(f.attrs["stage"]), "arrays": arrays,
                    "adam_steps": steps, "sampler_state": f["rng/sampler"][()], "torch_state": f["rng/torch"][()],
                    "history": history, "loss_per_step": h["loss_per_step"][()].tolist(),
                    "wall_time": float(f.attrs["wall_time"]), "n_ranks": int(f.attrs["n_ranks"]),
                    "config": str(f.attrs["config"]),
                    "term_names": str(h["loss_terms"].attrs["names"]).split(",")}
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def check_compatible(state: dict, cfg, path) -> None:
    """Raise :class:`CheckpointError` naming the first config key that differs from the checkpoint's
    (other than those in ``MAY_CHANGE``)."""
    saved = to_dict(load_config(data=tomllib.loads(state["config"])))
    now = to_dict(cfg)
    for section in sorted(set(saved) | set(now)):
        for key in sorted(set(saved.get(section, {})) | set(now.get(section, {}))):
            name = f"{section}.{key}"
            a, b = saved.get(section, {}).get(key), now.get(section, {}).get(key)
            if name not in MAY_CHANGE and a != b:
                raise CheckpointError(f"{path} was written with {name} = {a!r}, this config has {b!r}; "
                                      f"resume with the same settings (only {', '.join(sorted(MAY_CHANGE))} "
                                      "may change) or train into another folder")
    if state["step"] > cfg.training.steps:
        raise CheckpointError(f"{path} is at step {state['step']}, beyond training.steps = {cfg.training.steps}; "
                              "set training.steps to at least that to go on")


@torch.no_grad()
def restore(trainer, state: dict) -> None:
    """Put a state into a freshly built trainer (any number of ranks): the schedule's stage,
    the current collocation points, parameters and optimiser state."""
    index = trainer.schedule.stage_of(state["step"])
    if index != trainer.stage.index:
        trainer._enter(index)
    opt = trainer.optimizer
    position = {id(p): i for i, p in enumerate(opt.params)}
    arrays = state["arrays"]
    for key, t, level in _tensors(trainer):
        i = position[id(t)]
        rows = None if level is None else trainer.model.nets[level].held.numpy()
        for dst, kind in ((t, "parameters"), (opt.exp_avg[i], "exp_avg"), (opt.exp_avg_sq[i], "exp_avg_sq")):
            src = arrays.get(f"{kind}/{key}")
            if src is None:
                raise CheckpointError(f"checkpoint has no {kind}/{key}")
            src = np.asarray(src) if level is None else np.asarray(src)[rows]
            if tuple(src.shape) != tuple(dst.shape):
                raise CheckpointError(f"checkpoint {kind}/{key} has shape {src.shape}, the model {tuple(dst.shape)}")
            dst.copy_(torch.from_numpy(src).to(dst.device, dst.dtype))
        opt.steps[i].fill_(state["adam_steps"][key])
    # The points drawn at the last resampling before the checkpoint, prepared with the restored
    # parameters (a time-marching batch holds the frozen subdomains' part of the solution).
    trainer.gen.set_state(torch.from_numpy(np.asarray(state["sampler_state"], dtype=np.uint8)))
    trainer.resample()
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch_state"], dtype=np.uint8)))


def all_finite(trainer) -> bool:
    """Whether every rank's parameters are finite (collective)."""
    bad = sum(int(not torch.isfinite(t).all()) for _, t, _ in _tensors(trainer))
    return float(trainer.ctx.allreduce(np.array([float(bad)]))[0]) == 0.0


@dataclasses.dataclass
class Checkpoints:
    """Where and how often a run writes checkpoints (``checkpoint.every``, ``checkpoint.keep``)."""

    folder: Path
    every: int = 1000
    keep: int = 2
    last: Path | None = None  # newest checkpoint written or resumed from

    def due(self, step: int, final: bool) -> bool:
        return final or (self.every > 0 and step % self.every == 0)

    def save(self, trainer, step: int, history: dict, loss_per_step, wall_time: float) -> Path | None:
        """Write the state after ``step`` (collective; rank 0 writes and prunes old files)."""
        state = collect(trainer, step, history, loss_per_step, wall_time)
        path = path_for(self.folder, step)
        if trainer.ctx.rank == 0:
            t0 = time.perf_counter()
            write(path, state)
            for _, old in listing(self.folder)[self.keep:]:
                old.unlink(missing_ok=True)
            logger.info("checkpoint %s (%.2f s)", path, time.perf_counter() - t0)
        self.last = path
        return path
