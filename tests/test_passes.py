"""The model passes of a step: terms needing more derivatives than the physics term get a pass
of their own, and the loss and its gradient do not depend on how the terms are grouped."""

import pytest
import torch

import fbpinn
from fbpinn.derivatives import closure, parse
from fbpinn.io import read_results
from fbpinn.trainer import Trainer
from test_checkpoint import parallel_equals_serial
from test_parallel import needs_mpi, write_toml

WAVE = {
    "problem": {"name": "wave2d", "velocity": "mixture", "t_max": 0.6, "absorbing_order": 2,
                "absorbing_weight": 0.5, "boundary_points": [6, 5]},
    "decomposition": {"subdomains": [3, 3, 2], "overlap": 1.5}, "network": {"hidden": [8]},
    "training": {"steps": 4, "dtype": "float64", "points": [8, 8, 5], "compile": False},
    "test": {"points": [5, 5, 3]}}


def loss_and_grad(trainer):
    for p in trainer.params:
        p.grad = None
    parts, _ = trainer._loss_impl()
    parts.sum().backward()
    return parts.detach().clone(), torch.cat([p.grad.reshape(-1) for p in trainer.params])


def names(trainer, members):
    return [trainer.terms[k].name for k in members]


@pytest.mark.parametrize("order,passes", [(2, [["physics"], ["absorbing"]]), (1, [["physics", "absorbing"]])])
def test_a_term_needing_more_derivatives_gets_its_own_pass(order, passes):
    trainer = Trainer(fbpinn.load_config(data=WAVE, overrides=[f"problem.absorbing_order={order}"]))
    assert [names(trainer, m) for _, m in trainer.passes] == passes
    physics = trainer.passes[0].batch
    axes = trainer.problem.axes
    # the physics points carry the equation's derivatives only: no u_xt, u_yt at order 2
    assert physics.orders == closure(parse(n, axes) for n in trainer.problem.needs)
    assert trainer.n_points() == sum(t.x.shape[0] for t in trainer.terms) == 8 * 8 * 5 + 4 * 6 * 5
    assert trainer.pairs() == sum(p.batch.pairs() for p in trainer.passes)


@pytest.mark.parametrize("schedule", ["all_active", "time_marching"])
def test_split_passes_equal_one_pass(schedule):
    cfg = fbpinn.load_config(data=WAVE, overrides=[f'schedule.kind="{schedule}"', "schedule.slabs=2",
                                                   "schedule.steps_per_slab=2"])
    trainer = Trainer(cfg)
    assert len(trainer.passes) == 2
    split = loss_and_grad(trainer)
    trainer._pass_groups = lambda: [list(range(len(trainer.terms)))]
    trainer._prepare_terms()
    assert len(trainer.passes) == 1
    whole = loss_and_grad(trainer)
    assert split[0].shape == (2,) and split[0][1] > 0
    assert torch.allclose(split[0], whole[0], rtol=1e-12, atol=0)
    assert torch.allclose(split[1], whole[1], rtol=1e-10, atol=1e-14)


def test_steptime_script_reports_the_passes(tmp_path, capsys):
    import importlib.util
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "steptime.py"
    spec = importlib.util.spec_from_file_location("steptime", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = str(write_toml(WAVE, tmp_path / "c.toml"))
    args = [cfg, "--threads", "1", "--warmup", "1", "--blocks", "2", "--block", "1", "--set", "training.steps=5"]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    found = re.search(r"([0-9.]+) ms/step \(blocks ([0-9.]+), ([0-9.]+)\), 2 pass\(es\), ([0-9,]+) pairs", out)
    assert found and float(found[1]) > 0
    trainer = Trainer(fbpinn.load_config(data=WAVE))
    assert int(found[4].replace(",", "")) == trainer.pairs()
    assert script.main(args[:-1] + ["training.steps=2"]) == 2  # fewer steps than the timing needs
    assert "steps 1 to 3 go past training.steps = 2" in capsys.readouterr().err
    assert script.main(args + ["--start", "3"]) == 0  # steps 3 to 5
    assert re.search(r"from step 3: [0-9.]+ ms/step", capsys.readouterr().out)
    assert script.main(args + ["--start", "4"]) == 2
    assert "steps 4 to 6 go past training.steps = 5" in capsys.readouterr().err
    assert script.main([str(tmp_path / "missing.toml")]) == 2


@needs_mpi
def test_two_ranks_with_their_own_passes_equal_the_serial_run(tmp_path):
    parallel_equals_serial(tmp_path, {**WAVE, "training": {**WAVE["training"], "steps": 30, "eval_every": 10}},
                           rtol=1e-9)
    terms = read_results(tmp_path / "serial" / "run.h5")["training"]["loss_terms"]
    assert terms.shape[1] == 2 and terms[-1, 1] > 0  # the absorbing term is there and trained
