"""Integrity: fbpinn touches only the temporary files it wrote, and a checkpoint proves its
contents: damage of any kind is found on read, ``--resume`` goes on from the newest
checkpoint that passes (exactly as an uninterrupted run), and stops with exit 2 when none
does; a run that is no longer finite never writes a checkpoint."""

import collections
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from fbpinn import checkpoint as ckpt
from fbpinn.io import TEMPORARY, read_results, remove_temporaries, temporary_file, write_atomic
from test_checkpoint import same, train_cli
from test_parallel import LAPLACE, mpirun, needs_mpi, write_toml

# Checkpoints every 10 steps, 3 kept: a 30-step run leaves steps 30, 20 and 10.
BASE = {**LAPLACE, "checkpoint": {"every": 10, "keep": 3}}
W0 = "parameters/level0/W0"  # (15, 2, 8): 5 x 3 subdomains, layers [2, 8, 1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 30-step run with its three checkpoints, and the uninterrupted 40-step run to compare with."""
    root = tmp_path_factory.mktemp("integrity")
    cfg = write_toml(BASE, root / "c.toml")
    assert train_cli(cfg, root / "base", "--set", "training.steps=30") == 0
    assert train_cli(cfg, root / "whole", "--set", "training.steps=40") == 0
    assert [s for s, _ in ckpt.listing(root / "base" / "checkpoints")] == [30, 20, 10]
    return {"cfg": cfg, "base": root / "base", "whole": read_results(root / "whole" / "run.h5")}


def copy_of(runs, tmp_path):
    """A copy of the 30-step run's folder; returns (folder, {step: checkpoint path})."""
    out = tmp_path / "r"
    shutil.copytree(runs["base"], out)
    return out, {s: p for s, p in ckpt.listing(out / "checkpoints")}


