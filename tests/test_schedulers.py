"""Time-marching: windows over the included slabs, frozen and switched-off subdomains, config checks."""

import dataclasses

import pytest
import torch

import fbpinn
from fbpinn.config import ConfigError
from fbpinn.decomposition import Level
from fbpinn.domains import Box
from fbpinn.schedulers import TimeMarching
from fbpinn.trainer import Trainer


def wave_config(steps=30, slabs=3, steps_per_slab=10, **schedule):
    return fbpinn.load_config(data={
        "problem": {"name": "wave1d", "t_max": 1.0},
        "decomposition": {"subdomains": [3, 6], "overlap": 2.0},
        "network": {"hidden": [8]},
        "training": {"steps": steps, "dtype": "float64", "points": [12, 18], "log_every": 10**6,
                     "eval_every": 10**6},
        "schedule": {"kind": "time_marching", "slabs": slabs, "steps_per_slab": steps_per_slab, **schedule},
        "test": {"points": [9, 11]},
    })


def test_slab_windows_are_a_partition_of_unity_over_the_included_centres():
    level = Level(Box([-1.0, 0.0], [1.0, 1.0]), [3, 6], 2.0)
    march = TimeMarching(level, 1, 3, 10)
    assert march.bounds == [(0, 2), (2, 4), (4, 6)]
    for k in range(3):
        stage = march.stage(k)
        march.apply(stage)
        t = torch.linspace(0, stage.t_max * (1 - 1e-9), 50, dtype=torch.float64)  # open support
        x = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 7, dtype=torch.float64), t, indexing="ij"), -1)
        x = x.reshape(-1, 2)
        point, sub, win = level.pairs(x, [()])
        sums = torch.zeros(len(x), dtype=torch.float64).index_add(0, point, win[0])
        assert (sums - 1).abs().max().item() < 1e-12
        assert int(((sub % 6) >= stage.limit).sum()) == 0  # later slabs are off
        assert stage.trainable.sum().item() == 3 * 2  # two time-centres of three space-centres
        # In float32 the windows' derivatives stay finite right up to the slab's last point.
        edge = torch.tensor([[0.3, stage.t_max * (1 - 1e-7)]], dtype=torch.float32)
        assert torch.isfinite(level.pairs(edge, [(), (1,), (1, 1)])[2]).all()
    march.apply(march.stage(3))  # the final stage switches everything back on
    assert level.axes[1].limit == 6


