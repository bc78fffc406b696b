"""Seeded fuzzing of everything a user can hand to ``fbpinn``: config files, ``--set`` values,
results files and checkpoints.

Each generated input goes through the command line in this process.  Every case must end
with an exit status the docs allow (0, 1 for a training that failed, 2 for bad input), with
no traceback, with one ``fbpinn: error:`` line when it fails, and without partial files; a
damaged checkpoint must either be skipped for an older good one (and the resumed run then
equals the uninterrupted one exactly) or stop the run with status 2.  The seed is fixed, so
a failure is reproducible; ``FBPINN_FUZZ_SEED`` picks another set.
"""

import contextlib
import io
import os
import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fbpinn.cli import main
from fbpinn.io import read_results
from test_parallel import write_toml

SEED = int(os.environ.get("FBPINN_FUZZ_SEED", "20261130"))
BASE = {"problem": {"name": "cos1d", "omega": 4.0},
        "decomposition": {"subdomains": [4], "overlap": 2.5},
        "network": {"hidden": [6]},
        "training": {"steps": 6, "dtype": "float64", "points": [40], "eval_every": 3, "log_every": 3,
                     "threads": 1},
        "test": {"points": [50]},
        "checkpoint": {"every": 2, "keep": 3}}

INT_KEYS = ["training.steps", "training.decay_steps", "training.seed", "training.resample_every",
            "training.log_every", "training.eval_every", "training.threads", "checkpoint.every", "checkpoint.keep",
            "schedule.slabs", "schedule.steps_per_slab"]
LIST_KEYS = ["training.points", "test.points", "decomposition.subdomains", "network.hidden", "parallel.axes",
             "decomposition.levels"]
FLOAT_KEYS = ["training.lr", "training.lr_decay", "decomposition.overlap", "problem.omega", "problem.output_scale"]
STRING_KEYS = ["training.dtype", "training.sampler", "training.device", "decomposition.window", "network.activation",
               "schedule.kind", "output.dir", "problem.name"]
BOOL_KEYS = ["training.compile", "output.per_rank", "problem.physics"]
BAD_INTS = ["-1", "-2", "0", str(2**64), str(10**30), str(-(2**63) - 1), "1.5", "1e23", "nan", "inf", "true",
            "[]", '"3"', "{a = 1}"]
BAD_FLOATS = ["0", "-1", "-0.0", "1e300", "-1e300", "1e-300", "nan", "inf", "-inf", "true", '"x"', "[1.0]"]
BAD_LISTS = ["[]", "[0]", "[-5]", "[1e30]", f"[{10**30}]", "[[1]]", '["a"]', "[1, 2, 3, 4, 5]", "3.5", "{}",
             "[nan]", "[true]"]
BAD_STRINGS = ['""', '"x\\ny"', '"\\u0000"', '"\\u001b[31mred"', '"tab\\there"', '"zz"', "5", "[]", '"\\r"',
               '"' + "a" * 300 + '"']
BAD_BOOLS = ["1", "0", '"true"', "yes", "[]"]


