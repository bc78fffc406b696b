"""Checkpoints: the whole state of a run in one HDF5 file, to restart on any number of ranks.

A checkpoint holds, assembled from all ranks into full stacked arrays: the parameters
of every level, Adam's moments and step counts, the problem's learned constants and
their optimiser state, in an L-BFGS phase (``training.lbfgs_steps``) the L-BFGS state
(group ``/lbfgs``: the kept pairs and their Gram matrices, the previous parameters and gradient), the sampler's random state, the step, and the training history
so far; for a problem from a config's ``problem.module``, that module's path and the SHA-256
of its source, which a resumed run compares with its own (:func:`check_compatible`); and the
run's provenance up to the checkpoint's step (:mod:`fbpinn.provenance`, group ``/provenance``:
a resumed run takes the earlier run segments from it).  Nothing in it depends on how many
ranks wrote it, so a run may resume on any number of ranks.  Files are ``<results folder>/checkpoints/step_<step>.h5``, written
under a temporary name and renamed (:func:`fbpinn.io.write_atomic`); the newest
``checkpoint.keep`` are kept.  Layout: docs/hdf5.md.  No pickle: arrays and attributes only.

A checkpoint proves its contents: every dataset carries the SHA-256 of its bytes and the
root a SHA-256 of the whole stored state (all root attributes, the attributes of any group
that has some (``/provenance``), and every dataset's path, dtype, shape, attributes and
checksum).  A checkpoint of this version written before provenance was recorded has no
``/provenance`` and keeps its digest; it is read as before.  :func:`read` verifies both, and checks the
layout against the stored config (the datasets that must be there, their shapes and
dtypes), that the config is valid, and that parameters and Adam's moments are finite;
anything else is a :class:`CheckpointError` naming the file and what failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import tomllib
from pathlib import Path

import h5py
import numpy as np
import torch

from . import __version__, history, provenance
from .config import adaptive_count, load_config, to_dict
from .io import write_atomic
from .model import parameter_key
from .schedulers import in_lbfgs_phase

logger = logging.getLogger(__name__)

FORMAT = "fbpinn-checkpoint"
VERSION = 2  # 2: SHA-256 of every dataset (attribute "sha256") and of the state (root "state_sha256")
NAME = re.compile(r"^step_(\d+)\.h5$")
MODULE_ATTRIBUTES = ("problem_module", "problem_module_sha256")  # root attributes of a run with problem.module
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


# ----------------------------------------------------------------------------- state
# A state is the dict of :meth:`fbpinn.trainer.Trainer.state_dict`: "step", "stage", "arrays"
# ("parameters/<key>", "exp_avg/<key>", "exp_avg_sq/<key>" -> full array), "adam_steps" (<key> -> count),
# "sampler_state", "torch_state", "adaptive" (None, or the candidates the last redraw chose), "history", "loss_per_step", "wall_time", "n_ranks", "config" (TOML),
# "term_names", "problem_module", "problem_module_sha256", "provenance" and "lbfgs" (None before the L-BFGS
# phase, else {"arrays": {"s<k>/<key>", "y<k>/<key>", "prev_x/<key>", "prev_g/<key>" -> full array},
# "rho", "pairs", "steps", "gamma", "gram", "slots"}; "gram" (2, K, K): the kept pairs' s_a.y_b and y_a.y_b,
# "slots" (K,): their places in the optimiser's buffer; both None in a state read from an older checkpoint); <key> is a model parameter's
# key (fbpinn.model.parameter_key) or "problem/<name>" for a learned constant.


def write(path, state: dict) -> Path:
    """Write a state (:meth:`fbpinn.trainer.Trainer.state_dict`) atomically, with the checksums :func:`read` verifies.

    A state whose parameters, Adam moments or step counts are not all finite is refused
    (:class:`CheckpointError`): a checkpoint of a run that has already failed is never written."""
    quasi = state.get("lbfgs")
    lbfgs_arrays = [(f"lbfgs/{k}", v) for k, v in quasi["arrays"].items()] if quasi else []
    for key, value in [*state["arrays"].items(), *state["adam_steps"].items(), *lbfgs_arrays]:
        if not np.isfinite(np.asarray(value)).all():
            raise CheckpointError(f"{path}: not written, {key} is not finite")

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
        if state.get("problem_module"):  # the user's module and the hash of the source that trained
            f.attrs["problem_module"] = state["problem_module"]
            f.attrs["problem_module_sha256"] = state["problem_module_sha256"]
        for key, arr in state["arrays"].items():
            kind, name = key.split("/", 1)
            group = "parameters" if kind == "parameters" else f"adam/{kind}"
            f[f"{group}/{name}"] = arr
        for key, n in state["adam_steps"].items():
            f[f"adam/steps/{key}"] = n
        if quasi:  # the L-BFGS phase has begun
            for path, arr in lbfgs_arrays:
                f[path] = arr
            f["lbfgs/rho"] = np.asarray(quasi["rho"], dtype=np.float64)
            if quasi.get("gram") is not None and quasi["pairs"]:
                f["lbfgs/gram"] = np.asarray(quasi["gram"], dtype=np.float64)
                f["lbfgs/slots"] = np.asarray(quasi["slots"], dtype=np.int64)
            for name in LBFGS_ATTRIBUTES:
                f["lbfgs/rho"].attrs[name] = quasi[name]
        f["rng/sampler"] = state["sampler_state"]
        if state.get("adaptive") is not None:
            f["rng/adaptive"] = np.asarray(state["adaptive"], dtype=np.int64)
        f["rng/torch"] = state["torch_state"]
        history.write(f.create_group("history"), state["history"], state["loss_per_step"], state["term_names"],
                      state.get("fields") or problem_fields(load_config(data=tomllib.loads(state["config"]), stored=True)))
        if state.get("provenance"):
            provenance.write(f.create_group(provenance.GROUP), state["provenance"])
        f.attrs["complete"] = True  # a file without it was not written by this function
        _seal(f)

    return write_atomic(path, fill)


# ----------------------------------------------------------------------------- verification
CHECKSUM = "sha256"  # attribute of every dataset: SHA-256 of its bytes (C order, as stored)
STATE_CHECKSUM = "state_sha256"  # root attribute: SHA-256 of the canonical description of the whole file


class _Damage(Exception):
    """What is wrong with a checkpoint (:func:`read` adds the file's name)."""


def _sha256(data) -> str:
    """SHA-256 (hex) of an array's bytes in C order."""
    return hashlib.sha256(np.asarray(data).tobytes()).hexdigest()


def _plain(value):
    """An attribute value as plain JSON-able Python (strings, numbers, booleans, lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (str, int, float, bool)):
        return value
    raise _Damage(f"attribute of unexpected type {type(value).__name__}")


def _datasets(f: h5py.File) -> dict:
    """Every dataset in ``f`` by path.  Only plain hard-linked groups and datasets stored in the
    file itself may be there: a soft or external link, a virtual dataset or another kind of
    object is damage (fbpinn never writes one)."""
    found = {}

    def walk(group, prefix):
        for name in group:
            path = f"{prefix}{name}"
            if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                raise _Damage(f"{path} is a link")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, path + "/")
            elif isinstance(obj, h5py.Dataset) and not obj.is_virtual and not obj.external:
                found[path] = obj
            else:
                raise _Damage(f"{path} is not a plain dataset")

    walk(f, "")
    return found


def _state_digest(f: h5py.File, datasets: dict) -> str:
    """SHA-256 over a canonical JSON serialisation of the root attributes (all but the state
    checksum itself), for every dataset its path, dtype, shape and attributes (its checksum
    among them) and, for every group with attributes (/provenance), its path and attributes
    (a file without such groups has the digest it had before they were covered)."""
    doc = {"attrs": {k: _plain(v) for k, v in f.attrs.items() if k != STATE_CHECKSUM},
           "datasets": {path: [ds.dtype.str, list(ds.shape), {k: _plain(v) for k, v in ds.attrs.items()}]
                        for path, ds in datasets.items()}}
    groups = {}
    f.visititems(lambda path, obj: groups.update({path: {k: _plain(v) for k, v in obj.attrs.items()}})
                 if isinstance(obj, h5py.Group) and len(obj.attrs) else None)
    if groups:
        doc["groups"] = groups
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _seal(f: h5py.File) -> None:
    """Store the checksum of every dataset and of the whole state (the last thing written)."""
    datasets = _datasets(f)
    for ds in datasets.values():
        ds.attrs[CHECKSUM] = _sha256(ds[()])
    f.attrs[STATE_CHECKSUM] = _state_digest(f, datasets)


def _layout(cfg) -> dict:
    """Path -> (shape, dtype) of the parameter and Adam datasets that a run of ``cfg`` stores:
    per level, the stacked weights (J, n_in, n_out) and biases (J, 1, 1, n_out) of its J
    subdomain networks with layer widths [dim, *network.hidden, F], F the problem's fields."""
    dtype = np.dtype(cfg.training.dtype)
    shapes = cfg.decomposition.level_shapes()
    sizes = [len(shapes[0]), *cfg.network.hidden, _n_fields(cfg)]
    out = {}
    for level, grid in enumerate(shapes):
        n = math.prod(grid)
        for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for name, shape in ((f"W{l}", (n, n_in, n_out)), (f"b{l}", (n, 1, 1, n_out))):
                key = parameter_key(level, name)
                for group in ("parameters", "adam/exp_avg", "adam/exp_avg_sq"):
                    out[f"{group}/{key}"] = (shape, dtype)
                out[f"adam/steps/{key}"] = ((), np.dtype("float64"))
    return out


LBFGS_ATTRIBUTES = ("pairs", "steps", "gamma")  # of /lbfgs/rho: pairs kept, L-BFGS steps taken, H0 = gamma I


def _lbfgs_layout(f: h5py.File, cfg, step: int, expected: dict) -> tuple[dict, dict]:
    """Path -> (shape, dtype) of the L-BFGS datasets of a checkpoint of ``cfg`` at ``step`` (none
    outside an L-BFGS phase), and the attributes of /lbfgs/rho: K = its ``pairs`` pairs of
    ``lbfgs/s<k>/<key>``, ``lbfgs/y<k>/<key>``, and ``lbfgs/prev_x/<key>``, ``lbfgs/prev_g/<key>``,
    each shaped like ``parameters/<key>`` (in ``expected``), and ``lbfgs/rho`` (K,) float64."""
    tr = cfg.training
    if not in_lbfgs_phase(cfg, step):
        return {}, {}
    ds = f.get("lbfgs/rho")
    if not isinstance(ds, h5py.Dataset):
        raise _Damage(f"dataset lbfgs/rho is missing (step {step} lies in an L-BFGS phase, the last "
                      f"training.lbfgs_steps = {tr.lbfgs_steps} steps of the run or of its stage)")
    attrs = {}
    for name, kind, low, high in (("pairs", int, 0, tr.lbfgs_history), ("steps", int, 1, step),
                                  ("gamma", float, 0.0, math.inf)):
        value = _plain(ds.attrs[name]) if name in ds.attrs else None
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not ok or not (math.isfinite(value) and low <= value <= high) or (name == "gamma" and value <= 0):
            raise _Damage(f"attribute {name} of lbfgs/rho = {value!r} is not a valid value")
        attrs[name] = value
    out = {"lbfgs/rho": ((attrs["pairs"],), np.dtype("float64"))}
    if "lbfgs/gram" in f or "lbfgs/slots" in f:  # older checkpoints have neither (the Gram matrices are recomputed)
        out["lbfgs/gram"] = ((2, attrs["pairs"], attrs["pairs"]), np.dtype("float64"))
        out["lbfgs/slots"] = ((attrs["pairs"],), np.dtype("int64"))
    names = ["prev_x", "prev_g", *(f"{v}{k}" for k in range(attrs["pairs"]) for v in "sy")]
    for path, layout in expected.items():
        if path.startswith("parameters/"):
            out.update({f"lbfgs/{name}/{path[len('parameters/'):]}": layout for name in names})
    return out, attrs


STRING = "fixed-length string"  # an expected dtype (in _layout's sense): any fixed-length bytes


def _provenance_layout(f: h5py.File, datasets: dict, n_ranks: int) -> dict:
    """Path -> (shape, dtype) of the datasets of /provenance (one row per rank of the checkpoint,
    one per run segment), after checking its attributes (:mod:`fbpinn.provenance`)."""
    group = f[provenance.GROUP]
    if not isinstance(group, h5py.Group):
        raise _Damage(f"/{provenance.GROUP} is not a group")
    for name in provenance.REQUIRED:
        if not isinstance(_plain(group.attrs[name]) if name in group.attrs else None, str):
            raise _Damage(f"attribute {name} of /{provenance.GROUP} is missing or not a string")
    where = f"{provenance.GROUP}/segments/first_step"
    n_segments = datasets[where].shape[0] if where in datasets and datasets[where].ndim == 1 else 0
    if n_segments < 1:
        raise _Damage(f"{where} is missing or not a list of at least one run segment")
    out = {f"{provenance.GROUP}/ranks/{k}": ((n_ranks,), np.dtype("int64") if k == "threads" else STRING)
           for k in provenance.RANK_FIELDS}
    out.update({f"{provenance.GROUP}/segments/{k}": ((n_segments,), np.dtype(dtype))
                for k, dtype in provenance.SEGMENT_FIELDS})
    return out


def problem_fields(cfg) -> tuple:
    """The fields of ``cfg``'s problem (one output of every subdomain network each)."""
    from . import registry

    return tuple(registry.get("problem", cfg.problem_name).fields)


def _n_fields(cfg) -> int:
    return len(problem_fields(cfg))


def _attribute(f, name: str, kind, low=None):
    """Root attribute ``name``, checked to be a ``kind`` (int, float or str) at least ``low``."""
    if name not in f.attrs:
        raise _Damage(f"attribute {name} is missing")
    value = _plain(f.attrs[name])
    ok = isinstance(value, str) if kind is str else (
        isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool))
    if not ok or (low is not None and not (math.isfinite(value) and value >= low)):
        raise _Damage(f"attribute {name} = {value!r} is not a valid value")
    return value


