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

import contextvars
import dataclasses
import math
import os
import tomllib
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from . import plugins, registry
from .derivatives import ACTIVATIONS
from .domains import SAMPLERS

DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")

# Bounds beyond which a value cannot be meant (docs/config.md gives each key's range).
INT64 = (-(2**63), 2**63 - 1)  # every integer key must fit a C int64 ...
SEED_RANGE = (0, 2**64 - 1)  # ... but the seed, which torch takes as an unsigned 64-bit number
COUNT_MAX = 10**12  # steps and intervals in steps: 10**12 steps take years
THREADS_MAX = 4096  # fixed, not a multiple of this node's cores: a config is valid on every node
KEEP_MAX = 10_000  # checkpoints kept
WIDTH_MAX = 65_536  # hidden layer width
DEPTH_MAX = 1024  # hidden layers
SUBDOMAINS_MAX = 10**8  # subdomains of all levels together
POINTS_MAX = 10**12  # points of one grid (training or test): over 10 TB of coordinates alone
LR_MAX = 10.0  # Adam moves every weight by about lr per step; the initial weights are O(1)
OVERLAP_COVER = 4.0  # a subdomain may be at most this many times as wide as the domain


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is the dotted key at fault.

    ``where`` names what is at fault, ``config`` or ``environment`` (a variable).  Control
    characters in the message are escaped, so that it always prints as one line."""

    def __init__(self, key: str, message: str, where: str = "config"):
        self.key = key
        super().__init__(_printable(f"{where}: {key}: {message}"))


def _printable(text: str) -> str:
    """``text`` with control characters and lone surrogates written as escapes."""
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)


def _show(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a huge integer as its number of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _in_range(key: str, value, lo, hi, why: str = "") -> None:
    """Raise ConfigError unless ``lo <= value <= hi``, naming the key, the value and the range."""
    if not lo <= value <= hi:
        why = f" ({why})" if why else ""
        raise ConfigError(key, f"must lie in {_num(lo)}..{_num(hi)}{why}, got {_show(value)}")


def _num(n) -> str:
    """A bound as a TOML number: big integers with digit groups (``1_000_000``)."""
    return f"{n:_}" if isinstance(n, int) and abs(n) >= 10**6 else f"{n:g}" if isinstance(n, float) else str(n)


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
    input_scale: float = 1.0  # s: a subdomain network sees s (x - centre) / half-width


@dataclass
class TrainingConfig:
    steps: int = 10000
    lr: float = 1e-3
    lr_decay: float = 1.0  # lr(step) = lr * lr_decay ** ((step - 1) / decay_steps), a smooth decay
    decay_steps: int = 1000
    decay_per_stage: bool = False  # time-marching: the decay restarts at each stage's first step
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
    causal: float = 0.0  # causal weighting of the residual along t: epsilon (0: off)
    causal_bins: int = 32  # time bins of the causal weights
    lbfgs_steps: int = 0  # the last this many of the steps use L-BFGS instead of Adam (0: Adam only)
    lbfgs_history: int = 10  # L-BFGS: (s, y) pairs kept
    lbfgs_lr: float = 1.0  # L-BFGS: step length
    lbfgs_resample_every: int = 0  # L-BFGS: redraw the points every this many steps of the phase too (0: never)
    adaptive: float = 0.0  # the fraction of the physics points drawn by their residual at each redraw (0: off)
    adaptive_pool: int = 4  # adaptive: candidates drawn per physics point


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
    snapshot_every: int = 0  # fbpinn train: append the fields to <results folder>/snapshots.h5 every this many steps
    snapshot_points: list[int] = field(default_factory=list)  # the snapshots' grid per axis; empty: test.points
    receivers: list[list[float]] = field(default_factory=list)  # positions (space axes) of traces u(r, t)
    receivers_file: str = ""  # or a file of them: .npy (R, d), .csv, or file.h5:/dataset
    receiver_samples: int = 101  # times per trace, evenly over the time axis, ends included

    def resolve_paths(self, base) -> None:
        """``receivers_file`` made absolute against ``base`` (the config file's folder)."""
        if self.receivers_file.strip():
            path, sep, dataset = self.receivers_file.partition(":")
            if not sep or Path(path).suffix.lower() not in (".h5", ".hdf5"):
                path, sep, dataset = self.receivers_file, "", ""
            full = Path(path).expanduser()
            self.receivers_file = str(full if full.is_absolute() else (Path(base) / full).resolve()) + sep + dataset


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
    problem_module: str = ""  # problem.module resolved: a .py file's absolute path, or a module name
    problem_module_sha256: str = ""  # SHA-256 of that module's source file ("" without one)


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
    except ValueError:  # not TOML (TOMLDecodeError), or an integer of thousands of digits
        parsed = value.strip()
    return path, parsed


def read_toml(path) -> dict:
    """The TOML file ``path`` as a dict; ConfigError (key ``file``) naming the path when it is
    missing, a folder, unreadable, not UTF-8 text or not valid TOML."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("file", f"{str(path)!r} is a folder, not a config file")
    if not p.exists():
        raise ConfigError("file", f"no config file {str(path)!r}")
    if not p.is_file():
        raise ConfigError("file", f"{str(path)!r} is not a regular file")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError("file", f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("file", f"{str(path)!r} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); "
                          "a config is a TOML text file") from None
    try:
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, or an integer too long to convert
        raise ConfigError("file", f"{path} is not valid TOML: {e}") from None


_STORED = contextvars.ContextVar("stored_config", default=False)


def reading_stored() -> bool:
    """Whether the config being validated is one a results file or checkpoint stores
    (:func:`load_config` with ``stored=True``): data files it names (a gridded velocity model)
    were checked and recorded when the run started, and are not read again to validate it."""
    return _STORED.get()


def load_config(path=None, overrides=(), data: dict | None = None, stored: bool = False) -> Config:
    """Read, override and validate a config.

    Parameters
    ----------
    path : TOML file (or None with ``data``).
    overrides : ``"section.key=value"`` strings, applied in order.
    data : an already parsed dict, used instead of ``path``.
    stored : the config is the one a results file or checkpoint holds (see :func:`reading_stored`).
    """
    if data is None:
        data = read_toml(path)
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in data:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise ConfigError(section, "is not a table")
        data[section][key] = value
    token = _STORED.set(bool(stored))
    try:
        cfg = from_dict(data, Path(path).absolute().parent if path is not None else None)
    finally:
        _STORED.reset(token)
    cfg.source = str(path) if path is not None else ""
    return cfg


def from_dict(data: dict, base=None) -> Config:
    """Validate a parsed config.  ``base``: the folder a relative ``problem.module`` path is read
    from (the config file's; the working folder if None)."""
    allowed = ["problem", *SECTIONS]
    for section, table in data.items():
        if section not in allowed:
            raise ConfigError(section, f"unknown table; allowed: {', '.join(allowed)}")
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table")
    problem_table = dict(data.get("problem", {}))
    module = _import_problem_module(problem_table.pop("module", None), base)
    name = problem_table.pop("name", None)
    try:
        available = registry.names("problem")
        if name is None:
            raise ConfigError("problem.name", f"missing; available: {', '.join(available)}")
        if name not in available:
            raise ConfigError("problem.name", f"unknown problem {_show(name)}; available: {', '.join(available)}"
                              + ("" if module else "; a problem of your own is named by problem.module "
                                 "(docs/guide.md, \"Your own problem\")"))
        problem_cls = registry.get("problem", name)
    except registry.RegistryError as e:
        raise ConfigError("problem.name", str(e)) from None
    if problem_table.get("domain") is not None:
        _check_domain(problem_table["domain"], problem_cls, name)
    params = _build(problem_cls.Params, problem_table, "problem", base if base is not None else Path.cwd())
    sections = {s: _build(cls, data.get(s, {}), s, base if base is not None else Path.cwd())
                for s, cls in SECTIONS.items()}
    cfg = Config(problem=params, problem_name=name, **sections)
    if module is not None:
        cfg.problem_module, cfg.problem_module_sha256 = module.spec, module.sha256
    _validate(cfg, problem_cls)
    return cfg


def _import_problem_module(value, base) -> plugins.Imported | None:
    """Import ``problem.module`` (None when the key is not set); ConfigError naming the key,
    the file and the first line of the error when that fails."""
    if value is None:
        return None
    value = _coerce(value, str, "problem.module")
    if not value.strip():
        raise ConfigError("problem.module", "must name a .py file or an importable module, got an empty string")
    try:
        return plugins.import_module(value, base if base is not None else Path.cwd())
    except plugins.PluginError as e:
        raise ConfigError("problem.module", str(e)) from None


def _check_domain(value, problem_cls, name: str) -> None:
    """ConfigError unless ``problem.domain`` is allowed for the problem and lists one pair per
    axis (the values themselves are checked by ``Params.check_domain``)."""
    if not getattr(problem_cls, "configurable_domain", False):
        raise ConfigError("problem.domain", f"problem {name!r} has a fixed domain (its solution assumes it): "
                          "leave problem.domain out")
    axes = tuple(problem_cls.axes)
    if not isinstance(value, list) or len(value) != len(axes) or not all(isinstance(p, list) for p in value):
        example = [[0.0, 1.0]] * len(axes)
        raise ConfigError("problem.domain", f"must list one [lo, hi] pair per axis {axes}, e.g. "
                          f"{_toml_value(example)}, got {_show(value)}")


def _build(cls, table: dict, section: str, base=None):
    """The dataclass ``cls`` of a table, its values coerced and validated; a ``problem`` table's
    file names are first made absolute against ``base`` (``Params.resolve_paths``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{section}.{key}", f"unknown key; allowed: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], f"{section}.{key}")
    obj = cls(**values)
    if base is not None and hasattr(obj, "resolve_paths"):
        obj.resolve_paths(base)
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
            raise ConfigError(key, f"must be a list of {getattr(args[0], '__name__', args[0])}, got {_show(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {_show(value)}")
        if key != "training.seed":  # its own range is checked with the others
            _in_range(key, value, *INT64, "a 64-bit integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {_show(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(key, f"must be finite, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {_show(value)}")
        bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cs")]
        if bad:
            raise ConfigError(key, f"must not contain control characters (found {ascii(bad[0])}), got {_show(value)}")
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
    _in_range(key, sum(math.prod(shape) for shape in dec.level_shapes()), 1, SUBDOMAINS_MAX,
              "the number of subdomains, all levels together")
    if any(n > 1 for shape in dec.level_shapes() for n in shape) and dec.overlap <= 1:
        raise ConfigError("decomposition.overlap", f"must exceed 1 so neighbouring subdomains overlap, got {dec.overlap}")
    if dec.overlap < 1:
        raise ConfigError("decomposition.overlap", f"must be >= 1, got {dec.overlap}")
    # A subdomain is overlap / (n - 1) times as wide as the domain along an axis of n > 1
    # subdomains (overlap times for n = 1); bound that on the axis with the most of them.
    n_max = max(n for shape in dec.level_shapes() for n in shape)
    _in_range("decomposition.overlap", dec.overlap, 1, OVERLAP_COVER * max(1, n_max - 1),
              f"{OVERLAP_COVER:g} x max(1, n - 1) with n = {n_max} the most subdomains along an axis: beyond it "
              f"every subdomain is over {OVERLAP_COVER:g} times as wide as the domain")
    if dec.window not in registry.names("window"):
        raise ConfigError("decomposition.window", f"unknown window {dec.window!r}; available: {', '.join(registry.names('window'))}")
    if not 1e-3 <= net.input_scale <= 1e3:
        raise ConfigError("network.input_scale", f"must lie in [0.001, 1000], got {net.input_scale}")
    if not net.hidden or any(h < 1 for h in net.hidden):
        raise ConfigError("network.hidden", f"must list positive layer widths, got {_show(net.hidden)}")
    _in_range("network.hidden", len(net.hidden), 1, DEPTH_MAX, "the number of hidden layers")
    _in_range("network.hidden", max(net.hidden), 1, WIDTH_MAX, "a layer width")
    if net.activation not in ACTIVATIONS:
        raise ConfigError("network.activation", f"unknown activation {net.activation!r}; available: {', '.join(ACTIVATIONS)}")
    for key in ("steps", "decay_steps", "log_every", "eval_every"):
        if getattr(tr, key) < 1:
            raise ConfigError(f"training.{key}", f"must be >= 1, got {getattr(tr, key)}")
        _in_range(f"training.{key}", getattr(tr, key), 1, COUNT_MAX)
    for key in ("resample_every", "threads"):
        if getattr(tr, key) < 0:
            raise ConfigError(f"training.{key}", f"must be >= 0, got {getattr(tr, key)}")
    _in_range("training.resample_every", tr.resample_every, 0, COUNT_MAX)
    _in_range("training.threads", tr.threads, 0, THREADS_MAX, "0: automatic")
    _in_range("training.seed", tr.seed, *SEED_RANGE, "torch would take a negative seed s as 2**64 + s")
    if not tr.lr > 0:
        raise ConfigError("training.lr", f"must be positive, got {tr.lr}")
    if tr.lr > LR_MAX:
        raise ConfigError("training.lr", f"must lie in (0, {LR_MAX:g}] (Adam moves every weight by about lr per "
                          f"step, and the initial weights are below 1), got {tr.lr}")
    if not 0 < tr.lr_decay <= 1:
        raise ConfigError("training.lr_decay", f"must lie in (0, 1], got {tr.lr_decay}")
    if tr.decay_per_stage and cfg.schedule.kind != "time_marching":
        raise ConfigError("training.decay_per_stage", "restarts the decay at each time-marching stage: needs "
                          f'schedule.kind = "time_marching", got {cfg.schedule.kind!r}')
    if tr.dtype not in DTYPES:
        raise ConfigError("training.dtype", f"must be one of {', '.join(DTYPES)}, got {tr.dtype!r}")
    if tr.device not in DEVICES:
        raise ConfigError("training.device", f"must be one of {', '.join(DEVICES)}, got {tr.device!r}")
    if tr.sampler not in SAMPLERS:
        raise ConfigError("training.sampler", f"must be one of {', '.join(SAMPLERS)}, got {tr.sampler!r}")
    if not 0 <= tr.causal <= CAUSAL_MAX:
        raise ConfigError("training.causal", f"must lie in [0, {CAUSAL_MAX:g}] (0: no causal weighting), got {tr.causal}")
    _in_range("training.causal_bins", tr.causal_bins, 2, CAUSAL_BINS_MAX)
    if tr.causal and (len(problem_cls.axes) < 2 or problem_cls.axes[-1] != "t"):
        raise ConfigError("training.causal", f"weights the residual along t: needs a problem whose last axis is t; "
                          f"{cfg.problem_name!r} has axes {', '.join(problem_cls.axes)}")
    _validate_lbfgs(cfg)
    if len(tr.points) != dim or any(n < 1 for n in tr.points):
        raise ConfigError("training.points", f"must list {dim} positive count(s), one per axis {problem_cls.axes}, got {_show(tr.points)}")
    _in_range("training.points", math.prod(tr.points), 1, POINTS_MAX, "the product of the counts")
    if tr.resample_every and tr.sampler == "grid":
        raise ConfigError("training.resample_every", "needs a random sampler (uniform or sobol); the grid never changes")
    _validate_adaptive(cfg)
    if any(not 0 <= a < dim for a in cfg.parallel.axes) or len(set(cfg.parallel.axes)) != len(cfg.parallel.axes):
        raise ConfigError("parallel.axes", f"must list distinct axis numbers in 0..{dim - 1} (axes {problem_cls.axes}), "
                          f"got {cfg.parallel.axes}")
    _validate_schedule(cfg, problem_cls)
    if cfg.checkpoint.every < 0:
        raise ConfigError("checkpoint.every", f"must be >= 0 (0: only at the end and on a stop signal), got {cfg.checkpoint.every}")
    _in_range("checkpoint.every", cfg.checkpoint.every, 0, COUNT_MAX)
    if cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.keep", f"must be >= 1, got {cfg.checkpoint.keep}")
    _in_range("checkpoint.keep", cfg.checkpoint.keep, 1, KEEP_MAX)
    if not te.points:
        te.points = [{1: 1000, 2: 100, 3: 40}.get(dim, 20)] * dim
    if len(te.points) != dim or any(n < 2 for n in te.points):
        raise ConfigError("test.points", f"must list {dim} count(s) >= 2, one per axis {problem_cls.axes}, got {_show(te.points)}")
    _in_range("test.points", math.prod(te.points), 2**dim, POINTS_MAX, "the product of the counts")
    out = cfg.output
    _in_range("output.snapshot_every", out.snapshot_every, 0, COUNT_MAX)
    if out.snapshot_points and (len(out.snapshot_points) != dim or any(n < 2 for n in out.snapshot_points)):
        raise ConfigError("output.snapshot_points", f"must list {dim} count(s) >= 2, one per axis {problem_cls.axes}, "
                          f"or be empty (the test grid), got {_show(out.snapshot_points)}")
    if out.snapshot_points:
        _in_range("output.snapshot_points", math.prod(out.snapshot_points), 2**dim, POINTS_MAX,
                  "the product of the counts")
    _validate_receivers(cfg, problem_cls)
    _validate_derivatives(cfg, problem_cls)


ADAPTIVE_POOL_MAX = 100  # candidates per physics point of adaptive resampling


def _validate_adaptive(cfg: Config) -> None:
    """Residual-based resampling: a fraction in [0, 1) that chooses at least one point, at each redraw
    of random points, of a problem with a physics term."""
    tr = cfg.training
    if not 0 <= tr.adaptive < 1:
        raise ConfigError("training.adaptive", f"must lie in [0, 1) (the fraction of the physics points drawn by "
                          f"their residual; 0: off), got {tr.adaptive}")
    _in_range("training.adaptive_pool", tr.adaptive_pool, 1, ADAPTIVE_POOL_MAX, "candidates per physics point")
    if not tr.adaptive:
        return
    if not tr.resample_every or tr.sampler == "grid":
        raise ConfigError("training.adaptive", "chooses points at each redraw: needs training.resample_every >= 1 "
                          f"and a random sampler (uniform or sobol), got resample_every = {tr.resample_every}, "
                          f"sampler = {tr.sampler!r}")
    if not cfg.problem.physics:
        raise ConfigError("training.adaptive", "chooses physics points by their residual: needs problem.physics = true")
    if adaptive_count(cfg) < 1:
        raise ConfigError("training.adaptive", f"{tr.adaptive} of the {math.prod(tr.points)} physics points "
                          "is less than one point")


def adaptive_count(cfg: Config) -> int:
    """How many physics points each adaptive redraw chooses by residual (0 when off)."""
    return round(cfg.training.adaptive * math.prod(cfg.training.points))


LBFGS_HISTORY_MAX = 1000  # (s, y) pairs L-BFGS keeps
LBFGS_LR_MAX = 10.0  # L-BFGS step length


def _validate_lbfgs(cfg: Config) -> None:
    """The L-BFGS phase: its length below training.steps (with time-marching, below every stage's
    steps: each stage ends with its own phase), its history and step length in range."""
    tr = cfg.training
    if tr.lbfgs_steps < 0 or tr.lbfgs_steps >= tr.steps:
        raise ConfigError("training.lbfgs_steps", f"must lie in 0..training.steps - 1 = {tr.steps - 1} (the last "
                          f"lbfgs_steps steps use L-BFGS after Adam; 0: Adam only), got {_show(tr.lbfgs_steps)}")
    _in_range("training.lbfgs_history", tr.lbfgs_history, 1, LBFGS_HISTORY_MAX, "(s, y) pairs kept")
    if not 0 < tr.lbfgs_lr <= LBFGS_LR_MAX:
        raise ConfigError("training.lbfgs_lr", f"must lie in (0, {LBFGS_LR_MAX:g}] (the step length of L-BFGS, "
                          f"1 for a full quasi-Newton step), got {tr.lbfgs_lr}")
    _in_range("training.lbfgs_resample_every", tr.lbfgs_resample_every, 0, COUNT_MAX, "0: the points stay fixed")
    if tr.lbfgs_resample_every and tr.sampler == "grid":
        raise ConfigError("training.lbfgs_resample_every", "needs a random sampler (uniform or sobol); the grid never "
                          "changes")
    sc = cfg.schedule
    if tr.lbfgs_steps and sc.kind == "time_marching":
        rest = tr.steps - sc.slabs * sc.steps_per_slab
        shortest = min(sc.steps_per_slab, rest) if rest > 0 else sc.steps_per_slab
        if tr.lbfgs_steps >= shortest:
            raise ConfigError("training.lbfgs_steps", f"with schedule.kind = \"time_marching\" every stage ends "
                              f"with its own L-BFGS phase, so it must be below the shortest stage's steps, "
                              f"{shortest} (schedule.steps_per_slab = {sc.steps_per_slab}, {max(rest, 0)} steps "
                              f"after the last slab), got {tr.lbfgs_steps}")


RECEIVERS_MAX = 100_000  # receivers of a run
CAUSAL_BINS_MAX = 100_000  # time bins of causal weighting
CAUSAL_MAX = 1e12  # epsilon of causal weighting


def receiver_positions(cfg: Config, problem_cls=None):
    """The (R, d) receiver positions of ``cfg`` (``output.receivers`` or ``output.receivers_file``),
    R = 0 without receivers; ConfigError naming the key for a file that cannot be read."""
    import numpy as np

    from .points import PointsError, read

    out = cfg.output
    problem_cls = problem_cls or registry.get("problem", cfg.problem_name)
    space = tuple(problem_cls.axes[:-1])
    if out.receivers_file.strip():
        try:
            return read(out.receivers_file, space, f"output.receivers_file {out.receivers_file}")
        except PointsError as e:
            raise ConfigError("output.receivers_file", str(e).split(": ", 1)[1]) from None
    return np.asarray(out.receivers, dtype=np.float64).reshape(len(out.receivers), len(space))


def _validate_receivers(cfg: Config, problem_cls) -> None:
    """Receivers need a space-time problem; their positions lie in the domain's space box."""
    import torch

    out = cfg.output
    if not out.receivers and not out.receivers_file.strip():
        return
    if out.receivers and out.receivers_file.strip():
        raise ConfigError("output.receivers", "give the positions either here or in output.receivers_file, not both")
    axes = tuple(problem_cls.axes)
    if len(axes) < 2 or axes[-1] != "t":
        raise ConfigError("output.receivers", f"traces u(r, t) need a problem whose last axis is t; "
                          f"{cfg.problem_name!r} has axes {', '.join(axes)}")
    space = axes[:-1]
    key = "output.receivers_file" if out.receivers_file.strip() else "output.receivers"
    if out.receivers and not all(isinstance(r, list) and len(r) == len(space) for r in out.receivers):
        raise ConfigError(key, f"must list positions of {len(space)} coordinate(s) ({', '.join(space)}), e.g. "
                          f"{_toml_value([[0.0] * len(space)])}, got {_show(out.receivers)}")
    positions = receiver_positions(cfg, problem_cls)
    _in_range(key, len(positions), 1, RECEIVERS_MAX, "the number of receivers")
    _in_range("output.receiver_samples", out.receiver_samples, 2, COUNT_MAX)
    if not (positions == positions).all() or not abs(positions).max() < float("inf"):
        raise ConfigError(key, "positions must be finite numbers")
    domain = problem_cls(cfg.problem, torch.float64).domain
    lo, hi = domain.lo[:-1], domain.hi[:-1]
    for i, r in enumerate(positions):
        if any(not a <= v <= b for v, a, b in zip(r, lo, hi)):
            box = " x ".join(f"[{a:g}, {b:g}]" for a, b in zip(lo, hi))
            raise ConfigError(key, f"receiver {i} at {r.tolist()} lies outside the domain {box} "
                              f"({', '.join(space)})")


def _validate_derivatives(cfg: Config, problem_cls) -> None:
    """ConfigError unless the model can provide every derivative the problem asks for: those of
    its residual (``needs``) and of its extra loss terms, which may depend on the parameters."""
    import torch

    from .derivatives import MAX_ORDER, parse

    from .problems import check_fields

    bad = check_fields(problem_cls.fields, problem_cls.axes)
    if bad:
        raise ConfigError("problem.name", f"problem {cfg.problem_name!r}: {bad}")
    problem = problem_cls(cfg.problem, torch.float64)  # cheap: the points come later
    wanted = [("the residual", n) for n in problem.needs]
    wanted += [(f"the loss term {t.name!r}", n) for t in problem.terms(torch.Generator().manual_seed(0))
               for n in t.needs]
    for where, name in wanted:
        try:
            order = len(parse(name, tuple(problem.axes), tuple(problem.fields)))
        except ValueError as e:
            raise ConfigError("problem.name", f"problem {cfg.problem_name!r}: {where}: {e}") from None
        if order > MAX_ORDER:
            raise ConfigError("problem.name", f"problem {cfg.problem_name!r}: {where} needs {name}, a derivative of "
                              f"order {order}; the model provides derivatives up to order {MAX_ORDER}")


def _validate_schedule(cfg: Config, problem_cls) -> None:
    sc, tr = cfg.schedule, cfg.training
    kinds = registry.names("scheduler")
    if sc.kind not in kinds:
        raise ConfigError("schedule.kind", f"must be one of {', '.join(kinds)}, got {sc.kind!r}")
    for key in ("slabs", "steps_per_slab"):
        _in_range(f"schedule.{key}", getattr(sc, key), 0, COUNT_MAX)
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


# ----------------------------------------------------------------------------- environment
def omp_num_threads() -> int | None:
    """The thread count ``OMP_NUM_THREADS`` asks for, or None when it is unset or empty.

    OpenMP allows a comma-separated list (one count per nesting level); the first is used.
    Anything but a whole number in 1..THREADS_MAX raises ConfigError naming the variable."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    if not text.strip():
        return None
    first = text.split(",")[0].strip()
    if not (first.isascii() and first.isdigit() and len(first) <= 6 and 1 <= int(first) <= THREADS_MAX):
        raise ConfigError(f"OMP_NUM_THREADS={_show(text)}", f"must be a whole number of threads in 1..{THREADS_MAX} "
                          "(or a comma-separated list of them, the first of which is used); set it so, or unset it",
                          where="environment")
    return int(first)


def check_environment() -> None:
    """Raise ConfigError for an environment variable fbpinn reads that holds nonsense.

    Called by ``fbpinn train`` with the config checks, before anything is created."""
    omp_num_threads()


# ----------------------------------------------------------------------------- output
def to_dict(cfg: Config) -> dict:
    out = {"problem": {"name": cfg.problem_name}}
    if cfg.problem_module:
        out["problem"]["module"] = cfg.problem_module
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