def cli(*args) -> tuple[int, str, str]:
    """Exit status, standard output and standard error of ``fbpinn ARGS`` run in this process.

    An exception escaping :func:`fbpinn.cli.main` fails the test: that would be a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def check_outcome(code: int, err: str, out_dir: Path, label: str) -> None:
    """The rules every case obeys, whatever it was."""
    assert code in (0, 1, 2), (label, code, err)
    assert "Traceback" not in err, (label, err)
    leftovers = [p for p in out_dir.rglob("*.tmp")] if out_dir.exists() else []
    assert not leftovers, (label, leftovers)
    if code == 0:
        read_results(out_dir / "run.h5")
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (label, err)
        assert lines[0].startswith("fbpinn: error: " if code == 2 else "fbpinn: training failed: "), (label, err)
    if code == 2:
        assert not out_dir.exists(), (label, "created", sorted(out_dir.rglob("*")))


def set_cases(rng: random.Random, n: int) -> list[tuple[str, str]]:
    table = [(INT_KEYS, BAD_INTS), (LIST_KEYS, BAD_LISTS), (FLOAT_KEYS, BAD_FLOATS), (STRING_KEYS, BAD_STRINGS),
             (BOOL_KEYS, BAD_BOOLS)]
    cases = set()
    while len(cases) < n:
        keys, values = rng.choice(table)
        cases.add((rng.choice(keys), rng.choice(values)))
    return sorted(cases)


def test_set_values(tmp_path):
    cfg = write_toml(BASE, tmp_path / "c.toml")
    code, _, err = cli("train", cfg, "--out", tmp_path / "base")
    assert code == 0, err  # the unmutated config trains
    rng = random.Random(SEED)
    outcomes = {0: 0, 1: 0, 2: 0}
    for i, (key, value) in enumerate(set_cases(rng, 90)):
        out = tmp_path / f"s{i}"
        code, _, err = cli("train", cfg, "--out", out, "--set", f"{key}={value}")
        check_outcome(code, err, out, f"--set {key}={value}")
        outcomes[code] += 1
    print("--set values, outcomes by exit status:", outcomes)
    assert outcomes[2] >= 60, outcomes  # most of these values are nonsense and must be refused


def mutate_text(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    kind = rng.randrange(7)
    if kind == 0:  # drop a line
        del lines[rng.randrange(len(lines))]
    elif kind == 1:  # duplicate a line (a duplicate key or table is invalid TOML)
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == 2:  # an unknown key
        i = rng.randrange(len(lines))
        lines.insert(i + 1, f"bogus_{rng.randrange(100)} = 1")
    elif kind == 3:  # a value replaced by a random token
        i = rng.randrange(len(lines))
        if "=" in lines[i]:
            lines[i] = lines[i].split("=")[0] + "= " + rng.choice(["nan", "-7", "[[]]", '"\\u0007"', "1e999", "x"])
    elif kind == 4:  # truncated
        return text.encode()[:rng.randrange(len(text))]
    elif kind == 5:  # random bytes in the middle
        data = bytearray(text.encode())
        at = rng.randrange(len(data))
        data[at:at + rng.randint(1, 8)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return bytes(data)
    else:  # a table renamed
        tables = [i for i, line in enumerate(lines) if line.startswith("[")]
        lines[rng.choice(tables)] = rng.choice(["[traning]", "[problem", "[[training]]", "[]"])
    return ("\n".join(lines) + "\n").encode()


def test_config_files(tmp_path):
    text = write_toml(BASE, tmp_path / "base.toml").read_text()
    rng = random.Random(SEED + 1)
    outcomes = {0: 0, 1: 0, 2: 0}
    for i in range(50):
        path = tmp_path / f"m{i}.toml"
        path.write_bytes(mutate_text(text, rng))
        out = tmp_path / f"m{i}"
        code, _, err = cli("train", path, "--out", out)
        check_outcome(code, err, out, f"mutation {i}: {path.read_bytes()!r}")
        outcomes[code] += 1
    print("config file mutations, outcomes by exit status:", outcomes)
    assert outcomes[2] >= 25, outcomes


def corrupt(src: Path, dst: Path, rng: random.Random) -> str:
    """Copy ``src`` to ``dst`` with one span of random bytes; returns what was done."""
    data = bytearray(src.read_bytes())
    at = rng.randrange(len(data))
    n = rng.randint(1, 256)
    data[at:at + n] = bytes(rng.randrange(256) for _ in range(min(n, len(data) - at)))
    dst.write_bytes(bytes(data))
    return f"{n} bytes at {at}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished run: its folder, with three checkpoints (steps 2, 4, 6)."""
    base = tmp_path_factory.mktemp("fuzz")
    cfg = write_toml(BASE, base / "c.toml")
    code, _, err = cli("train", cfg, "--out", base / "run")
    assert code == 0, err
    return base / "run", cfg


