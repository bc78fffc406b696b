"""Ranks that own nothing -- no collocation points, no subdomain that holds points, no test
points, no active subdomain in a time-marching stage -- take part in every collective and
the run equals the one-process run."""

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import fbpinn
from fbpinn import checkpoint as ckpt
from fbpinn.decomposition import Level
from fbpinn.domains import Box
from fbpinn.io import read_results
from fbpinn.model import FBPINN
from fbpinn.parallel import Partition
from fbpinn.trainer import Trainer
from test_checkpoint import same
from test_parallel import WAVE_MARCH, assert_same_run, mpirun, needs_mpi, write_toml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# The data-only oscillator of configs/harmonic_oscillator_data.toml, small and in float64.
DATA_ONLY = ["training.steps=100", "training.compile=false", "training.dtype=float64", "network.hidden=[8, 8]",
             "training.eval_every=50", "test.points=[50]"]
# 8 subdomains and 2 collocation points (at the ends) on 4 ranks: ranks 1 and 2 have no points;
# with overlap 4.5 subdomain 2 (rank 1) covers the point of rank 0 and rank 1 trains through
# its halo alone; 3 test points leave rank 1 without any.
COS1D_SPARSE = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [8], "overlap": 4.5},
                "network": {"hidden": [8]},
                "training": {"steps": 100, "dtype": "float64", "points": [2], "eval_every": 50},
                "test": {"points": [3]}}
# Time-marching on 3 ranks (space split) with 12 Sobol points: rank 0 has none in the first slab
# (t < 0.38), 4 later.
WAVE_SPARSE = {**WAVE_MARCH, "training": {**WAVE_MARCH["training"], "sampler": "sobol", "points": [12, 1], "seed": 2}}


def points_per_rank(x: torch.Tensor, level: Level, ranks: int) -> list[int]:
    """How many of the points ``x`` fall in each rank's region of a split ``level``."""
    part = Partition(level, ranks)
    return [int(part.region(r)[0].contains(x.double(), part.region(r)[1]).sum()) for r in range(ranks)]


def test_pairs_and_blocks_of_no_points():
    # The lookup and the model's blocks accept an empty point set (orders up to 2, 1-D and 2-D):
    # the pass is an exact zero that still reaches the parameters.
    for shape in ((5,), (4, 3)):
        box = Box([0.0] * len(shape), [1.0] * len(shape))
        level = Level(box, shape, 1.9)
        x = torch.zeros(0, len(shape), dtype=torch.float64)
        point, sub, win = level.pairs(x, [(), (0,), (0, 0)])
        assert point.shape == sub.shape == (0,) and win.shape == (3, 0)
        problem = fbpinn.registry.get("problem", "cos1d" if len(shape) == 1 else "laplace2d_multiscale")(
            None, torch.float64)
        model = FBPINN(problem, [level], [4], "tanh", torch.Generator().manual_seed(0), torch.float64,
                       held=[[1, 2]])
        batch = model.prepare(x, [(0, 0)])
        u = model(batch)
        assert u.shape == (len(batch.orders), 0, 1) and batch.pairs() >= 1
        loss = (u * u).sum()
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_partition_can_leave_ranks_without_points():
    # The layouts the runs below rely on.
    level = Level(Box([-2 * np.pi], [2 * np.pi]), (8,), 4.5)
    assert points_per_rank(level.box.grid([2]), level, 4) == [1, 0, 0, 1]
    assert points_per_rank(level.box.grid([3]), level, 4) == [1, 0, 1, 1]  # test points
    part = Partition(level, 4)
    assert not part.reaches_beyond_neighbours()
    _, sub, _ = level.pairs(torch.tensor([[-2 * np.pi]], dtype=torch.float64), [()])
    assert 2 in sub.tolist() and part.owned(1) == [2, 3]  # rank 1 owns a subdomain of rank 0's point
    data = fbpinn.load_config(CONFIGS / "harmonic_oscillator_data.toml", DATA_ONLY + ["decomposition.subdomains=[4]",
                                                                                      "decomposition.overlap=1.9"])
    assert not data.problem.physics and data.problem.observations == 10
    obs = torch.linspace(0, 0.28, 10, dtype=torch.float64)[:, None]
    assert points_per_rank(obs, Level(Box([0.0], [1.0]), (4,), 1.9), 4) == [6, 4, 0, 0]
    wave = Trainer(fbpinn.load_config(data=WAVE_SPARSE))  # serial: all points, slab 1
    x, first = wave.full_terms[0].x, wave.stage
    region, closed = Partition(wave.model.levels[0], 3, [0]).region(0)
    mine = x[region.contains(x, closed)]
    assert len(mine) == 4 and (mine[:, 1] > first.t_max).all()


