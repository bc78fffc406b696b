"""Causal weighting of the residual along t (training.causal): each time bin's residual counts
with weight exp(-epsilon * the losses of the bins before it); the same on any number of ranks,
and on resume."""

import numpy as np
import pytest

import fbpinn
from conftest import config_error
from fbpinn.trainer import Trainer
from test_checkpoint import resumed_equals_whole, same, train_cli
from test_parallel import mpirun, needs_mpi, write_toml

WAVE = {"problem": {"name": "wave1d", "sigma": 1.0},
        "decomposition": {"subdomains": [4, 4], "overlap": 1.9}, "network": {"hidden": [8]},
        "training": {"steps": 40, "dtype": "float64", "points": [24, 16], "eval_every": 20, "causal": 0.05,
                     "causal_bins": 8, "sampler": "sobol", "resample_every": 15},
        "test": {"points": [41, 21]}}


def test_the_weights_follow_the_bins_losses():
    trainer = Trainer(fbpinn.load_config(data=WAVE))
    parts, binned = trainer._loss_impl()
    term = trainer.terms[trainer.causal_term]
    # The bins' mean squared residuals, from the residual at the points themselves.
    x = term.x
    (batch, members), = trainer.passes
    start = sum(trainer.terms[k].x.shape[0] for k in members[:members.index(trainer.causal_term)])
    u = trainer.model(batch)[:, start:start + x.shape[0]]
    d = fbpinn.problems.Derivs(u, batch.orders, trainer.problem.axes, trainer.problem.fields)
    r2 = (term.residual(x, d) ** 2).detach().numpy()
    t = x[:, 1].numpy()
    bins = np.minimum((t / 2.0 * 8).astype(int), 7)
    means = np.array([r2[bins == b].mean() if (bins == b).any() else 0.0 for b in range(8)])
    assert np.allclose(binned.detach().numpy(), means, rtol=1e-12)
    assert parts[trainer.causal_term].item() == pytest.approx(r2.mean(), rel=1e-12)
    loss = trainer._weighted(parts, binned).item()
    weights = np.exp(-0.05 * np.concatenate([[0.0], np.cumsum(means)[:-1]]))
    assert np.allclose(trainer.causal_weights, weights, rtol=1e-12) and weights[-1] < 0.5 * weights[0]
    assert loss == pytest.approx((weights * means).mean() + parts.sum().item() - parts[trainer.causal_term].item(),
                                 rel=1e-12)
    # Epsilon 0 weighs every bin alike: the mean over the bins.
    trainer.cfg.training.causal = 0.0
    assert trainer._weighted(parts, binned).item() == pytest.approx(means.mean(), rel=1e-12)


def test_causal_training_resumes_exactly(tmp_path):
    whole = resumed_equals_whole(tmp_path, WAVE, 20)
    plain = write_toml({**WAVE, "training": {**WAVE["training"], "causal": 0.0}}, tmp_path / "p.toml")
    assert train_cli(plain, tmp_path / "plain") == 0
    other = fbpinn.load_results(tmp_path / "plain" / "run.h5")
    assert np.abs(other["training"]["loss_per_step"][1:] - whole["training"]["loss_per_step"][1:]).max() > 1e-6


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_causal_training_on_ranks_equals_serial(tmp_path, ranks):
    cfg = write_toml(WAVE, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "serial") == 0
    proc = mpirun(ranks, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr
    same(fbpinn.load_results(tmp_path / "serial" / "run.h5"), fbpinn.load_results(tmp_path / "p" / "run.h5"),
         rtol=1e-9)


@pytest.mark.parametrize("override,message", [
    ("training.causal=-1", "training.causal: must lie in [0, 1e+12] (0: no causal weighting), got -1"),
    ("training.causal_bins=1", "training.causal_bins: must lie in"),
])
def test_causal_options_are_validated(override, message):
    assert message in config_error(WAVE, override)
    cos = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4]}, "training": {"causal": 1.0}}
    assert "training.causal: weights the residual along t: needs a problem whose" in config_error(cos)