def _verify(f: h5py.File) -> dict:
    """Check a checkpoint completely (see the module's docstring) and return its state."""
    if _plain(f.attrs.get("format", "")) != FORMAT:
        raise _Damage("not an fbpinn checkpoint")
    version = _plain(f.attrs.get("version", -1))
    if version != VERSION:
        raise _Damage(f"checkpoint version {version}; this fbpinn reads version {VERSION}")
    if _plain(f.attrs.get("complete", False)) is not True:
        raise _Damage("incomplete checkpoint")
    digest = _attribute(f, STATE_CHECKSUM, str)
    text = _attribute(f, "config", str)
    try:
        cfg = load_config(data=tomllib.loads(text), stored=True)
    except tomllib.TOMLDecodeError as e:
        raise _Damage(f"its stored config is not valid TOML ({e})") from None
    except ValueError as e:  # ConfigError
        raise _Damage(f"its stored config is not a valid config ({e})") from None
    module = {k: _attribute(f, k, str) if k in f.attrs else "" for k in MODULE_ATTRIBUTES}
    step = _attribute(f, "step", int, 1)
    stage = _attribute(f, "stage", int, 0)
    n_ranks = _attribute(f, "n_ranks", int, 1)
    wall_time = _attribute(f, "wall_time", float, 0.0)
    if step > cfg.training.steps:
        raise _Damage(f"step {step} is beyond its own config's training.steps = {cfg.training.steps}")

    # The layout, from metadata only (nothing large is read before its size is known to be right).
    datasets = _datasets(f)
    expected = _layout(cfg)
    learned = sorted(p.split("/", 2)[2] for p in datasets if p.startswith("parameters/problem/"))
    for name in learned:
        for group in ("parameters", "adam/exp_avg", "adam/exp_avg_sq"):
            expected[f"{group}/problem/{name}"] = ((), np.dtype(cfg.training.dtype))
        expected[f"adam/steps/problem/{name}"] = ((), np.dtype("float64"))
    n_rng = torch.get_rng_state().numel()
    expected["rng/sampler"] = expected["rng/torch"] = ((n_rng,), np.dtype("uint8"))
    if "rng/adaptive" in datasets and adaptive_count(cfg):  # the last redraw chose points by their residual
        expected["rng/adaptive"] = ((adaptive_count(cfg),), np.dtype("int64"))
    rows = datasets.get("history/step")
    n_eval = rows.shape[0] if rows is not None and rows.ndim == 1 else -1
    if not 1 <= n_eval <= step:
        raise _Damage(f"history/step has shape {None if rows is None else rows.shape}, expected "
                      f"(E,) with 1 <= E <= step {step}")
    ds = datasets.get("history/loss_terms")
    names = str(_plain(ds.attrs.get("names", ""))) if ds is not None else ""
    term_names = names.split(",") if names else []
    dims = {"E": n_eval, "T": len(term_names), "F": _n_fields(cfg), "S": step}
    for name, dtype, shape in (*history.FIELDS, *([history.PER_FIELD] if dims["F"] > 1 else []), history.PER_STEP):
        expected[f"history/{name}"] = (tuple(dims[d] for d in shape), np.dtype(dtype))
    lbfgs_expected, lbfgs_attrs = _lbfgs_layout(f, cfg, step, expected)
    expected.update(lbfgs_expected)
    if provenance.GROUP in f:
        expected.update(_provenance_layout(f, datasets, n_ranks))
    missing, extra = sorted(set(expected) - set(datasets)), sorted(set(datasets) - set(expected))
    if missing or extra:
        raise _Damage("; ".join([*(f"dataset {p} is missing" for p in missing[:3]),
                                 *(f"unexpected dataset {p}" for p in extra[:3])]))
    for path, (shape, dtype) in expected.items():
        ds = datasets[path]
        if ds.shape != shape or not (ds.dtype.kind == "S" if dtype is STRING else ds.dtype == dtype):
            raise _Damage(f"{path} has shape {ds.shape} and dtype {ds.dtype}, expected {shape} and {dtype} "
                          f"(for decomposition {cfg.decomposition.level_shapes()}, network.hidden "
                          f"{cfg.network.hidden}, {len(term_names)} loss term(s), step {step})")
    if not term_names or not all(term_names):
        raise _Damage(f"history/loss_terms names {names!r} are not a list of loss terms")

    # The data, against the checksums; then the state as a whole.
    data = {}
    for path, ds in datasets.items():
        stored = _plain(ds.attrs.get(CHECKSUM, ""))
        data[path] = ds[()]
        if stored != _sha256(data[path]):
            raise _Damage(f"the checksum of {path} does not match its data")
    if _state_digest(f, datasets) != digest:
        raise _Damage("the checksum of the stored state (attributes, dataset shapes and checksums) does not match")
    for path, value in data.items():
        if path.startswith(("parameters/", "adam/", "lbfgs/")) and not np.isfinite(value).all():
            raise _Damage(f"{path} is not finite")
    chosen = data.get("rng/adaptive")
    pool = cfg.training.adaptive_pool * math.prod(cfg.training.points)
    if chosen is not None and (chosen.size and (chosen[0] < 0 or chosen[-1] >= pool) or (np.diff(chosen) <= 0).any()):
        raise _Damage(f"rng/adaptive does not hold increasing candidate numbers in 0..{pool - 1}")
    slots = data.get("lbfgs/slots")
    if slots is not None and (len(set(slots.tolist())) != len(slots) or
                              (len(slots) and not 0 <= slots.min() <= slots.max() <= cfg.training.lbfgs_history)):
        raise _Damage(f"lbfgs/slots {slots.tolist()} are not distinct slots in 0..{cfg.training.lbfgs_history}")
    record = None
    if provenance.GROUP in f:
        record = provenance.read(f[provenance.GROUP])
        last = record["segments"][-1]
        if last["last_step"] != step or last["n_ranks"] != n_ranks:
            raise _Damage(f"its provenance's last segment ends at step {last['last_step']} on {last['n_ranks']} "
                          f"rank(s), the checkpoint is at step {step} of {n_ranks} rank(s)")
    return {"cfg": cfg, "data": data, "step": step, "stage": stage, "n_ranks": n_ranks, "wall_time": wall_time,
            "config": text, "term_names": term_names, "digest": digest, "provenance": record, **module,
            "lbfgs": lbfgs_attrs,
            "fbpinn_version": str(_plain(f.attrs.get("fbpinn_version", ""))),
            "written": str(_plain(f.attrs.get("written", "")))}