def test_results_files(tmp_path, finished):
    run, _ = finished
    rng = random.Random(SEED + 2)
    counts = {0: 0, 2: 0}
    for i in range(45):
        bad = tmp_path / f"r{i}" / "run.h5"
        bad.parent.mkdir()
        what = corrupt(run / "run.h5", bad, rng)
        before = sorted(bad.parent.iterdir())
        code, _, err = cli("info", bad)
        assert code in (0, 2) and "Traceback" not in err, (what, err)
        counts[code] += 1
        if i % 9 == 0:  # plotting is slower: every ninth file
            code, _, err = cli("plot", bad)
            assert code in (0, 2) and "Traceback" not in err, (what, err)
            if code == 2:
                assert sorted(bad.parent.iterdir()) == before, (what, "plot left files behind")
    print("damaged results files through info, outcomes by exit status:", counts)
    assert counts[2] > 0


def test_checkpoints(tmp_path, finished):
    run, cfg = finished
    whole = read_results(run / "run.h5")
    newest = run / "checkpoints" / "step_000000006.h5"
    assert newest.is_file() and (run / "checkpoints" / "step_000000004.h5").is_file()
    rng = random.Random(SEED + 3)
    counts = {0: 0, 2: 0}
    for i in range(30):
        out = tmp_path / f"c{i}"
        shutil.copytree(run / "checkpoints", out / "checkpoints")
        # Damage the newest and the one before it, so that the run goes on from step 2
        # (or from a damaged file that still proves its contents, if the damage missed them).
        what = [corrupt(run / "checkpoints" / name, out / "checkpoints" / name, rng)
                for name in ("step_000000006.h5", "step_000000004.h5")[:1 + i % 2]]
        if i % 5 == 4:  # every checkpoint damaged: nothing to go on from
            for p in (out / "checkpoints").iterdir():
                p.write_bytes(p.read_bytes()[:rng.randrange(1, 2048)])
            what.append("all truncated")
        code, _, err = cli("train", cfg, "--out", out, "--resume")
        assert code in (0, 2) and "Traceback" not in err, (what, err)
        counts[code] += 1
        if code == 2:
            assert not (out / "run.h5").exists(), what
            assert "checkpoint" in err, (what, err)
            continue
        got = read_results(out / "run.h5")
        assert np.array_equal(got["training"]["loss_per_step"], whole["training"]["loss_per_step"]), what
        for name in ("W0", "b0", "W1", "b1"):
            assert np.array_equal(got["parameters"]["level0"][name], whole["parameters"]["level0"][name]), what
    print("damaged checkpoints through --resume, outcomes by exit status:", counts)
    assert counts[2] >= 6 and counts[0] >= 6, counts


def test_checkpoint_datasets_overwritten_are_caught(tmp_path, finished):
    """Damage inside the parameter data itself (which an HDF5 reader never notices) must be caught."""
    run, cfg = finished
    rng = random.Random(SEED + 4)
    for i in range(10):
        out = tmp_path / f"d{i}"
        shutil.copytree(run / "checkpoints", out / "checkpoints")
        path = out / "checkpoints" / "step_000000006.h5"
        with h5py.File(path, "r") as f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size > 4 else None)
            name = rng.choice(sorted(names))
            offset, size = f[name].id.get_offset(), f[name].id.get_storage_size()
        data = bytearray(path.read_bytes())
        at = offset + rng.randrange(size)
        data[at] ^= 1 << rng.randrange(8)  # one flipped bit
        path.write_bytes(bytes(data))
        code, out_text, err = cli("train", cfg, "--out", out, "--resume")
        assert code == 0, (name, err)
        assert "step_000000006.h5" in out_text and "skipping" in out_text.lower(), (name, out_text)
        got = read_results(out / "run.h5")
        assert np.array_equal(got["training"]["loss_per_step"],
                              read_results(run / "run.h5")["training"]["loss_per_step"]), name
