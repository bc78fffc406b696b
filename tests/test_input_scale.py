"""network.input_scale: every subdomain network sees s (x - centre) / half-width, for the sharp
features of waves; the fast derivatives stay exact and results files rebuild the model."""

import numpy as np
import pytest
import torch

import fbpinn
from fbpinn.config import ConfigError
from fbpinn.trainer import build
from test_checkpoint import train_cli
from test_parallel import write_toml

WAVE = {"problem": {"name": "wave1d", "sigma": 1.0},
        "decomposition": {"subdomains": [4, 3], "overlap": 1.9}, "network": {"hidden": [8, 8], "input_scale": 2.5},
        "training": {"steps": 10, "dtype": "float64", "points": [16, 12]}, "test": {"points": [21, 11]}}


def model(data):
    return build(fbpinn.load_config(data=data))[1]


def test_scaling_the_inputs_is_scaling_the_first_layer():
    scaled, plain = model(WAVE), model({**WAVE, "network": {"hidden": [8, 8], "input_scale": 1.0}})
    with torch.no_grad():  # the same initial weights; the plain model's first layer takes the factor
        plain.nets[0].weights[0].mul_(2.5)
    x = torch.rand(50, 2, dtype=torch.float64) * torch.tensor([2.0, 2.0]) - torch.tensor([1.0, 0.0])
    orders = [(), (0,), (1,), (0, 0), (1, 1)]
    a, b = scaled(scaled.prepare(x, orders)), plain(plain.prepare(x, orders))
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # The forward-mode derivatives against autograd through the scaled model.
    ref = scaled.autograd(x, orders)
    for k, o in enumerate(scaled.prepare(x, orders).orders):
        assert torch.allclose(a[k, :, 0], ref[o].detach(), rtol=1e-10, atol=1e-10), o


def test_results_rebuild_a_scaled_model(tmp_path):
    cfg = write_toml(WAVE, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r") == 0
    data = fbpinn.load_results(tmp_path / "r" / "run.h5")
    sol = fbpinn.Solution.load(tmp_path / "r" / "run.h5")
    x = np.stack(np.meshgrid(data["solution"]["axis_x"], data["solution"]["axis_t"], indexing="ij"), -1)
    assert np.abs(sol(x.reshape(-1, 2))[:, 0] - data["solution"]["u"].ravel()).max() < 1e-12


@pytest.mark.parametrize("value", [0.0, -1.0, 1e4])
def test_input_scale_is_validated(value):
    with pytest.raises(ConfigError, match=f"network.input_scale: must lie in \\[0.001, 1000\\], got {value}"):
        fbpinn.load_config(data=WAVE, overrides=[f"network.input_scale={value}"])
