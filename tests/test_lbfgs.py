"""The final L-BFGS phase (training.lbfgs_steps): the optimiser on a quadratic against a reference
two-loop recursion, its gain over Adam alone, exact resumes inside the phase, parallel runs equal
to serial ones, config errors, and the phases that end each stage of a time-marching schedule."""

import shutil

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn.config import ConfigError
from fbpinn.io import read_results
from fbpinn.optim import LBFGS, FlatSpace
from test_checkpoint import checkpoints_resume_exactly, parallel_equals_serial, same, train_cli
from test_parallel import LAPLACE, WAVE_MARCH, mpirun, needs_mpi, write_toml

# 150 steps, the last 50 with L-BFGS; sobol points redrawn every 20 steps during the Adam phase.
LAPLACE_LBFGS = {**LAPLACE, "training": {**LAPLACE["training"], "steps": 150, "lbfgs_steps": 50}}


def quadratic(n=12, seed=0):
    """A convex quadratic 0.5 x'Ax - b'x (A symmetric positive definite, condition 10)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = q @ np.diag(np.geomspace(1.0, 10.0, n)) @ q.T
    return torch.tensor(A), torch.tensor(rng.standard_normal(n))


def reference_direction(g, S, Y):
    """-H g by the textbook two-loop recursion on flat float64 vectors (pairs oldest first)."""
    q = g.copy()
    rho = [1.0 / (s @ y) for s, y in zip(S, Y)]
    alpha = []
    for s, y, r in reversed(list(zip(S, Y, rho))):
        a = r * (s @ q)
        alpha.append(a)
        q -= a * y
    gamma = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 1.0
    q *= gamma
    for (s, y, r), a in zip(zip(S, Y, rho), reversed(alpha)):
        q += s * (a - r * (y @ q))
    return -q


def test_lbfgs_minimises_a_quadratic_and_follows_the_two_loop_recursion():
    A, b = quadratic()
    x_star = torch.linalg.solve(A, b)
    # The parameter split in two tensors, as a model's stacked tensors are.
    x = [torch.zeros(5, dtype=torch.float64, requires_grad=True), torch.zeros(7, dtype=torch.float64,
                                                                             requires_grad=True)]
    opt = LBFGS(x, lr=1.0, history=20)
    S, Y, prev = [], [], None
    for k in range(40):
        flat = torch.cat(x)
        loss = 0.5 * flat @ A @ flat - b @ flat
        opt.zero_grad()
        loss.backward()
        g = torch.cat([p.grad for p in x]).numpy().copy()
        xf = flat.detach().numpy().copy()
        if prev is not None:
            S.append(xf - prev[0])
            Y.append(g - prev[1])
        expected = reference_direction(g, S[-20:], Y[-20:])
        prev = (xf, g)
        opt.step()
        got = (torch.cat(x).detach().numpy() - xf) / opt.last_t  # the optimiser's direction is the reference one
        if k < 15:  # later steps are too small to be read back from x to 1e-9
            assert np.abs(got - expected).max() <= 1e-9 * np.abs(expected).max(), k
        if torch.linalg.norm(torch.cat(x).detach() - x_star) <= 1e-10 * torch.linalg.norm(x_star):
            break
    # Fixed unit steps along the quasi-Newton direction (measured: 21 steps on n = 12).
    assert k + 1 <= 25, k
    assert torch.abs(torch.cat(x).detach() - x_star).max() <= 1e-10 * torch.abs(x_star).max()
    # The first step is scaled by 1 / sum|g| (as torch's L-BFGS without a line search).
    fresh = LBFGS([torch.zeros(12, dtype=torch.float64, requires_grad=True)], lr=0.5)
    fresh.params[0].grad = -b.clone()
    fresh.step()
    np.testing.assert_allclose(fresh.params[0].detach().numpy(), 0.5 * b.numpy() / b.abs().sum().item(),
                               rtol=1e-14)
    assert fresh.last_t == pytest.approx(0.5 / b.abs().sum().item(), rel=1e-14)


def test_a_pair_without_curvature_is_not_kept():
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = LBFGS([p], lr=1.0, history=2)
    kept, prev = [], None
    # Gradients: unchanged (y = 0), rising against the step (s.y < 0), then falling along it (kept).
    for g in ([1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.5, 0.1], [0.2, 0.05]):
        g = torch.tensor(g, dtype=torch.float64)
        if prev is not None:
            s, y = p.detach() - prev[0], g - prev[1]
            kept.append(bool(s @ y > 1e-10 * (y @ y)))
        prev = (p.detach().clone(), g)
        p.grad = g
        opt.step()
    assert kept == [False, False, True, True, True]
    assert len(opt.s) == 2 and len(opt.rho) == 2  # the newest 2 of the 3 kept
    np.testing.assert_array_equal(opt.y[-1][0].numpy(), [-0.3, -0.05])
    assert opt.gamma == pytest.approx(1.0 / (opt.rho[-1] * float(opt.y[-1][0] @ opt.y[-1][0])), rel=1e-14)


def test_lbfgs_phase_lowers_the_loss_below_adam_alone():
    adam = fbpinn.train(fbpinn.load_config(data={**LAPLACE_LBFGS, "training": {**LAPLACE_LBFGS["training"],
                                                                                "lbfgs_steps": 0}}))
    quasi = fbpinn.train(fbpinn.load_config(data=LAPLACE_LBFGS))
    a, q = np.asarray(adam.loss_per_step), np.asarray(quasi.loss_per_step)
    np.testing.assert_array_equal(a[:100], q[:100])  # the Adam phase is untouched
    # Measured: 2946 (Adam) against 1375 (L-BFGS), a factor 2.14; rel_l2 0.74 against 0.25.
    assert q[-1] < a[-1] / 1.8
    assert quasi.history["rel_l2"][-1] < adam.history["rel_l2"][-1] / 2
    assert quasi.history["lr"][-1] == 1.0  # the step length of the phase's later steps


def test_resume_inside_the_lbfgs_phase_equals_the_uninterrupted_run(tmp_path):
    # As after a crash: the whole run's checkpoint at step 125 (25 L-BFGS steps, history 10 full)
    # resumed alone.  (A run stopped by training.steps = 125 would have had its own phase.)
    data = {**LAPLACE_LBFGS, "training": {**LAPLACE_LBFGS["training"], "sampler": "sobol", "resample_every": 20},
            "checkpoint": {"every": 25, "keep": 10}}
    cfg = write_toml(data, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "whole") == 0
    midway = ckpt.path_for(tmp_path / "whole" / "checkpoints", 125)
    state = ckpt.read(midway)
    assert state["lbfgs"]["pairs"] == 10 and state["lbfgs"]["steps"] == 25
    assert state["lbfgs"]["arrays"]["s9/level0/W0"].shape == state["arrays"]["parameters/level0/W0"].shape
    assert ckpt.read(ckpt.path_for(tmp_path / "whole" / "checkpoints", 100))["lbfgs"] is None  # not begun
    (tmp_path / "parts" / "checkpoints").mkdir(parents=True)
    shutil.copy(midway, tmp_path / "parts" / "checkpoints")
    assert train_cli(cfg, tmp_path / "parts", "--resume") == 0
    whole, parts = read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "parts" / "run.h5")
    same(whole, parts, rtol=1e-12)
    assert np.abs(whole["training"]["loss_per_step"] - parts["training"]["loss_per_step"]).max() == 0.0


def test_lbfgs_checkpoints_are_verified(tmp_path):
    cfg = write_toml({**LAPLACE_LBFGS, "training": {**LAPLACE_LBFGS["training"], "steps": 110, "lbfgs_steps": 5}},
                     tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "r") == 0
    path = ckpt.path_for(tmp_path / "r" / "checkpoints", 110)
    with h5py.File(path) as f:
        assert f["lbfgs/rho"].attrs["pairs"] == 4 and f["lbfgs/rho"].shape == (4,)
        assert "lbfgs/prev_g/level0/b0" in f and "lbfgs/s4/level0/W0" not in f
    broken = tmp_path / "broken.h5"
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        del f["lbfgs/y3/level0/W1"]
    with pytest.raises(ckpt.CheckpointError, match="dataset lbfgs/y3/level0/W1 is missing"):
        ckpt.read(broken)
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        f["lbfgs/rho"].attrs["pairs"] = 11  # above training.lbfgs_history
    with pytest.raises(ckpt.CheckpointError, match="attribute pairs of lbfgs/rho = 11 is not a valid value"):
        ckpt.read(broken)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_parallel_lbfgs_equals_serial(tmp_path, ranks):
    # Inner products over all ranks count every parameter once, each subdomain's part summed by its owner.
    # The gradients still differ from serial ones by rounding (halo contributions are added in another
    # order: 3e-16 of the parameters after 100 Adam steps), which a fixed-step L-BFGS amplifies on this
    # problem: measured 7e-11 after 30 L-BFGS steps (3e-9 after 50), so the phase here is 30 steps.
    data = {**LAPLACE, "training": {**LAPLACE["training"], "steps": 130, "lbfgs_steps": 30}}
    out = parallel_equals_serial(tmp_path, data, ranks=ranks, rtol=1e-9)
    assert "own + halo" in out and "L-BFGS from step 101 to 130" in out


@pytest.mark.parametrize("override, message", [
    ({"lbfgs_steps": 150}, r"training.lbfgs_steps: must lie in 0..training.steps - 1 = 149"),
    ({"lbfgs_steps": -1}, r"training.lbfgs_steps: must lie in 0..training.steps - 1"),
    ({"lbfgs_history": 0}, r"training.lbfgs_history: must lie in 1..1000"),
    ({"lbfgs_history": 1001}, r"training.lbfgs_history: must lie in 1..1000"),
    ({"lbfgs_lr": 0.0}, r"training.lbfgs_lr: must lie in \(0, 10\]"),
    ({"lbfgs_lr": 10.5}, r"training.lbfgs_lr: must lie in \(0, 10\]"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        fbpinn.load_config(data={**LAPLACE_LBFGS, "training": {**LAPLACE_LBFGS["training"], **override}})
    cfg = fbpinn.load_config(data={**LAPLACE, "training": {**LAPLACE["training"]}})
    assert (cfg.training.lbfgs_steps, cfg.training.lbfgs_history, cfg.training.lbfgs_lr) == (0, 10, 1.0)


# Time-marching: 3 slabs of 30 steps and 30 together, each stage ending with 10 L-BFGS steps.
MARCH_LBFGS = {**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "lbfgs_steps": 10, "sampler": "sobol",
                                          "resample_every": 7}}


def test_time_marching_ends_every_stage_with_lbfgs(caplog):
    caplog.set_level("INFO", logger="fbpinn")
    adam = fbpinn.train(fbpinn.load_config(data={**MARCH_LBFGS, "training": {**MARCH_LBFGS["training"],
                                                                              "lbfgs_steps": 0}}))
    quasi = fbpinn.train(fbpinn.load_config(data=MARCH_LBFGS))
    for first, last in ((21, 30), (51, 60), (81, 90), (111, 120)):
        assert f"L-BFGS from step {first} to {last}" in caplog.text
    a, q = np.asarray(adam.loss_per_step), np.asarray(quasi.loss_per_step)
    np.testing.assert_array_equal(a[:20], q[:20])  # the first slab's Adam steps are untouched
    assert not np.array_equal(a[20:30], q[20:30])
    # Measured (a network far too small to solve it): the final loss 579 (Adam) against 59.0; rel_l2
    # 1.18 against 0.90.
    assert q[-1] < a[-1] / 4
    assert quasi.history["rel_l2"][-1] < adam.history["rel_l2"][-1] * 0.85


def test_resume_inside_a_slabs_lbfgs_phase_equals_the_uninterrupted_run(tmp_path):
    # Inside slab 2's phase; its last step (the next slab starts Adam).
    checkpoints_resume_exactly(tmp_path, MARCH_LBFGS, (55, 60))
    folder = tmp_path / "whole" / "checkpoints"
    assert [ckpt.read(ckpt.path_for(folder, step))["lbfgs"]["steps"] for step in (55, 60)] == [5, 10]
    assert ckpt.read(ckpt.path_for(folder, 65))["lbfgs"] is None  # Adam again


@needs_mpi
def test_parallel_time_marching_lbfgs_equals_serial(tmp_path):
    assert "L-BFGS from step 81 to 90" in parallel_equals_serial(tmp_path, MARCH_LBFGS)


@pytest.mark.parametrize("override, message", [
    ({"lbfgs_steps": 30}, r"below the shortest stage's steps, 30 \(schedule.steps_per_slab = 30, 30 steps "
                          r"after the last slab\), got 30"),
    ({"steps": 100, "lbfgs_steps": 10}, r"below the shortest stage's steps, 10 \(schedule.steps_per_slab = 30, "
                                         r"10 steps after the last slab\), got 10"),
])
def test_time_marching_phases_must_fit_their_stages(override, message):
    start = 'training.lbfgs_steps: with schedule.kind = "time_marching" every stage ends with its own L-BFGS phase, '
    with pytest.raises(ConfigError, match=start + "so it must be " + message):
        fbpinn.load_config(data={**MARCH_LBFGS, "training": {**MARCH_LBFGS["training"], **override}})


@needs_mpi
def test_a_serial_checkpoint_in_the_lbfgs_phase_resumes_on_two_ranks(tmp_path):
    # The L-BFGS state is stored as full arrays: two ranks take their rows (owned and halo) of it.
    data = {**LAPLACE, "training": {**LAPLACE["training"], "steps": 130, "lbfgs_steps": 30},
            "checkpoint": {"every": 115, "keep": 5}}
    cfg = write_toml(data, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "whole") == 0
    (tmp_path / "parts" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.path_for(tmp_path / "whole" / "checkpoints", 115), tmp_path / "parts" / "checkpoints")
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "parts"), "--resume"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "resumed from" in proc.stdout and "L-BFGS from" not in proc.stdout  # the phase goes on
    same(read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "parts" / "run.h5"), rtol=1e-9)


# Redraws inside the phase (training.lbfgs_resample_every): the phase is steps 101-150, redraws at
# steps 101, 111, 121, 131 and 141.
REDRAW = {**LAPLACE_LBFGS, "training": {**LAPLACE_LBFGS["training"], "sampler": "sobol", "resample_every": 20,
                                        "lbfgs_resample_every": 10}}


def test_a_new_loss_keeps_the_pairs_and_forms_none_across_it():
    A, b = quadratic()
    x = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    opt = LBFGS([x], lr=1.0, history=20)

    def step(shift=0.0):
        loss = 0.5 * x @ A @ x - (b + shift) @ x
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    kept = [s[0].clone() for s in opt.s]
    opt.new_loss()
    step(shift=0.1)  # another loss: its gradient change against the last step is not a curvature pair
    assert len(opt.s) == len(kept) == 4 and all(torch.equal(a[0], b) for a, b in zip(opt.s, kept))
    step(shift=0.1)
    assert len(opt.s) == 5
    np.testing.assert_allclose(opt.y[-1][0].numpy(), (A @ opt.s[-1][0]).numpy(), rtol=1e-12)


def test_redraws_inside_the_phase(caplog):
    caplog.set_level("INFO", logger="fbpinn")
    trainer = fbpinn.trainer.Trainer(fbpinn.load_config(data=REDRAW))
    points, pairs = {}, {}
    for step in range(1, 151):
        trainer.step(step)
        points[step] = trainer.terms[0].x.clone()
        pairs[step] = None if trainer.lbfgs is None else len(trainer.lbfgs.s)
    assert "the collocation points are redrawn every 10 steps" in caplog.text
    for step in (111, 121, 131, 141):  # a redraw; no pair formed across it, the others kept
        assert not torch.equal(points[step], points[step - 1])
        assert pairs[step] == pairs[step - 1] == (9 if step == 111 else 10)  # 10 steps: 9 pairs
    assert torch.equal(points[120], points[111])
    fixed = fbpinn.train(fbpinn.load_config(data={**REDRAW, "training": {**REDRAW["training"],
                                                                         "lbfgs_resample_every": 0}}))
    redrawn = fbpinn.train(fbpinn.load_config(data=REDRAW))
    a, q = np.asarray(fixed.loss_per_step), np.asarray(redrawn.loss_per_step)
    np.testing.assert_array_equal(a[:100], q[:100])  # the same Adam phase
    assert q[100] != a[100]  # the phase's first step redraws (101 - 1 is a multiple of 10)
    # Measured: the phase takes the loss from 4030 (step 100) to 1545 with redraws (1332 without: on
    # 480 points of a smooth solution a fixed set is not over-fitted in 50 steps).
    assert q[-1] < q[99] / 2


def test_resume_around_a_redraw_in_the_phase_equals_the_uninterrupted_run(tmp_path):
    checkpoints_resume_exactly(tmp_path, REDRAW, (110, 115))  # just before the redraw of step 111; after it


@needs_mpi
def test_parallel_redraws_in_the_phase_equal_serial(tmp_path):
    parallel_equals_serial(tmp_path, REDRAW)


@pytest.mark.parametrize("override, message", [
    ({"lbfgs_resample_every": -1}, r"training.lbfgs_resample_every: .*got -1"),
    ({"lbfgs_resample_every": 5, "sampler": "grid", "resample_every": 0},
     r"training.lbfgs_resample_every: needs a random sampler \(uniform or sobol\)"),
])
def test_redraw_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        fbpinn.load_config(data={**REDRAW, "training": {**REDRAW["training"], **override}})


def test_flat_space_takes_its_rows_and_counts_each_element_where_it_is_owned():
    gen = torch.Generator().manual_seed(0)
    p1 = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    p2 = torch.randn(5, generator=gen, dtype=torch.float64)
    space = FlatSpace([p1, p2], rows=[torch.tensor([0, 2, 3]), None])
    v = space.gather([p1, p2])
    assert space.size == v.numel() == 3 * 6 + 5
    torch.testing.assert_close(v, torch.cat([p1[[0, 2, 3]].reshape(-1), p2]), rtol=0, atol=0)
    back = space.split(v)
    assert torch.equal(back[0][[0, 2, 3]], p1[[0, 2, 3]]) and not back[0][1].any() and torch.equal(back[1], p2)
    before = [p1.clone(), p2.clone()]
    space.add_(torch.arange(v.numel(), dtype=torch.float64), alpha=0.5)
    assert torch.equal(p1[1], before[0][1])  # a row outside the space is untouched
    assert torch.equal(p1[2], before[0][2] + 0.5 * torch.arange(6, 12, dtype=torch.float64).view(3, 2))
    assert torch.equal(p2, before[1] + 0.5 * torch.arange(18, 23, dtype=torch.float64))
    # Two processes, each owning part of the elements (weight 1 there, 0 elsewhere): their parts of
    # every inner product sum to the one-process products.
    A = torch.randn(3, v.numel(), generator=gen, dtype=torch.float64)
    B = torch.randn(2, v.numel(), generator=gen, dtype=torch.float64)
    mine = (torch.arange(v.numel()) % 3 == 0).double()
    parts = [FlatSpace([p1, p2], [torch.tensor([0, 2, 3]), None], w).dots(A, B) for w in (mine, 1 - mine)]
    np.testing.assert_allclose(parts[0] + parts[1], space.dots(A, B), rtol=1e-13)
    np.testing.assert_allclose(space.dots(A, B), (A @ B.T).numpy(), rtol=1e-13)


def test_time_marching_lbfgs_leaves_the_frozen_slabs_out():
    trainer = fbpinn.trainer.Trainer(fbpinn.load_config(data=MARCH_LBFGS))
    for step in range(1, 56):  # into slab 2's phase (steps 51 to 60)
        trainer.step(step)
    trainable = trainer.stage.trainable
    assert 0 < int(trainable.sum()) < len(trainable)
    assert trainer.lbfgs.space.size == sum(int(trainable.sum()) * p[0].numel() for p in trainer.params)
    before = [p.detach().clone() for p in trainer.params]
    for step in range(56, 61):
        trainer.step(step)
    for p, b in zip(trainer.params, before):
        assert torch.equal(p.detach()[~trainable], b[~trainable])  # the frozen slab and the later ones
        assert not torch.equal(p.detach()[trainable], b[trainable])


def test_a_checkpoint_without_the_gram_matrices_resumes_and_bad_slots_are_refused(tmp_path):
    cfg = write_toml({**LAPLACE_LBFGS, "checkpoint": {"every": 5, "keep": 1000}}, tmp_path / "c.toml")
    assert train_cli(cfg, tmp_path / "whole") == 0
    state = ckpt.read(ckpt.path_for(tmp_path / "whole" / "checkpoints", 125))
    quasi = state["lbfgs"]
    assert quasi["gram"].shape == (2, 10, 10) and len(set(quasi["slots"].tolist()) & set(range(11))) == 10
    np.testing.assert_allclose(1.0 / np.diag(quasi["gram"][0]), quasi["rho"], rtol=1e-14)  # s_k.y_k
    # As an older checkpoint (no Gram matrices, no slots): recomputed, the run ends as the whole one.
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    ckpt.write(ckpt.path_for(tmp_path / "old" / "checkpoints", 125), {**state, "lbfgs": {**quasi, "gram": None}})
    with h5py.File(ckpt.path_for(tmp_path / "old" / "checkpoints", 125)) as f:
        assert "lbfgs/gram" not in f and "lbfgs/slots" not in f and "lbfgs/s9/level0/W0" in f
    assert train_cli(cfg, tmp_path / "old", "--resume") == 0
    same(read_results(tmp_path / "whole" / "run.h5"), read_results(tmp_path / "old" / "run.h5"), rtol=1e-9)
    broken = tmp_path / "broken.h5"
    ckpt.write(broken, {**state, "lbfgs": {**quasi, "slots": np.zeros(10, dtype=np.int64)}})
    with pytest.raises(ckpt.CheckpointError, match=r"lbfgs/slots \[0, 0, .*\] are not distinct slots in 0..10"):
        ckpt.read(broken)
