"""Short trainings that must reach a stated accuracy, reproducibility, samplers, failures."""

import logging
import math

import numpy as np
import pytest
import torch

import fbpinn
from conftest import blow_up_at, make_config
from fbpinn.domains import Box, sample


def test_oscillator_reaches_stated_error():
    cfg = make_config({"name": "harmonic_oscillator"}, [8], hidden=(16,), steps=1000, points=[100], lr=5e-3,
                      dtype="float32", eval_every=250)
    run = fbpinn.train(cfg)
    assert run.history["rel_l2"][0] > 0.5  # it did not start solved
    assert run.history["rel_l2"][-1] < 1e-2


def test_cos1d_reaches_stated_error():
    cfg = make_config({"name": "cos1d", "output_scale": 1.0}, [30], hidden=(16,), steps=2000, points=[1500],
                      lr=1e-2, lr_decay=0.5, decay_steps=500, dtype="float32", eval_every=500)
    run = fbpinn.train(cfg)
    assert run.history["rel_l2"][-1] < 2e-2


def test_inverse_learns_mu_within_two_percent():
    cfg = make_config({"name": "harmonic_oscillator_inverse"}, [8], hidden=(16,), steps=3000, points=[100],
                      lr=5e-3, dtype="float32", eval_every=1000)
    run = fbpinn.train(cfg)
    assert run.learned["mu"] == pytest.approx(4.0, rel=0.02)
    assert cfg.problem.mu_init == 0.0  # it started far from the answer


def test_same_config_same_history():
    cfg = make_config({"name": "harmonic_oscillator_inverse"}, [5], steps=40, points=[50], dtype="float32",
                      sampler="sobol", resample_every=10)
    a, b = fbpinn.train(cfg), fbpinn.train(cfg)
    assert a.loss_per_step == b.loss_per_step
    assert np.array_equal(a.u_test, b.u_test)
    c = fbpinn.train(make_config({"name": "harmonic_oscillator_inverse"}, [5], steps=40, points=[50],
                                 dtype="float32", sampler="sobol", resample_every=10, seed=1))
    assert c.loss_per_step != a.loss_per_step


def test_dtypes():
    for dtype in ("float32", "float64"):
        run = fbpinn.train(make_config({"name": "cos1d"}, [4], steps=3, points=[30], dtype=dtype))
        assert all(p.dtype == getattr(torch, dtype) for p in run.model.parameters())


@pytest.mark.parametrize("kind", ["grid", "uniform", "sobol"])
def test_samplers_cover_box_and_regions(kind):
    box = Box([0.0, -1.0], [2.0, 1.0])
    g = torch.Generator().manual_seed(0)
    x = sample(box, kind, [20, 10], g)
    assert x.shape == (200, 2) and box.contains(x).all()
    assert x[:, 0].max() - x[:, 0].min() > 1.6  # spread over the box
    # Regions split the same point set without loss or overlap (random samplers reseeded).
    left, right = Box([0.0, -1.0], [1.0, 1.0]), Box([1.0, -1.0], [2.0, 1.0])
    parts = [sample(box, kind, [20, 10], torch.Generator().manual_seed(0), region=r, closed_hi=c)
             for r, c in ((left, [False, True]), (right, [True, True]))]
    whole = sample(box, kind, [20, 10], torch.Generator().manual_seed(0))
    assert sum(len(p) for p in parts) == len(whole)
    merged = torch.cat(parts)
    assert torch.equal(merged[torch.argsort(merged[:, 0] * 10 + merged[:, 1])],
                       whole[torch.argsort(whole[:, 0] * 10 + whole[:, 1])])


def test_progress_lines(caplog):
    cfg = make_config({"name": "cos1d"}, [4], steps=20, points=[30], log_every=10)
    with caplog.at_level(logging.INFO, logger="fbpinn.trainer"):
        fbpinn.train(cfg)
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("step 10/20") and "loss" in lines[0] and "rel_l2" not in lines[0]
    assert lines[1].startswith("step 20/20") and "rel_l2" in lines[1] and "ETA 0:00:00" in lines[1]


def test_non_finite_loss_stops_with_message(monkeypatch):
    from fbpinn.problems.sinusoids import Cos1d

    monkeypatch.setattr(Cos1d, "residual", lambda self, x, d: d["u_x"] * math.inf)
    with pytest.raises(fbpinn.TrainingError, match="loss became (inf|nan) at step 1"):
        fbpinn.train(make_config({"name": "cos1d"}, [4], steps=5, points=[30]))


def test_an_ordinary_step_reads_its_loss_at_the_next_step(monkeypatch):
    # On one process an ordinary step (wait False) keeps a copy of its loss terms on the device and
    # reads it after the next step's work: the sums arrive one step late, each equal to the sum of
    # a step that waited for its own, and a non-finite loss is named with the step that had it.
    from fbpinn.trainer import Trainer

    cfg = make_config({"name": "cos1d"}, [4], steps=8, points=[30], dtype="float64")
    waiting = Trainer(cfg)
    expected = [waiting.step(s)[1].tolist() for s in range(1, 9)]
    trainer = Trainer(cfg)
    assert trainer.step(1, wait=False)[:2] == (None, None) and trainer.arrived() == []
    got = {}
    for s in range(2, 9):
        trainer.step(s, wait=s == 8)
        arrived = trainer.arrived()
        assert [n for n, _ in arrived] == ([s - 1, s] if s == 8 else [s - 1])
        got.update((n, terms.tolist()) for n, terms in arrived)
    assert [got[s] for s in range(1, 9)] == expected

    blow_up_at(monkeypatch, 3)  # NaN parameters before step 3, an ordinary step
    started = []
    original = Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, n, *a, **k: started.append(n) or original(self, n, *a, **k))
    with pytest.raises(fbpinn.TrainingError, match="loss became nan at step 3"):
        fbpinn.train(make_config({"name": "cos1d"}, [4], steps=8, points=[30]))
    assert started == [1, 2, 3, 4]  # found when it is read, after step 4's work


@pytest.mark.slow
def test_physics_beats_data_alone():
    # The seed comparison: ten observations on [0, 0.4]; a network fitted to them alone
    # fails beyond them, the physics-informed one does not.
    common = dict(hidden=(32, 32, 32), steps=8000, points=[200], dtype="float32", overlap=1.0, eval_every=1000,
                  compile=True)
    prob = {"name": "harmonic_oscillator", "observations": 10, "constraint": "hard"}
    data_only = fbpinn.train(make_config({**prob, "physics": False}, [1], **common))
    physics = fbpinn.train(make_config(prob, [1], **common))
    assert data_only.history["rel_l2"][-1] > 0.5
    assert physics.history["rel_l2"][-1] < 2e-2