# ----------------------------------------------------------------------------- damage
def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _noise(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _bytes_in_parameter(path):
    with h5py.File(path, "r") as f:
        offset = f[W0].id.get_offset()
    _overwrite(path, offset + 64, _noise(128))


def _object_header(path):
    with h5py.File(path, "r") as f:
        address = h5py.h5o.get_info(f["parameters/level0"].id).addr
    _overwrite(path, address, _noise(64))


def _btree(path):
    _overwrite(path, path.read_bytes().rfind(b"TREE") + 4, _noise(40))


def _wrong_shape(path):  # the same bytes as (15, 8, 2), its checksum attribute copied
    with h5py.File(path, "r+") as f:
        data, checksum = f[W0][()], f[W0].attrs["sha256"]
        del f[W0]
        f[W0] = data.reshape(15, 8, 2)
        f[W0].attrs["sha256"] = checksum


def _config_not_toml(path):
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = "[training\nsteps = 30"


def _resealed(change):
    """Damage that ``change(f)`` makes, with every checksum recomputed afterwards (as a faulty
    writer would leave it): only the layout, config and finiteness checks can find it."""
    def damage(path):
        with h5py.File(path, "r+") as f:
            change(f)
            ckpt._seal(f)
    return damage


def _replace(name, value):
    def change(f):
        del f[name]
        f[name] = value
    return change


def _truncated(path):
    os.truncate(path, path.stat().st_size // 2)


def _empty(path):
    path.write_bytes(b"")


def _folder(path):
    path.unlink()
    path.mkdir()


def _set_attribute(name, value):
    def damage(path):
        with h5py.File(path, "r+") as f:
            f.attrs[name] = value
    return damage


def _external_link(path):
    other = path.with_name("other.h5")
    with h5py.File(other, "w") as g:
        g["x"] = np.zeros(5056, dtype=np.uint8)
    with h5py.File(path, "r+") as f:
        del f["rng/torch"]
        f["rng/torch"] = h5py.ExternalLink(other.name, "x")


def _nan(f, name):
    f[name][...] = np.nan


def _lr_negative(f):
    f.attrs["config"] = re.sub(r"(?m)^lr = .*$", "lr = -1.0", f.attrs["config"])


# kind -> (damage, what the error says)
DAMAGE = {
    "bytes_in_parameter": (_bytes_in_parameter, f"the checksum of {W0} does not match its data"),
    "object_header": (_object_header, "unreadable checkpoint (KeyError"),
    "btree": (_btree, "unreadable checkpoint (RuntimeError"),
    "wrong_shape": (_wrong_shape, f"{W0} has shape (15, 8, 2) and dtype float64, expected (15, 2, 8)"),
    "config_not_toml": (_config_not_toml, "its stored config is not valid TOML"),
    "nan_parameters": (_resealed(lambda f: _nan(f, W0)), f"{W0} is not finite"),
    "truncated": (_truncated, "unreadable checkpoint (OSError"),
    "empty": (_empty, "unreadable checkpoint (OSError"),
    # the checks behind the checksums, each on its own
    "resealed_wrong_shape": (_resealed(_replace(W0, np.zeros((15, 2, 9)))), f"{W0} has shape (15, 2, 9)"),
    "resealed_float32": (_resealed(_replace(W0, np.zeros((15, 2, 8), np.float32))), "dtype float32, expected"),
    "resealed_invalid_config": (_resealed(_lr_negative), "its stored config is not a valid config (config: "
                                                         "training.lr: must be positive"),
    "resealed_missing_dataset": (_resealed(lambda f: f.__delitem__("rng/torch")), "dataset rng/torch is missing"),
    "resealed_extra_dataset": (_resealed(lambda f: f.__setitem__("parameters/level0/W9", np.zeros(3))),
                               "unexpected dataset parameters/level0/W9"),
    "resealed_history_length": (_resealed(_replace("history/loss", np.zeros(1))), "history/loss has shape (1,)"),
    "resealed_loss_terms_width": (_resealed(lambda f: f["history/loss_terms"].attrs.__setitem__("names", "a,b")),
                                  "history/loss_terms has shape (2, 1) and dtype float64, expected (2, 2)"),
    "resealed_rng_dtype": (_resealed(_replace("rng/sampler", np.zeros(5056, np.int64))), "rng/sampler has shape"),
    "resealed_nan_moment": (_resealed(lambda f: _nan(f, "adam/exp_avg_sq/level0/b0")),
                            "adam/exp_avg_sq/level0/b0 is not finite"),
    "resealed_step_beyond_config": (_resealed(lambda f: f.attrs.__setitem__("step", 10**6)),
                                    "step 1000000 is beyond its own config's training.steps = 30"),
    "state_attribute": (_set_attribute("wall_time", 1e9), "the checksum of the stored state"),
    "old_version": (_set_attribute("version", 1), "checkpoint version 1; this fbpinn reads version 2"),
    "incomplete": (_set_attribute("complete", False), "incomplete checkpoint"),
    "external_link": (_external_link, "rng/torch is a link"),
    "folder": (_folder, "not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file_and_what_failed(runs, tmp_path, kind):
    damage, message = DAMAGE[kind]
    _, found = copy_of(runs, tmp_path)
    ckpt.read(found[30])  # intact before
    damage(found[30])
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read(found[30])
    assert str(e.value).startswith(f"{found[30]}: ") and message in str(e.value)


RESUMED = ["bytes_in_parameter", "object_header", "btree", "wrong_shape", "config_not_toml", "nan_parameters",
           "truncated", "empty"]


@pytest.mark.parametrize("kind", RESUMED)
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_as_the_uninterrupted_run(runs, tmp_path, capsys, kind):
    damage, message = DAMAGE[kind]
    out, found = copy_of(runs, tmp_path)
    damage(found[30])
    capsys.readouterr()
    assert train_cli(runs["cfg"], out, "--resume", "--set", "training.steps=40") == 0
    log = capsys.readouterr().out
    assert f"WARNING skipping damaged checkpoint {found[30]}: " in log and message in log
    assert f"resuming from {found[20]}, the newest checkpoint that passes verification" in log
    assert f"resumed from {found[20]} at step 20 of 40" in log
    resumed = read_results(out / "run.h5")
    same(runs["whole"], resumed, rtol=0.0)  # bitwise: float64, one process, the same steps
    np.testing.assert_array_equal(runs["whole"]["training"]["loss_per_step"], resumed["training"]["loss_per_step"])


def test_resume_stops_when_every_checkpoint_is_damaged(runs, tmp_path, capsys):
    out, found = copy_of(runs, tmp_path)
    (out / "run.h5").unlink()  # as if killed before the end
    for step, kind in ((30, "bytes_in_parameter"), (20, "empty"), (10, "nan_parameters")):
        DAMAGE[kind][0](found[step])
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert train_cli(runs["cfg"], out, "--resume", "--set", "training.steps=40") == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert (f"fbpinn: error: --resume: none of the 3 checkpoint(s) in {out / 'checkpoints'} passes verification "
            "(step_000000030.h5, step_000000020.h5, step_000000010.h5; the reasons are logged above); nothing was "
            "trained. Move them away to start again from step 1") in captured.err
    for step in (30, 20, 10):
        assert f"skipping damaged checkpoint {found[step]}: " in captured.out
    assert not (out / "run.h5").exists()
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_config_that_does_not_fit_is_not_skipped_as_damage(runs, tmp_path, capsys):
    out, found = copy_of(runs, tmp_path)
    _bytes_in_parameter(found[30])
    capsys.readouterr()
    assert train_cli(runs["cfg"], out, "--resume", "--set", "training.steps=40", "--set", "training.lr=0.01") == 2
    err = capsys.readouterr().err
    assert f"{found[20]} was written with training.lr = 0.003, this config has 0.01" in err


def _equal_states(a: dict, b: dict) -> bool:
    if a.keys() != b.keys() or a["arrays"].keys() != b["arrays"].keys():
        return False
    for key in a:
        if key == "arrays":
            if not all(np.array_equal(a[key][k], b[key][k]) for k in a[key]):
                return False
        elif isinstance(a[key], np.ndarray):
            if not np.array_equal(a[key], b[key]):
                return False
        elif a[key] != b[key]:
            return False
    return True


def test_random_byte_span_corruptions_are_refused_or_harmless(runs, tmp_path):
    # Any single span of random bytes, anywhere in the file: the read either refuses the file
    # (CheckpointError and nothing else) or returns exactly the original state.
    source = ckpt.listing(runs["base"] / "checkpoints")[0][1]
    original, data = ckpt.read(source), source.read_bytes()
    rng = np.random.default_rng(12)
    outcomes = collections.Counter()
    damaged = tmp_path / "step_000000030.h5"
    for _ in range(200):
        n = int(rng.integers(1, 257))
        offset = int(rng.integers(0, len(data) - n + 1))
        corrupt = bytearray(data)
        corrupt[offset:offset + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        damaged.write_bytes(bytes(corrupt))
        try:
            state = ckpt.read(damaged)
        except ckpt.CheckpointError as e:
            assert str(e).startswith(f"{damaged}: ")
            outcomes["refused"] += 1
            continue
        assert _equal_states(original, state), f"{n} bytes at {offset} changed the state unnoticed"
        outcomes["unchanged"] += 1
    print(f"random corruptions: {dict(outcomes)}")
    assert outcomes["refused"] + outcomes["unchanged"] == 200
    assert outcomes["refused"] >= 100  # most of the file is checked data and metadata


# ----------------------------------------------------------------------------- non-finite runs
def _blow_up(monkeypatch, at: int, what: str, stop: bool = False):
    """Make a tensor non-finite right after the update of step ``at`` (the loss of that step is
    still finite); ``stop``: as if a stop signal had arrived at that step."""
    from fbpinn.trainer import Trainer

    original = Trainer.step

    def step(self, n, *args, **kwargs):
        result = original(self, n, *args, **kwargs)
        if n == at:
            target = self.model.nets[0].weights[0] if what == "parameter" else self.optimizer.exp_avg[1]
            target.data.view(-1)[3] = float("nan")
            self.stop_agreed = self.stop_agreed or stop
        return result

    monkeypatch.setattr(Trainer, "step", step)


@pytest.mark.parametrize("what,at,stop", [("parameter", 30, False), ("moment", 30, False),
                                          ("parameter", 25, True), ("moment", 25, True)])
def test_no_checkpoint_is_written_once_the_run_is_not_finite(runs, tmp_path, monkeypatch, capsys, what, at, stop):
    # A NaN appears after the good checkpoint of step 20, at a checkpoint step (30) or on a stop
    # signal (25): nothing is written, the run fails with status 1, and a resume from step 20
    # ends as the uninterrupted run.
    out = tmp_path / "r"
    _blow_up(monkeypatch, at, what, stop)
    assert train_cli(runs["cfg"], out, "--set", "training.steps=40") == 1
    err = capsys.readouterr().err
    assert (f"parameters or Adam's moments are no longer finite after step {at}; no checkpoint written; the last "
            f"good checkpoint is {ckpt.path_for(out / 'checkpoints', 20)}") in err
    assert [s for s, _ in ckpt.listing(out / "checkpoints")] == [20, 10]
    for _, path in ckpt.listing(out / "checkpoints"):
        ckpt.read(path)
    assert not (out / "run.h5").exists() and not list((out / "checkpoints").glob(".*"))
    monkeypatch.undo()
    assert train_cli(runs["cfg"], out, "--resume", "--set", "training.steps=40") == 0
    same(runs["whole"], read_results(out / "run.h5"), rtol=0.0)


def test_writing_a_non_finite_state_is_refused(runs, tmp_path):
    state = ckpt.read(ckpt.listing(runs["base"] / "checkpoints")[0][1])
    state["arrays"]["exp_avg/level0/b0"] = np.full_like(state["arrays"]["exp_avg/level0/b0"], np.inf)
    path = tmp_path / "step_000000030.h5"
    with pytest.raises(ckpt.CheckpointError, match="not written, exp_avg/level0/b0 is not finite"):
        ckpt.write(path, state)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- temporary files
USER_FILES = [".notes.tmp", ".x.tmp", "notes.tmp", ".run.h5.tmp", ".run.h5.abc.tmp", ".run.h5.fbpinn-x-abcdefgh.tmp",
              ".run.h5.fbpinn-12-abcdefg.tmp", "run.h5.fbpinn-12-abcdefgh.tmp", ".run.h5.fbpinn-12-abcdefgh.tmp~"]


def test_temporary_names_carry_their_origin(tmp_path):
    made = [temporary_file(tmp_path / "run.h5") for _ in range(20)]
    assert len(set(made)) == 20
    for p in made:
        m = TEMPORARY.match(p.name)
        assert m and m["name"] == "run.h5" and int(m["pid"]) == os.getpid(), p.name
    assert not [n for n in USER_FILES if TEMPORARY.match(n)]
    seen = []
    write_atomic(tmp_path / "x.h5", lambda f: seen.extend(p.name for p in tmp_path.glob(".x.h5.*")))
    assert len(seen) == 1 and TEMPORARY.match(seen[0])
    (tmp_path / ".notes.tmp").write_text("mine")
    assert remove_temporaries(tmp_path) == sorted(made)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "x.h5"]


def test_clean_up_removes_only_what_fbpinn_wrote(tmp_path, capsys):
    cfg = write_toml({**LAPLACE, "checkpoint": {"every": 5}}, tmp_path / "c.toml")
    out = tmp_path / "r"
    leftovers = [out / ".run.h5.fbpinn-4242-ab_cd123.tmp", out / "checkpoints" / ".step_000000010.h5.fbpinn-7-zz9_aaaa.tmp"]
    for folder in (out, out / "checkpoints"):
        folder.mkdir(parents=True)
        for name in USER_FILES:
            (folder / name).write_text("mine")
        # a folder and a link of fbpinn's form are not files fbpinn wrote
        (folder / ".run.h5.fbpinn-1-aaaaaaaa.tmp").mkdir()
        (folder / ".run.h5.fbpinn-2-bbbbbbbb.tmp").symlink_to(folder / ".notes.tmp")
    for p in leftovers:
        p.write_bytes(b"\x89HDF half written")
    capsys.readouterr()
    assert train_cli(cfg, out, "--set", "training.steps=10") == 0
    log = capsys.readouterr().out
    for p in leftovers:
        assert not p.exists() and f"removed {p}, left by an interrupted write" in log
    assert log.count("left by an interrupted write") == 2
    for folder in (out, out / "checkpoints"):
        for name in USER_FILES:
            assert (folder / name).read_text() == "mine", folder / name
        assert (folder / ".run.h5.fbpinn-1-aaaaaaaa.tmp").is_dir()
        assert (folder / ".run.h5.fbpinn-2-bbbbbbbb.tmp").is_symlink()
    assert read_results(out / "run.h5")["training"]["loss_per_step"].shape == (10,)
    assert [s for s, _ in ckpt.listing(out / "checkpoints")] == [10, 5]


@needs_mpi
def test_mpi_resume_verifies_on_every_rank_and_skips_the_damaged_newest(runs, tmp_path):
    out, found = copy_of(runs, tmp_path)
    _bytes_in_parameter(found[30])
    proc = mpirun(2, ["-m", "fbpinn", "train", str(runs["cfg"]), "--out", str(out), "--resume",
                      "--set", "training.steps=40"])
    assert proc.returncode == 0, proc.stderr
    assert f"skipping damaged checkpoint {found[30]}: " in proc.stdout
    assert f"resumed from {found[20]} at step 20 of 40" in proc.stdout
    same(runs["whole"], read_results(out / "run.h5"), rtol=1e-9)
    # Every checkpoint damaged: all ranks stop together with status 2, nothing trained.
    for _, path in ckpt.listing(out / "checkpoints"):
        _empty(path)
    (out / "run.h5").unlink()
    proc = mpirun(2, ["-m", "fbpinn", "train", str(runs["cfg"]), "--out", str(out), "--resume",
                      "--set", "training.steps=50"])
    assert proc.returncode == 2, proc.stderr
    assert "passes verification" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "run.h5").exists()


@needs_mpi
def test_mpi_a_checkpoint_that_fails_on_another_rank_stops_all_ranks(runs, tmp_path):
    # Rank 1 sees the file rank 0 verified as damaged (as a node with a stale or broken copy
    # would): every rank stops with status 2 before training, none waits for the others.
    out, _ = copy_of(runs, tmp_path)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "from fbpinn import checkpoint as ckpt\n"
        "from fbpinn.cli import main\n"
        "if MPI.COMM_WORLD.Get_rank() == 1:\n"
        "    def read(path):\n"
        "        raise ckpt.CheckpointError(f'{path}: the checksum of parameters/level0/W0 does not match its data')\n"
        "    ckpt.read = read\n"
        f"sys.exit(main(['train', {str(runs['cfg'])!r}, '--out', {str(out)!r}, '--resume',"
        " '--set', 'training.steps=40']))\n")
    before = (out / "run.h5").read_bytes()
    proc = mpirun(2, [str(script)], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert ("rank 1 could not use the checkpoint rank 0 verified: "
            f"{ckpt.path_for(out / 'checkpoints', 30)}: the checksum of parameters/level0/W0") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "run.h5").read_bytes() == before
