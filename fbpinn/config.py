"""Typed run configuration: TOML files, ``--set`` overrides, validation.

A config has the tables ``[problem]``, ``[decomposition]``, ``[network]``,
``[training]``, ``[schedule]``, ``[test]``, ``[parallel]``, ``[output]`` and ``[checkpoint]``; docs/config.md documents every key.
``[problem]`` holds ``name`` plus the keys of that problem's ``Params`` dataclass.

:func:`load_config` reads a file, applies overrides and validates.  Every problem
(an unknown key, a wrong type, an impossible value) raises :class:`ConfigError`,
whose message names the key and what is allowed; the CLI prints it on one line and
exits with status 2.  :func:`to_toml` writes the resolved config back as TOML text,
stored in every results file.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from . import registry
from .derivatives import ACTIVATIONS
from .domains import SAMPLERS

DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is the dotted key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config: {key}: {message}")


@dataclass
class DecompositionConfig:
    subdomains: list[int] = field(default_factory=list)  # per axis, one level
    levels: list[list[int]] = field(default_factory=list)  # several levels, coarse to fine (instead of subdomains)
    overlap: float = 2.99  # subdomain width / centre spacing
    window: str = "cosine"

    def level_shapes(self) -> list[list[int]]:
        """Subdomains per axis of every level, coarse to fine."""
        return self.levels or [self.subdomains]


@dataclass
class NetworkConfig:
    hidden: list[int] = field(default_factory=lambda: [16, 16])
    activation: str = "tanh"


@dataclass
class TrainingConfig:
    steps: int = 10000
    lr: float = 1e-3
    lr_decay: float = 1.0  # lr(step) = lr * lr_decay ** ((step - 1) / decay_steps), a smooth decay
    decay_steps: int = 1000
    dtype: str = "float32"
    seed: int = 0
    sampler: str = "grid"
    points: list[int] = field(default_factory=lambda: [200])  # per axis; random samplers draw the product
    resample_every: int = 0  # draw new random points every this many steps (0: never)
    log_every: int = 1000
    eval_every: int = 1000
    threads: int = 0  # torch CPU threads; 0: all cores (or OMP_NUM_THREADS)
    compile: bool = False  # torch.compile the loss and its backward (falls back to eager on failure)
    device: str = "auto"  # auto: one GPU per rank where CUDA exists, else cpu; or "cpu", "cuda"


@dataclass
class ScheduleConfig:
    kind: str = "all_active"  # all_active | time_marching
    slabs: int = 0  # time_marching: number of slabs along t
    steps_per_slab: int = 0  # time_marching: steps each slab trains for


@dataclass
class TestConfig:
    points: list[int] = field(default_factory=list)  # test grid per axis; empty: a default per dimension


@dataclass
class ParallelConfig:
    axes: list[int] = field(default_factory=list)  # axes to split the subdomain grid along; empty: all


@dataclass
class OutputConfig:
    dir: str = ""  # results folder; empty: results/<config file stem>
    per_rank: bool = False  # under MPI: each rank writes its test-grid block to run_p{rank}.h5


@dataclass
class CheckpointConfig:
    every: int = 1000  # write a checkpoint every this many steps (0: only at the end and on a stop signal)
    keep: int = 2  # newest checkpoints kept in <results folder>/checkpoints


@dataclass
class Config:
    problem: object  # the problem's Params instance
    problem_name: str
    decomposition: DecompositionConfig
    network: NetworkConfig
    training: TrainingConfig
    schedule: ScheduleConfig
    test: TestConfig
    parallel: ParallelConfig
    output: OutputConfig
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    source: str = ""  # config file the run came from


SECTIONS = {"decomposition": DecompositionConfig, "network": NetworkConfig, "training": TrainingConfig,
            "schedule": ScheduleConfig, "test": TestConfig, "parallel": ParallelConfig, "output": OutputConfig,
            "checkpoint": CheckpointConfig}


# ----------------------------------------------------------------------------- parsing
def parse_override(text: str) -> tuple[list[str], object]:
    """``"training.steps=200"`` -> (["training", "steps"], 200).

    The value is read as a TOML value; a bare word that is not valid TOML is a string."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like section.key=value")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(key, "an override key must be section.key")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def load_config(path=None, overrides=(), data: dict | None = None) -> Config:
    """Read, override and validate a config.

    Parameters
    ----------
    path : TOML file (or None with ``data``).
    overrides : ``"section.key=value"`` strings, applied in order.
    data : an already parsed dict, used instead of ``path``.
    """
    if data is None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("file", f"no config file {str(path)!r}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("file", f"{path} is not valid TOML: {e}") from None
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in data:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise ConfigError(section, "is not a table")
        data[section][key] = value
    cfg = from_dict(data)
    cfg.source = str(path) if path is not None else ""
    return cfg


def from_dict(data: dict) -> Config:
    allowed = ["problem", *SECTIONS]
    for section, table in data.items():
        if section not in allowed:
            raise ConfigError(section, f"unknown table; allowed: {', '.join(allowed)}")
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table")
    problem_table = dict(data.get("problem", {}))
    name = problem_table.pop("name", None)
    if name is None:
        raise ConfigError("problem.name", f"missing; available: {', '.join(registry.names('problem'))}")
    if name not in registry.names("problem"):
        raise ConfigError("problem.name", f"unknown problem {name!r}; available: {', '.join(registry.names('problem'))}")
    problem_cls = registry.get("problem", name)
    params = _build(problem_cls.Params, problem_table, "problem")
    sections = {s: _build(cls, data.get(s, {}), s) for s, cls in SECTIONS.items()}
    cfg = Config(problem=params, problem_name=name, **sections)
    _validate(cfg, problem_cls)
    return cfg


def _build(cls, table: dict, section: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{section}.{key}", f"unknown key; allowed: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], f"{section}.{key}")
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        bad = check()
        if bad:
            raise ConfigError(f"{section}.{bad[0]}", bad[1])
    return obj