@needs_mpi
@pytest.mark.parametrize("ranks,extra", [(2, []), (4, ["decomposition.subdomains=[4]", "decomposition.overlap=1.9",
                                                       "problem.obs_tmax=0.28", "test.points=[3]"])])
def test_data_only_run_equals_serial(tmp_path, ranks, extra):
    # No physics term: only the observations on t <= obs_tmax are points.  On 2 ranks the single
    # subdomain is replicated and rank 1 has no points; on 4 ranks the 4 subdomains are split and
    # only 2 of them hold points, so ranks 2 and 3 have none (rank 2 holds rank 1's in its halo).
    path = str(CONFIGS / "harmonic_oscillator_data.toml")
    overrides = DATA_ONLY + extra
    serial = fbpinn.train(fbpinn.load_config(path, overrides))
    args = ["-m", "fbpinn", "train", path, "--out", str(tmp_path / "p")]
    for o in overrides:
        args += ["--set", o]
    proc = mpirun(ranks, args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = assert_same_run(serial, tmp_path / "p" / "run.h5", rtol=1e-10)
    assert out["attrs"]["n_ranks"] == ranks
    assert ("own + halo" if ranks == 4 else "replicated") in proc.stdout
    assert f"rank(s) {'2, 3' if ranks == 4 else '1'} hold no points:" in proc.stdout


@needs_mpi
def test_sparse_points_and_empty_test_block_per_rank(tmp_path):
    # Ranks 1 and 2 have no collocation points, rank 1 no test points; each rank writes its
    # own part of the solution, rank 1's empty.
    cfg_path = write_toml(COS1D_SPARSE, tmp_path / "c.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path))
    out = tmp_path / "p"
    proc = mpirun(4, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(out), "--set", "output.per_rank=true"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "own + halo" in proc.stdout and "rank(s) 1, 2 hold no points:" in proc.stdout
    data = assert_same_run(serial, out / "run.h5", rtol=1e-10)
    assert data["solution"]["u"].shape == (3,) and not np.isnan(data["solution"]["u"]).any()
    assert sorted(p.name for p in out.glob("run_p*.h5")) == [f"run_p{r}.h5" for r in range(4)]
    with h5py.File(out / "run_p1.h5") as f:
        assert f["u"].shape == (0,)


@needs_mpi
def test_time_marching_with_an_empty_rank_and_resume(tmp_path):
    # Rank 0 has no points in slab 1.  The run equals the serial one, and a run resumed on 3 ranks from the
    # checkpoint of step 20 (in slab 1) equals the uninterrupted run.
    cfg = write_toml({**WAVE_SPARSE, "checkpoint": {"every": 20, "keep": 10}}, tmp_path / "w.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg))
    whole = tmp_path / "whole"
    proc = mpirun(3, ["-m", "fbpinn", "train", str(cfg), "--out", str(whole)])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "slab 3/3" in proc.stdout and "rank(s) 0 hold no points in this stage" in proc.stdout
    assert_same_run(serial, whole / "run.h5", rtol=1e-10)
    (tmp_path / "parts" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.path_for(whole / "checkpoints", 20), tmp_path / "parts" / "checkpoints")
    proc = mpirun(3, ["-m", "fbpinn", "train", str(cfg), "--out", str(tmp_path / "parts"), "--resume"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "at step 20 of 120" in proc.stdout and "rank(s) 0 hold no points in this stage" in proc.stdout
    same(read_results(whole / "run.h5"), read_results(tmp_path / "parts" / "run.h5"), rtol=1e-12)
