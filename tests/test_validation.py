"""Validation that rejects nonsense: key ranges, 64-bit integers, control characters, unreadable
config files, a malformed OMP_NUM_THREADS and derivatives the model cannot provide.

Every bad input goes through ``fbpinn train`` and must end with exit status 2, one line
``fbpinn: error: ...`` naming the key, no traceback and no results folder."""

import dataclasses
import os
import re
import tomllib
import typing
from pathlib import Path

import pytest

from fbpinn import registry
from fbpinn.cli import main
from fbpinn.config import ConfigError, check_environment, load_config, to_toml
from fbpinn.problems import Problem, all_problems
from test_parallel import write_toml

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.toml"))

BASE = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "overlap": 2.0},
        "network": {"hidden": [4]},
        "training": {"steps": 2, "points": [20], "eval_every": 1, "log_every": 1, "threads": 1},
        "test": {"points": [10]}, "checkpoint": {"every": 0}}

E30 = "1" + "0" * 30  # fits no 64-bit integer


@pytest.fixture
def base(tmp_path) -> Path:
    path = tmp_path / "base.toml"
    path.write_text(to_toml(load_config(data=BASE)))
    return path


def train_fails(config, out: Path, capsys, *args) -> str:
    """Run ``fbpinn train``; assert exit 2, one error line, no traceback, no output; return the line."""
    code = main(["train", str(config), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fbpinn: error: "), err
    assert "Traceback" not in err
    assert not out.exists()
    return lines[0]


BAD_SETS = [
    # 64-bit integers and the seed
    ("training.seed=-1", "training.seed: must lie in 0..18_446_744_073_709_551_615"),
    ("training.seed=18446744073709551616", "training.seed: must lie in 0..18_446_744_073_709_551_615"),
    (f"training.seed={E30}", "training.seed: must lie in 0..18_446_744_073_709_551_615"),
    ("training.seed=1e23", "training.seed: must be an integer, got 1e+23"),
    ("training.seed=" + "9" * 5000, "training.seed: must be an integer, got '99999"),
    ("training.steps=9223372036854775808", "training.steps: must lie in -9_223_372_036_854_775_808.."),
    (f"training.steps={E30}", "training.steps: must lie in -9_223_372_036_854_775_808.."),
    (f"training.steps=-{E30}", "training.steps: must lie in -9_223_372_036_854_775_808.."),
    (f"training.log_every={E30}", "training.log_every: must lie in -9_223_372_036_854_775_808"),
    # threads
    ("training.threads=1e11", "training.threads: must be an integer, got 100000000000.0"),
    ("training.threads=100000000000", "training.threads: must lie in 0..4096"),
    ("training.threads=4097", "training.threads: must lie in 0..4096"),
    ("training.threads=-1", "training.threads: must be >= 0"),
    # step counts and intervals
    ("training.steps=0", "training.steps: must be >= 1"),
    ("training.steps=-5", "training.steps: must be >= 1"),
    ("training.steps=1000000000001", "training.steps: must lie in 1..1_000_000_000_000"),
    ("training.steps=1e4", "training.steps: must be an integer"),
    ("training.decay_steps=0", "training.decay_steps: must be >= 1"),
    ("training.decay_steps=10000000000000", "training.decay_steps: must lie in 1..1_000_000_000_000"),
    ("training.log_every=0", "training.log_every: must be >= 1"),
    ("training.log_every=10000000000000", "training.log_every: must lie in 1..1_000_000_000_000"),
    ("training.eval_every=0", "training.eval_every: must be >= 1"),
    ("training.eval_every=10000000000000", "training.eval_every: must lie in 1..1_000_000_000_000"),
    ("training.resample_every=-1", "training.resample_every: must be >= 0"),
    ("training.resample_every=10000000000000", "training.resample_every: must lie in 0..1_000_000_000_000"),
    ("checkpoint.every=-1", "checkpoint.every: must be >= 0"),
    ("checkpoint.every=10000000000000", "checkpoint.every: must lie in 0..1_000_000_000_000"),
    ("checkpoint.keep=0", "checkpoint.keep: must be >= 1"),
    ("checkpoint.keep=10001", "checkpoint.keep: must lie in 1..10000"),
    ("schedule.slabs=-1", "schedule.slabs: must lie in 0..1_000_000_000_000"),
    (f"schedule.slabs={E30}", "schedule.slabs: must lie in -9_223_372_036_854_775_808"),
    ("schedule.steps_per_slab=-1", "schedule.steps_per_slab: must lie in 0..1_000_000_000_000"),
    # sizes
    ("training.points=0", "training.points: must list 1 positive count"),
    ("training.points=[0]", "training.points: must list 1 positive count"),
    ("training.points=1000000000001", "training.points: must lie in 1..1_000_000_000_000"),
    (f"training.points=[{E30}]", "training.points[0]: must lie in -9_223_372_036_854_775_808"),
    ("test.points=1", "test.points: must list 1 count(s) >= 2"),
    ("test.points=1000000000001", "test.points: must lie in 2..1_000_000_000_000"),
    ("network.hidden=0", "network.hidden: must list positive layer widths"),
    ("network.hidden=[]", "network.hidden: must list positive layer widths"),
    ("network.hidden=65537", "network.hidden: must lie in 1..65536 (a layer width), got 65537"),
    ("network.hidden=[" + "2, " * 1025 + "]", "network.hidden: must lie in 1..1024 (the number of hidden layers)"),
    (f"network.hidden=[{E30}]", "network.hidden[0]: must lie in -9_223_372_036_854_775_808"),
    ("decomposition.subdomains=0", "decomposition.subdomains: must list 1 positive count"),
    ("decomposition.subdomains=100000001", "decomposition.subdomains: must lie in 1..100_000_000"),
    (f"decomposition.subdomains={E30}", "decomposition.subdomains[0]: must lie in -9_223_372_036_854_775_808"),
    # floats
    ("training.lr=0", "training.lr: must be positive"),
    ("training.lr=-1", "training.lr: must be positive"),
    ("training.lr=10.5", "training.lr: must lie in (0, 10]"),
    ("training.lr=1e300", "training.lr: must lie in (0, 10]"),
    ("training.lr=inf", "training.lr: must be finite"),
    ("training.lr=nan", "training.lr: must be finite"),
    ("training.lr=1" + "0" * 400, "training.lr: must be finite, got inf"),
    ("training.lr_decay=0", "training.lr_decay: must lie in (0, 1]"),
    ("training.lr_decay=1.5", "training.lr_decay: must lie in (0, 1]"),
    ("decomposition.overlap=1e300", "decomposition.overlap: must lie in 1..12 "),
    ("decomposition.overlap=12.5", "decomposition.overlap: must lie in 1..12 "),
    ("decomposition.overlap=0.5", "decomposition.overlap: must exceed 1"),
    ("decomposition.overlap=-inf", "decomposition.overlap: must be finite"),
    ("problem.omega=1e300", "problem.omega: must lie in [1e-06, 1e+06], got 1e+300"),
    ("problem.omega=1e-300", "problem.omega: must lie in [1e-06, 1e+06], got 1e-300"),
    ("problem.omega=0", "problem.omega: must be positive"),
    ("problem.output_scale=1e300", "problem.output_scale: must lie in [1e-06, 1e+06]"),
    ("problem.output_scale=1e-300", "problem.output_scale: must lie in [1e-06, 1e+06]"),
    # control characters in strings
    ('output.dir="r\\nx"', r"output.dir: must not contain control characters (found '\n'), got 'r\nx'"),
    ('output.dir="r\\rx"', r"output.dir: must not contain control characters (found '\r')"),
    ('output.dir="r\\tx"', r"output.dir: must not contain control characters (found '\t')"),
    ('output.dir="a\\u0000b"', r"output.dir: must not contain control characters (found '\x00')"),
    ('output.dir="\\u001b[31mred"', r"output.dir: must not contain control characters (found '\x1b')"),
    ('output.dir="del\\u007f"', r"output.dir: must not contain control characters (found '\x7f')"),
    ('output.dir="c1\\u0085"', r"output.dir: must not contain control characters (found '\x85')"),
    ('training.sampler="sob\\nol"', r"training.sampler: must not contain control characters"),
    ('decomposition.window="cos\\u001bine"', r"decomposition.window: must not contain control characters"),
    ('training.device="cpu\\n"', r"training.device: must not contain control characters"),
    ('problem.name="cos\\n1d"', r"problem.name: unknown problem 'cos\n1d'"),
    ("training.st\neps=1", r"training.st\neps: unknown key"),
    ("training.steps=\"1\x1b\"", r"""training.steps: must be an integer, got '"1\x1b"'"""),
]


@pytest.mark.parametrize("setting,message", BAD_SETS, ids=[f"{i}:{s[:40]!r}" for i, (s, _) in enumerate(BAD_SETS)])
def test_bad_set_values_exit_2(base, tmp_path, capsys, setting, message):
    line = train_fails(base, tmp_path / "out", capsys, "--set", setting)
    assert message in line


def test_enough_bad_set_cases():
    assert len(BAD_SETS) >= 60 and len({s for s, _ in BAD_SETS}) == len(BAD_SETS)


def _unreadable(tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text('[problem]\nname = "cos1d"\n')
    path.chmod(0)
    return path


BAD_FILES = {
    "binary": (lambda d: _write(d / "b.toml", bytes(range(256)) * 4), "is not UTF-8 text (byte 128 is 0x80)"),
    "latin1": (lambda d: _write(d / "l.toml", '[problem]\nname = "café"\n'.encode("latin-1")), "is not UTF-8 text"),
    "folder": (lambda d: (d / "cfg.toml").mkdir() or d / "cfg.toml", "is a folder, not a config file"),
    "missing": (lambda d: d / "missing.toml", "no config file"),
    "unreadable": (_unreadable, "cannot read"),
    "bad TOML": (lambda d: _write(d / "t.toml", b"[problem\nname="), "is not valid TOML"),
    "raw newline in a string": (lambda d: _write(d / "n.toml", b'[problem]\nname = "cos\n1d"\n'), "is not valid TOML"),
    "huge integer": (lambda d: _write(d / "h.toml", b"[training]\nsteps = " + b"9" * 5000 + b"\n"), "is not valid TOML"),
    "device file": (lambda d: Path("/dev/null"), "is not a regular file"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_files_exit_2(tmp_path, capsys, monkeypatch, case):
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    if case == "unreadable" and os.geteuid() == 0:  # root reads any file: refuse as the kernel would
        original = Path.read_bytes

        def denied(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return original(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    line = train_fails(path, tmp_path / "out", capsys)
    assert line.startswith("fbpinn: error: config: file: ") and message in line
    assert path.name in line
    if case == "unreadable":
        assert line.endswith(": Permission denied")


def test_errors_in_a_file_name_the_key(tmp_path, capsys):
    path = _write(tmp_path / "c.toml", to_toml(load_config(data=BASE)).replace('dir = ""', 'dir = "a\\u001bb"').encode())
    assert r"output.dir: must not contain control characters (found '\x1b')" in train_fails(path, tmp_path / "o", capsys)
    path.write_text(to_toml(load_config(data=BASE)).replace("seed = 0", "seed = -3"))
    assert "training.seed: must lie in 0..18_446_744_073_709_551_615 (torch would take a negative seed" in \
        train_fails(path, tmp_path / "o", capsys)


def test_ranges_at_their_bounds_are_accepted():
    cfg = load_config(data=BASE, overrides=[
        "training.seed=18446744073709551615", "training.threads=4096", "training.steps=1000000000000",
        "training.decay_steps=1000000000000", "training.lr=10", "decomposition.overlap=12",
        "network.hidden=65536", "checkpoint.keep=10000", "problem.omega=1e6", "output.dir=ünïcode/ø"])
    assert cfg.training.seed == 2**64 - 1 and cfg.decomposition.overlap == 12.0
    # The overlap bound follows the most subdomains along an axis (4 x max(1, n - 1)).
    assert load_config(data=BASE, overrides=["decomposition.subdomains=1", "decomposition.overlap=4"])
    with pytest.raises(ConfigError, match=r"decomposition.overlap: must lie in 1..4 .*with n = 1"):
        load_config(data=BASE, overrides=["decomposition.subdomains=1", "decomposition.overlap=4.01"])
    laplace = {**BASE, "problem": {"name": "laplace2d_multiscale"}, "training": {"points": [5, 5]},
               "test": {"points": [5, 5]}, "decomposition": {"levels": [[1, 1], [2, 9]], "overlap": 32.0}}
    assert load_config(data=laplace).decomposition.overlap == 32.0
    with pytest.raises(ConfigError, match=r"must lie in 1..32 .*with n = 9"):
        load_config(data=laplace, overrides=["decomposition.overlap=33"])


# ----------------------------------------------------------------------------- round trip
def _round_trip(cfg):
    again = load_config(data=tomllib.loads(to_toml(cfg)))
    again.source = cfg.source
    assert again == cfg
    assert to_toml(again) == to_toml(cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_round_trip_equal(path):
    _round_trip(load_config(path))


@pytest.mark.parametrize("text", ['say "hi"', "back\\slash\\", 'both \\" mixed', "ünïcödé/日本語/Ωmega",
                                  "emoji 🙂", "'single'", "trailing\\", "#not a comment", "a = b", "\u2028sep",
                                  "", " spaces "])
def test_strings_round_trip(text):
    cfg = load_config(data=BASE)
    cfg.output.dir = text
    _round_trip(cfg)


def test_extreme_numbers_round_trip():
    cfg = load_config(data=BASE, overrides=["training.seed=18446744073709551615", "training.lr=1e-300",
                                            "training.lr_decay=0.1", "problem.omega=999999.9999999999"])
    _round_trip(cfg)


# ----------------------------------------------------------------------------- OMP_NUM_THREADS
@pytest.mark.parametrize("value", ["abc", "0", "-2", "1e3", "4.5", "four", " ,4", "4097", "9" * 5000, "\x1b[0m"])
def test_malformed_omp_num_threads_exits_2(base, tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ConfigError, match="environment: OMP_NUM_THREADS="):
        check_environment()
    line = train_fails(base, tmp_path / "out", capsys, "--set", "training.threads=0")
    assert line.startswith("fbpinn: error: environment: OMP_NUM_THREADS=")
    assert "must be a whole number of threads in 1..4096" in line


@pytest.mark.parametrize("value,threads", [("4,2", 4), (" 3 ", 3), ("2,1,1", 2), ("", None), ("   ", None)])
def test_usable_omp_num_threads(monkeypatch, value, threads):
    import torch

    from fbpinn.config import omp_num_threads
    from fbpinn.parallel import Context, configure_threads

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    check_environment()
    assert omp_num_threads() == threads
    before = torch.get_num_threads()
    try:
        assert configure_threads(Context(None), 0) == (threads or before)
    finally:
        torch.set_num_threads(before)


def test_configure_threads_refuses_garbage(monkeypatch):
    from fbpinn.parallel import Context, configure_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    with pytest.raises(ConfigError, match=r"environment: OMP_NUM_THREADS='abc': must be a whole number"):
        configure_threads(Context(None), 0)


# ----------------------------------------------------------------------------- derivatives
class SeventhOrder(Problem):
    """u_xxxxxxx = 0: asks for a derivative beyond the highest order the model provides (6)."""

    axes = ("x",)
    needs = ("u", "u_xxxxxxx")


class SeventhOrderTerm(Problem):
    """A residual of order 1, but an extra term of order 7."""

    axes = ("x", "t")
    needs = ("u_t",)

    def terms(self, generator):
        from fbpinn.problems import Term
        import torch

        return [Term("edge", torch.zeros(1, 2), ("u_xxxxxxt",), lambda x, d: d["u_xxxxxxt"])]


class BadAxis(Problem):
    """Names an axis it does not have."""

    axes = ("x",)
    needs = ("u_y",)


@pytest.mark.parametrize("cls,name,message", [
    (SeventhOrder, "seventh_order", "problem 'seventh_order': the residual needs u_xxxxxxx, a derivative of "
                                    "order 7; the model provides derivatives up to order 6"),
    (SeventhOrderTerm, "seventh_order_term", "problem 'seventh_order_term': the loss term 'edge' needs "
                                             "u_xxxxxxt, a derivative of order 7"),
    (BadAxis, "bad_axis", "problem 'bad_axis': the residual: derivative 'u_y' names an axis not in ('x',)"),
])
def test_derivatives_the_model_cannot_provide_exit_2(tmp_path, capsys, monkeypatch, cls, name, message):
    monkeypatch.setitem(registry._REGISTRIES["problem"], name, cls)  # removed again after the test
    dim = len(cls.axes)
    data = {**BASE, "problem": {"name": name}, "decomposition": {"subdomains": [2] * dim, "overlap": 2.0},
            "training": {"steps": 2, "points": [4] * dim}, "test": {"points": [3] * dim}}
    line = train_fails(write_toml(data, tmp_path / "c.toml"), tmp_path / "out", capsys)
    assert line.startswith(f"fbpinn: error: config: problem.name: {message}")


def test_temporary_problems_are_gone():
    assert not {"seventh_order", "seventh_order_term", "bad_axis"} & set(registry.names("problem"))


# ----------------------------------------------------------------------------- problem parameters
FUZZ_VALUES = {float: (0.0, -1.0, 1e300, 1e-300), int: (0, -1, 3, 10**18, 2**63)}


def _fuzz_cases(params_cls):
    """(key, value) pairs: every float and integer key (and list of them) at extreme values."""
    hints = typing.get_type_hints(params_cls)
    for f in dataclasses.fields(params_cls):
        hint = hints[f.name]
        for kind in (float, int):
            for v in FUZZ_VALUES[kind]:
                if hint in (kind, kind | None):
                    yield f.name, v
                elif hint == list[kind]:
                    yield f.name, [v, v]
                elif hint == list[list[kind]]:
                    yield f.name, [[v, v, v, v]]


FUZZ = [(name, key, value) for name, cls in sorted(all_problems().items()) for key, value in _fuzz_cases(cls.Params)]


def _tiny(name: str) -> dict:
    dim = len(all_problems()[name].axes)
    return {"problem": {"name": name}, "decomposition": {"subdomains": [2] * dim, "overlap": 1.5},
            "network": {"hidden": [4]},
            "training": {"steps": 2, "points": [5] * dim, "eval_every": 1, "log_every": 1, "threads": 1},
            "test": {"points": [3] * dim}, "checkpoint": {"every": 0}}


@pytest.mark.parametrize("name,key,value", FUZZ, ids=[f"{n}.{k}={v}" for n, k, v in FUZZ])
def test_problem_parameter_fuzz(tmp_path, capsys, name, key, value):
    """Every number of every problem at 0, -1 and extreme magnitudes trains (exit 0) or is a
    config error naming the key (exit 2): never a traceback or a failed run."""
    path = tmp_path / "c.toml"
    path.write_text(to_toml(load_config(data=_tiny(name))))
    out = tmp_path / "out"
    code = main(["train", str(path), "--out", str(out), "--set", f"problem.{key}={value!r}"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        assert (out / "run.h5").is_file()
    else:
        assert code == 2, err
        assert re.match(rf"fbpinn: error: config: problem\.{key}(\[\d+\])*: ", err), err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_fuzz_covers_every_problem():
    assert {n for n, _, _ in FUZZ} == set(all_problems()) and len(FUZZ) >= 200
