"""Residual-based adaptive resampling (training.adaptive): the chosen points follow the residual,
the rest of the draw is the sampler's, resumed runs equal uninterrupted ones, parallel runs equal
the serial run, checkpoints verify the choice, and config errors."""

import math
import shutil

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn.config import ConfigError
from fbpinn.domains import sample
from fbpinn.io import read_results
from fbpinn.trainer import Trainer
from test_checkpoint import resumed_equals_whole, same, train_cli
from test_parallel import BURGERS, WAVE_MARCH, mpirun, needs_mpi, write_toml

# Burgers' shock at x = 0 concentrates the residual; half the points chosen by it at every redraw.
ADAPTIVE = {**BURGERS, "training": {**BURGERS["training"], "sampler": "sobol", "resample_every": 20,
                                    "adaptive": 0.5, "adaptive_pool": 4, "lr": 3e-3}}


def test_the_chosen_points_follow_the_residual():
    trainer = Trainer(fbpinn.load_config(data=ADAPTIVE))
    for step in range(1, 61):
        trainer.step(step)
    n, k = 24 * 12, 144
    state = trainer.gen.get_state()
    x = trainer._adaptive_points(None, None)
    assert x.shape == (n, 2) and trainer.adaptive_chosen.shape == (k,)
    # The first n - k points are the sampler's draw, as a plain redraw from the same state makes it.
    trainer.gen.set_state(state)
    plain = sample(trainer.problem.domain, "sobol", [24, 12], trainer.gen, torch.float64)
    np.testing.assert_array_equal(x[:n - k].numpy(), plain[:n - k].numpy())
    pool = sample(trainer.problem.domain, "uniform", [4 * n], trainer.gen)
    np.testing.assert_array_equal(x[n - k:].numpy(), pool[trainer.adaptive_chosen].numpy())
    r_pool = trainer._squared_residuals(pool)
    picked = np.zeros(len(r_pool), dtype=bool)
    picked[trainer.adaptive_chosen] = True
    order = np.argsort(r_pool)
    top, bottom = picked[order[-len(r_pool) // 10:]].mean(), picked[order[:len(r_pool) // 2]].mean()
    # Drawn with weights r^2 / mean + 1 (without replacement, 144 of 1,152): measured a mean squared
    # residual 1.84 times the pool's; 34% of the candidates of the highest tenth of residuals chosen
    # against 7.3% of the lower half.
    assert r_pool[picked].mean() > 1.5 * r_pool.mean()
    assert top > 3 * bottom


def test_time_marching_chooses_within_the_slab():
    data = {**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "sampler": "sobol", "resample_every": 10,
                                       "adaptive": 0.25}}
    trainer = Trainer(fbpinn.load_config(data=data))
    for step in range(1, 41):  # into slab 2: 0.2 < t < 0.78
        trainer.step(step)
    state = trainer.gen.get_state()
    trainer._adaptive_points(None, None)
    trainer.gen.set_state(state)
    sample(trainer.problem.domain, "sobol", [24, 18], trainer.gen)
    pool = sample(trainer.problem.domain, "uniform", [4 * 24 * 18], trainer.gen)
    t = pool[trainer.adaptive_chosen, 1]
    st = trainer.stage
    assert st.index == 1 and bool(((t > st.t_min) & (t < st.t_max)).all())


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    whole = resumed_equals_whole(tmp_path, ADAPTIVE, split=50)  # the last redraw before it, step 41, chose
    state = ckpt.read(ckpt.path_for(tmp_path / "part" / "checkpoints", 50))
    assert state["adaptive"].shape == (144,) and state["adaptive"].dtype == np.int64
    plain = fbpinn.train(fbpinn.load_config(data={**ADAPTIVE, "training": {**ADAPTIVE["training"], "adaptive": 0.0}}))
    loss = whole["training"]["loss_per_step"]
    np.testing.assert_array_equal(loss[:20], plain.loss_per_step[:20])  # the first draw is the sampler's alone
    assert not np.array_equal(loss[20:], plain.loss_per_step[20:])


def test_checkpoints_verify_the_choice(tmp_path):
    cfg = write_toml({**ADAPTIVE, "training": {**ADAPTIVE["training"], "steps": 30}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r") == 0
    path = ckpt.path_for(tmp_path / "r" / "checkpoints", 30)
    with h5py.File(path) as f:
        chosen = f["rng/adaptive"][()]
    assert chosen.shape == (144,) and (np.diff(chosen) > 0).all() and chosen[-1] < 4 * 24 * 12
    for damage, message in (
            (lambda f: f.__delitem__("rng/adaptive") or f.create_dataset("rng/adaptive", data=chosen[:-1]),
             r"rng/adaptive has shape \(143,\)"),
            (lambda f: f["rng/adaptive"].__setitem__(0, -1), "the checksum of rng/adaptive does not match")):
        broken = tmp_path / "broken.h5"
        shutil.copy(path, broken)
        with h5py.File(broken, "a") as f:
            damage(f)
        with pytest.raises(ckpt.CheckpointError, match=message):
            ckpt.read(broken)


@needs_mpi
@pytest.mark.parametrize("data", [ADAPTIVE, {**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "sampler": "sobol",
                                                                           "resample_every": 10, "adaptive": 0.25}}],
                         ids=["burgers", "wave1d-time-marching"])
def test_parallel_runs_equal_the_serial_run(tmp_path, data):
    cfg = write_toml(data, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "serial") == 0
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    same(read_results(tmp_path / "serial" / "run.h5"), read_results(tmp_path / "p" / "run.h5"), rtol=1e-10)


@pytest.mark.parametrize("override, message", [
    ({"adaptive": 1.0}, r"training.adaptive: must lie in \[0, 1\)"),
    ({"adaptive": -0.1}, r"training.adaptive: must lie in \[0, 1\)"),
    ({"adaptive_pool": 0}, r"training.adaptive_pool: must lie in 1..100"),
    ({"resample_every": 0}, r"training.adaptive: chooses points at each redraw: needs training.resample_every >= 1"),
    ({"adaptive": 0.001}, r"training.adaptive: 0.001 of the 288 physics points is less than one point"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        fbpinn.load_config(data={**ADAPTIVE, "training": {**ADAPTIVE["training"], **override}})
    assert math.prod(fbpinn.load_config(data=ADAPTIVE).training.points) == 288