def read(path) -> dict:
    """A checkpoint file back as the state :meth:`fbpinn.trainer.Trainer.state_dict` made (and its state checksum as
    ``"digest"``), after verifying it completely (see the module's docstring).

    Raises :class:`CheckpointError` naming the file and what failed; no other exception
    escapes, whatever the file holds."""
    path = Path(path)
    try:
        if not path.is_file():
            raise _Damage("not a regular file")
        with h5py.File(path, "r") as f:
            v = _verify(f)
    except _Damage as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- HDF5, numpy, decoding: any failure on a damaged file
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {detail})") from None
    data = v["data"]
    arrays = {}
    for path_, value in data.items():
        kind, _, name = path_.partition("/")
        if kind == "parameters":
            arrays[f"parameters/{name}"] = value
        elif kind == "adam" and not name.startswith("steps/"):
            group, _, rest = name.partition("/")
            arrays[f"{group}/{rest}"] = value
    steps = {p[len("adam/steps/"):]: float(value) for p, value in data.items() if p.startswith("adam/steps/")}
    hist, loss_per_step = history.read({p[len("history/"):]: a for p, a in data.items() if p.startswith("history/")})
    quasi = None
    if v["lbfgs"]:  # the L-BFGS phase had begun
        quasi = {**v["lbfgs"], "rho": data["lbfgs/rho"], "gram": data.get("lbfgs/gram"), "slots": data.get("lbfgs/slots"),
                 "arrays": {p[len("lbfgs/"):]: a for p, a in data.items()
                            if p.startswith("lbfgs/") and p not in ("lbfgs/rho", "lbfgs/gram", "lbfgs/slots")}}
    return {"step": v["step"], "stage": v["stage"], "arrays": arrays, "adam_steps": steps,
            "sampler_state": data["rng/sampler"], "torch_state": data["rng/torch"], "history": hist,
            "adaptive": data.get("rng/adaptive"),
            "loss_per_step": loss_per_step, "wall_time": float(v["wall_time"]),
            "n_ranks": v["n_ranks"], "config": v["config"], "term_names": v["term_names"], "digest": v["digest"],
            "provenance": v["provenance"], "lbfgs": quasi,
            **{k: v[k] for k in (*MODULE_ATTRIBUTES, "fbpinn_version", "written")}}