def test_frozen_and_switched_off_subdomains_keep_their_parameters():
    trainer = Trainer(wave_config())
    net = trainer.model.nets[0]
    t_index = torch.arange(18) % 6
    start = [w.detach().clone() for w in net.weights]
    snapshots = {}
    for step in range(1, 31):
        trainer.step(step)
        if step % 10 == 0:
            snapshots[step // 10] = [w.detach().clone() for w in net.weights]
    # slab 1 (steps 1-10) trains t-index 0, 1; the later ones have not moved
    moved = lambda a, b: (a - b).abs().flatten(1).max(1).values > 0  # noqa: E731  (per subdomain)
    assert torch.equal(moved(snapshots[1][0], start[0]), t_index < 2)
    # slab 2 (steps 11-20) trains t-index 2, 3 only; slab 3 (21-30) trains 4, 5 only
    assert torch.equal(moved(snapshots[2][0], snapshots[1][0]), (t_index >= 2) & (t_index < 4))
    assert torch.equal(moved(snapshots[3][0], snapshots[2][0]), t_index >= 4)
    # the loss of each slab uses the points up to its support's end
    assert trainer.stage.t_max == pytest.approx(1.0)


def test_points_follow_the_slabs_and_the_last_stage_is_the_plain_model():
    cfg = wave_config(steps=35)
    trainer = Trainer(cfg)
    counts, spans = [], []
    for step in range(1, 36):
        trainer.step(step)
        counts.append(trainer.n_points())
        t = torch.cat([p.batch.x for p in trainer.passes])[:, 1]
        spans.append((t.min().item(), t.max().item()))
    t_max = [trainer.schedule.stage(k).t_max for k in range(3)]
    assert t_max == pytest.approx([0.2 * 1 + 0.18, 0.2 * 3 + 0.18, 1.0])  # spacing 0.2, 0.9 half-widths
    # Points below a slab's first centre minus a half-width see frozen subdomains only: left out.
    t_min = [trainer.schedule.stage(k).t_min for k in range(3)]
    assert t_min[0] is None and t_min[1:] == pytest.approx([0.4 - 0.2, 0.8 - 0.2])
    for k, (lo, hi) in enumerate((spans[0], spans[10], spans[20])):
        assert (t_min[k] or 0.0) <= lo and hi <= t_max[k]
        assert lo < (t_min[k] or 0.0) + 0.1 and hi > t_max[k] - 0.1  # the grid's spacing in t is 1/17
    assert counts[20] < counts[30] == 12 * 18
    # After the schedule, the model is the ordinary FBPINN over all subdomains.
    plain = Trainer(fbpinn.load_config(data={**_as_data(cfg), "schedule": {"kind": "all_active"}}))
    plain.model.load_state_dict(trainer.model.state_dict())
    x = trainer.x_test
    assert torch.allclose(trainer.model.value(x), plain.model.value(x), rtol=0, atol=1e-13)


def test_points_left_out_of_a_slab_do_not_change_its_gradient():
    # Below a slab's support only frozen subdomains contribute: leaving those points out changes
    # the loss by a constant, so the gradient is that of all points (per point: the loss is a mean).
    trainer = Trainer(wave_config(steps=35))
    for step in range(1, 13):  # into slab 2
        trainer.step(step)
    grads = {}
    for t_min in (trainer.stage.t_min, None):
        trainer.stage = dataclasses.replace(trainer.stage, t_min=t_min)
        trainer._prepare_terms()
        trainer.model.zero_grad()
        loss, _ = trainer._loss_impl()
        loss.backward()
        grads[t_min] = (trainer.terms[0].n_global, [p.grad.clone() for p in trainer.model.parameters()])
    (n_kept, kept), (n_all, every) = grads.values()
    assert n_kept < 0.8 * n_all
    for a, b in zip(kept, every):
        assert torch.allclose(a * n_kept, b * n_all, rtol=1e-9, atol=1e-12)
    assert max(g.abs().max().item() for g in kept) > 1e-3


def _as_data(cfg):
    import tomllib

    return tomllib.loads(fbpinn.config.to_toml(cfg))


@pytest.mark.parametrize("change, key", [
    ({"slabs": 1}, "schedule.slabs"),
    ({"slabs": 7}, "schedule.slabs"),
    ({"steps_per_slab": 0}, "schedule.steps_per_slab"),
    ({"steps_per_slab": 20}, "schedule.steps_per_slab"),  # 3 x 20 > 30 steps
    ({"kind": "sideways"}, "schedule.kind"),
])
def test_bad_schedules_name_the_key(change, key):
    with pytest.raises(ConfigError) as info:
        wave_config(**{"slabs": 3, "steps_per_slab": 10, **change})
    assert info.value.key == key


def test_time_marching_needs_a_time_axis_and_one_level():
    base = {"decomposition": {"subdomains": [4, 4], "overlap": 1.9},
            "schedule": {"kind": "time_marching", "slabs": 2, "steps_per_slab": 5},
            "training": {"steps": 20, "points": [10, 10]}}
    with pytest.raises(ConfigError, match="time axis"):
        fbpinn.load_config(data={"problem": {"name": "laplace2d_multiscale"}, **base})
    with pytest.raises(ConfigError, match="one-level"):
        fbpinn.load_config(data={"problem": {"name": "wave1d"}, **base,
                                 "decomposition": {"levels": [[1, 1], [2, 2]], "overlap": 1.9}})
    with pytest.raises(ConfigError, match="splits space only") as info:
        fbpinn.load_config(data={"problem": {"name": "wave1d"}, **base, "parallel": {"axes": [1]}})
    assert info.value.key == "parallel.axes"


def test_history_records_the_stage_of_each_evaluation(tmp_path):
    cfg = wave_config(steps=35)
    cfg.training.eval_every = 5
    run = Trainer(cfg).run()
    assert run.history["step"] == [1, 5, 10, 15, 20, 25, 30, 35]
    assert run.history["stage"] == [0, 0, 0, 1, 1, 2, 2, 3]
    fbpinn.save_results(tmp_path / "run.h5", run)
    assert fbpinn.load_results(tmp_path / "run.h5")["training"]["stage"].tolist() == run.history["stage"]