def _coerce(value, hint, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, list):
            value = [value] if not isinstance(value, (dict, str)) else value
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list of {args[0].__name__}, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {hint} for {key}")


def _validate(cfg: Config, problem_cls) -> None:
    dim = len(problem_cls.axes)
    dec, net, tr, te = cfg.decomposition, cfg.network, cfg.training, cfg.test
    if bool(dec.subdomains) == bool(dec.levels):
        raise ConfigError("decomposition.subdomains", "set either subdomains (one level, e.g. [8, 8]) or levels "
                          "(several, coarse to fine, e.g. [[1, 1], [2, 2], [4, 4]]), not both or neither")
    key = "decomposition.subdomains" if dec.subdomains else "decomposition.levels"
    for shape in dec.level_shapes():
        if len(shape) != dim or any(n < 1 for n in shape):
            raise ConfigError(key, f"must list {dim} positive count(s) per level, one per axis {problem_cls.axes}, "
                              f"got {shape}")
    if any(n > 1 for shape in dec.level_shapes() for n in shape) and dec.overlap <= 1:
        raise ConfigError("decomposition.overlap", f"must exceed 1 so neighbouring subdomains overlap, got {dec.overlap}")
    if dec.overlap < 1:
        raise ConfigError("decomposition.overlap", f"must be >= 1, got {dec.overlap}")
    if dec.window not in registry.names("window"):
        raise ConfigError("decomposition.window", f"unknown window {dec.window!r}; available: {', '.join(registry.names('window'))}")
    if not net.hidden or any(h < 1 for h in net.hidden):
        raise ConfigError("network.hidden", f"must list positive layer widths, got {net.hidden}")
    if net.activation not in ACTIVATIONS:
        raise ConfigError("network.activation", f"unknown activation {net.activation!r}; available: {', '.join(ACTIVATIONS)}")
    for key in ("steps", "decay_steps", "log_every", "eval_every"):
        if getattr(tr, key) < 1:
            raise ConfigError(f"training.{key}", f"must be >= 1, got {getattr(tr, key)}")
    for key in ("resample_every", "threads"):
        if getattr(tr, key) < 0:
            raise ConfigError(f"training.{key}", f"must be >= 0, got {getattr(tr, key)}")
    if not tr.lr > 0:
        raise ConfigError("training.lr", f"must be positive, got {tr.lr}")
    if not 0 < tr.lr_decay <= 1:
        raise ConfigError("training.lr_decay", f"must lie in (0, 1], got {tr.lr_decay}")
    if tr.dtype not in DTYPES:
        raise ConfigError("training.dtype", f"must be one of {', '.join(DTYPES)}, got {tr.dtype!r}")
    if tr.device not in DEVICES:
        raise ConfigError("training.device", f"must be one of {', '.join(DEVICES)}, got {tr.device!r}")
    if tr.sampler not in SAMPLERS:
        raise ConfigError("training.sampler", f"must be one of {', '.join(SAMPLERS)}, got {tr.sampler!r}")
    if len(tr.points) != dim or any(n < 1 for n in tr.points):
        raise ConfigError("training.points", f"must list {dim} positive count(s), one per axis {problem_cls.axes}, got {tr.points}")
    if tr.resample_every and tr.sampler == "grid":
        raise ConfigError("training.resample_every", "needs a random sampler (uniform or sobol); the grid never changes")
    if any(not 0 <= a < dim for a in cfg.parallel.axes) or len(set(cfg.parallel.axes)) != len(cfg.parallel.axes):
        raise ConfigError("parallel.axes", f"must list distinct axis numbers in 0..{dim - 1} (axes {problem_cls.axes}), "
                          f"got {cfg.parallel.axes}")
    _validate_schedule(cfg, problem_cls)
    if cfg.checkpoint.every < 0:
        raise ConfigError("checkpoint.every", f"must be >= 0 (0: only at the end and on a stop signal), got {cfg.checkpoint.every}")
    if cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.keep", f"must be >= 1, got {cfg.checkpoint.keep}")
    if not te.points:
        te.points = [{1: 1000, 2: 100, 3: 40}.get(dim, 20)] * dim
    if len(te.points) != dim or any(n < 2 for n in te.points):
        raise ConfigError("test.points", f"must list {dim} count(s) >= 2, one per axis {problem_cls.axes}, got {te.points}")