def check_compatible(state: dict, cfg, path, allow_module_change: bool = False) -> None:
    """Raise :class:`CheckpointError` naming the first config key that differs from the checkpoint's
    (other than those in ``MAY_CHANGE``), or when the source of the config's ``problem.module``
    differs from the one the checkpoint was trained with.  With ``allow_module_change`` a changed
    source is only a warning (the module's path must still be the same)."""
    saved = to_dict(load_config(data=tomllib.loads(state["config"]), stored=True))
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
    before, after = state.get("problem_module_sha256", ""), cfg.problem_module_sha256
    if before != after:
        text = (f"{path} was trained with problem.module {state.get('problem_module') or '(none)'} of SHA-256 "
                f"{before or '(none)'}; {cfg.problem_module or '(none)'} now has SHA-256 {after or '(none)'}")
        if not allow_module_change:
            raise CheckpointError(f"{text}: its source changed since. Restore it, train into another folder, or "
                                  "pass --allow-module-change to go on with the changed code")
        logger.warning("%s: going on with the changed code (--allow-module-change)", text)


def all_finite(trainer) -> bool:
    """Whether every rank's parameters and Adam moments are finite (collective)."""
    opt = trainer.optimizer
    tensors = [t for _, t, _ in trainer.named_tensors()] + list(opt.exp_avg) + list(opt.exp_avg_sq)
    quasi = getattr(trainer, "lbfgs", None)
    if quasi is not None:
        tensors += quasi.tensors()
    bad = sum(int(not torch.isfinite(t).all()) for t in tensors)
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

    def save(self, trainer, step: int) -> Path | None:
        """Write the trainer's state after ``step`` (collective; rank 0 writes and prunes old files)."""
        state = trainer.state_dict(step)
        path = path_for(self.folder, step)
        if trainer.ctx.rank == 0:
            t0 = time.perf_counter()
            write(path, state)
            for _, old in listing(self.folder)[self.keep:]:
                old.unlink(missing_ok=True)
            logger.info("checkpoint %s (%.2f s)", path, time.perf_counter() - t0)
        self.last = path
        return path
