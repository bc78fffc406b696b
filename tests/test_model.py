"""The model against independent constructions."""

import torch
from torch import nn

from conftest import make_config
from fbpinn.trainer import build


def test_one_subdomain_is_a_plain_pinn():
    # One subdomain: window 1, so u = s * MLP((x - c) / h) with the same weights.
    cfg = make_config({"name": "cos1d", "output_scale": 0.3}, [1], hidden=(20, 20), overlap=1.0)
    problem, model, _, _ = build(cfg)
    net = model.nets[0]
    mlp = nn.Sequential(nn.Linear(1, 20), nn.Tanh(), nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 1)).double()
    with torch.no_grad():
        for lin, w, b in zip([mlp[0], mlp[2], mlp[4]], net.weights, net.biases):
            lin.weight.copy_(w[0].T)
            lin.bias.copy_(b[0, 0, 0])
    x = torch.linspace(-6, 6, 123, dtype=torch.float64)[:, None]
    c, h = 0.0, 2 * torch.pi  # centred, half the domain length
    a, bfac = problem.constraint(x)
    expected = a + bfac * 0.3 * mlp((x - c) / h)[:, 0]
    got = model.value(x)
    assert got.shape == (123, 1)
    assert torch.allclose(got[:, 0], expected, rtol=0, atol=1e-14)


def test_initialisation_follows_nn_linear_bounds():
    cfg = make_config({"name": "cos1d"}, [50], hidden=(64,))
    _, model, _, _ = build(cfg)
    for w, n_in in zip(model.nets[0].weights, [1, 64]):
        bound = 1 / n_in**0.5
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.95 * bound  # uniform draws reach close to the bound
        assert abs(w.mean().item()) < 0.05 * bound
    assert model.nets[0].weights[0].shape == (50, 1, 64)


def test_parameters_independent_of_held_subset():
    # The same global subdomain gets the same initial weights whoever holds it.
    from fbpinn.model import FBPINN

    cfg = make_config({"name": "cos1d"}, [10])
    problem, full, _, _ = build(cfg)
    part = FBPINN(problem, full.levels, [16], "tanh", torch.Generator().manual_seed(0), torch.float64, held=[[3, 7]])
    assert torch.equal(part.nets[0].weights[0], full.nets[0].weights[0][[3, 7]])