def _validate_schedule(cfg: Config, problem_cls) -> None:
    sc, tr = cfg.schedule, cfg.training
    kinds = registry.names("scheduler")
    if sc.kind not in kinds:
        raise ConfigError("schedule.kind", f"must be one of {', '.join(kinds)}, got {sc.kind!r}")
    if sc.kind == "all_active":
        return
    axes = tuple(problem_cls.axes)
    if "t" not in axes:
        raise ConfigError("schedule.kind", f"time_marching needs a time axis t; problem {cfg.problem_name!r} has "
                          f"axes {axes}")
    t = axes.index("t")
    shapes = cfg.decomposition.level_shapes()
    if len(shapes) != 1:
        raise ConfigError("schedule.kind", "time_marching needs a one-level decomposition (decomposition.subdomains)")
    n_t = shapes[0][t] if len(shapes[0]) == len(axes) else 0
    if not 2 <= sc.slabs <= n_t:
        raise ConfigError("schedule.slabs", f"must lie in 2..{n_t} (the subdomains along t), got {sc.slabs}")
    if sc.steps_per_slab < 1:
        raise ConfigError("schedule.steps_per_slab", f"must be >= 1, got {sc.steps_per_slab}")
    if sc.slabs * sc.steps_per_slab > tr.steps:
        raise ConfigError("schedule.steps_per_slab", f"{sc.slabs} slabs x {sc.steps_per_slab} steps exceed "
                          f"training.steps = {tr.steps}; raise training.steps or lower the steps per slab")
    if t in cfg.parallel.axes:
        raise ConfigError("parallel.axes", f"time_marching splits space only; leave out the time axis {t}")


# ----------------------------------------------------------------------------- output
def to_dict(cfg: Config) -> dict:
    out = {"problem": {"name": cfg.problem_name}}
    out["problem"].update({k: v for k, v in dataclasses.asdict(cfg.problem).items() if v is not None})
    for section in SECTIONS:
        out[section] = dataclasses.asdict(getattr(cfg, section))
    return out


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML text (readable back by :func:`load_config`)."""
    lines = []
    for section, table in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
