"""training.decay_per_stage: under time-marching the learning-rate decay restarts at each stage,
as the stage's fresh Adam does; resumes are exact and two ranks equal the serial run."""

import numpy as np
import pytest

import fbpinn
from fbpinn import schedulers
from fbpinn.trainer import Trainer
from conftest import config_error
from test_checkpoint import checkpoints_resume_exactly, parallel_equals_serial
from test_parallel import WAVE_MARCH, needs_mpi

# 3 slabs of 30 steps, then 30 steps with every subdomain; the rate falls tenfold over 30 steps.
DECAY = {**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "lr": 1e-2, "lr_decay": 0.1, "decay_steps": 30,
                                    "decay_per_stage": True, "sampler": "sobol", "resample_every": 7}}


def test_the_rate_restarts_at_each_stage():
    cfg = fbpinn.load_config(data=DECAY)
    rates = [schedulers.learning_rate(cfg, s) for s in range(1, 121)]
    for first in (1, 31, 61, 91):  # each slab's first step, and the first step after the slabs
        assert rates[first - 1] == 1e-2
        assert rates[first + 28] == pytest.approx(1e-2 * 0.1 ** (29 / 30), rel=1e-14)
    plain = fbpinn.load_config(data=DECAY, overrides=["training.decay_per_stage=false"])
    assert schedulers.learning_rate(plain, 91) == pytest.approx(1e-2 * 0.1 ** 3, rel=1e-14)
    assert [schedulers.stage_start(cfg, s) for s in (1, 30, 31, 90, 91, 120)] == [1, 1, 31, 61, 91, 91]


def test_adam_takes_the_stage_rate():
    cfg = fbpinn.load_config(data=DECAY)
    trainer = Trainer(cfg)
    seen = []
    for step in range(1, 66):
        trainer.step(step)
        seen.append(trainer.optimizer.lr)
    assert seen == [schedulers.learning_rate(cfg, s) for s in range(1, 66)]
    assert seen[30] == seen[60] == 1e-2 and seen[29] < 1.1e-3


def test_the_restart_changes_training():
    plain = fbpinn.train(fbpinn.load_config(data=DECAY, overrides=["training.decay_per_stage=false"]))
    restart = fbpinn.train(fbpinn.load_config(data=DECAY))
    a, b = np.asarray(plain.loss_per_step), np.asarray(restart.loss_per_step)
    np.testing.assert_array_equal(a[:30], b[:30])  # the first slab's rates are the same
    assert not np.array_equal(a[30:40], b[30:40])


def test_resume_equals_the_uninterrupted_run(tmp_path):
    checkpoints_resume_exactly(tmp_path, DECAY, (45, 95))  # inside slab 2; after the slabs


@needs_mpi
def test_two_ranks_equal_the_serial_run(tmp_path):
    parallel_equals_serial(tmp_path, DECAY)


def test_needs_time_marching():
    message = config_error({**DECAY, "schedule": {"kind": "all_active"}})
    assert message.startswith("config: training.decay_per_stage: restarts the decay at each time-marching stage") \
        and "'all_active'" in message
