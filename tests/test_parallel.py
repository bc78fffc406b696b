"""MPI training: partitions, halos, and runs under mpiexec equal to the one-process run."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fbpinn
from fbpinn.decomposition import Level
from fbpinn.domains import Box
from fbpinn.io import read_results
from fbpinn.parallel import Context, Partition, rank_grid

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpich wheel)")

COS1D = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [12], "overlap": 2.5},
         "network": {"hidden": [8, 8]},
         "training": {"steps": 100, "dtype": "float64", "points": [400], "eval_every": 50}}
LAPLACE = {"problem": {"name": "laplace2d_multiscale", "scales": 2},
           "decomposition": {"subdomains": [5, 3], "overlap": 1.9}, "network": {"hidden": [8]},
           "training": {"steps": 100, "dtype": "float64", "points": [24, 20], "eval_every": 50, "lr": 3e-3},
           "test": {"points": [30, 30]}}
INVERSE = {"problem": {"name": "harmonic_oscillator_inverse", "observations": 9},
           "decomposition": {"subdomains": [6]}, "network": {"hidden": [8]},
           "training": {"steps": 100, "dtype": "float64", "points": [80], "eval_every": 50}}
SOFT_PINN = {"problem": {"name": "harmonic_oscillator", "constraint": "soft"},
             "decomposition": {"subdomains": [1], "overlap": 1.0}, "network": {"hidden": [8, 8]},
             "training": {"steps": 100, "dtype": "float64", "points": [60], "eval_every": 50}}

WAVE_MARCH = {"problem": {"name": "wave1d", "t_max": 1.0},
              "decomposition": {"subdomains": [6, 6], "overlap": 2.0}, "network": {"hidden": [8]},
              "training": {"steps": 120, "dtype": "float64", "points": [24, 18], "eval_every": 50},
              "schedule": {"kind": "time_marching", "slabs": 3, "steps_per_slab": 30},
              "test": {"points": [21, 11]}}
BURGERS = {"problem": {"name": "burgers"}, "decomposition": {"subdomains": [6, 3], "overlap": 2.0},
           "network": {"hidden": [8]},
           "training": {"steps": 100, "dtype": "float64", "points": [24, 12], "eval_every": 50},
           "test": {"points": [33, 11]}}


def write_toml(data: dict, path: Path) -> Path:
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            value = str(v).lower() if isinstance(v, bool) else repr(v).replace("'", '"')
            lines.append(f"{k} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def mpirun(n: int, args, timeout=120, **kw):
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def assert_same_run(serial, parallel_path, rtol=1e-9):
    data = read_results(parallel_path)
    ref = np.asarray(serial.loss_per_step)
    got = data["training"]["loss_per_step"]
    assert len(got) == len(ref) >= 100
    assert np.abs(got - ref).max() <= rtol * np.abs(ref).max()
    for name, arr in serial.model.parameter_arrays().items():
        level, key = name.split("/")
        other = data["parameters"][level][key]
        assert other.shape == arr.shape
        assert np.abs(other - arr).max() <= rtol * max(np.abs(arr).max(), 1.0), name
    assert np.abs(data["solution"]["u"].ravel() - serial.u_test).max() <= rtol * 10
    for k, v in serial.learned.items():
        assert float(data["learned"][k]) == pytest.approx(v, rel=rtol)
    return data


# ----------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize("shape,ranks,dims", [((5, 3), 2, [2, 1]), ((5, 3), 3, [3, 1]), ((5, 3), 4, [2, 2]),
                                              ((12,), 4, [4]), ((4, 4, 4), 8, [2, 2, 2])])
def test_rank_grid(shape, ranks, dims):
    assert rank_grid(shape, ranks) == dims


def test_rank_grid_too_many_ranks():
    with pytest.raises(ValueError, match="cannot split 2 subdomains along axis 0 over 3 ranks"):
        rank_grid((2,), 3)


@pytest.mark.parametrize("shape,overlap,ranks", [((12,), 2.5, 3), ((5, 3), 1.9, 2), ((5, 3), 1.9, 4),
                                                 ((6, 4), 2.9, 4)])
def test_partition_regions_and_halos(shape, overlap, ranks):
    box = Box([0.0] * len(shape), [1.0] * len(shape))
    level = Level(box, shape, overlap)
    part = Partition(level, ranks)
    owned = [part.owned(r) for r in range(ranks)]
    assert sorted(sum(owned, [])) == list(range(level.n_subdomains))
    sizes = [len(o) for o in owned]
    assert max(sizes) - min(sizes) <= max(sizes) // 2 + 1  # balanced blocks
    x = box.grid([41] * len(shape))
    masks = [part.region(r)[0].contains(x, part.region(r)[1]) for r in range(ranks)]
    assert torch.stack(masks).sum(0).eq(1).all()  # every point belongs to exactly one rank
    for r in range(ranks):
        # The halo is exactly the other ranks' subdomains that cover points of this region.
        fine = Box(*[[getattr(part.region(r)[0], a)[d] for d in range(len(shape))] for a in ("lo", "hi")])
        pts = fine.grid([60] * len(shape))
        _, sub, _ = level.pairs(pts, [()])
        covering = set(sub.tolist()) - set(owned[r])
        assert covering == set(part.halo(r))
        part.halo(r).append(-1)  # a caller's change to the list it got leaves the kept halo alone
        assert covering == set(part.halo(r))
        assert part.held(r) == covering | set(owned[r])


def test_serial_context():
    ctx = Context.from_environment()
    assert (ctx.rank, ctx.size, ctx.parallel) == (0, 1, False)
    a = np.arange(3.0)
    assert ctx.allreduce(a) is a and ctx.gather(5) == [5]


# ----------------------------------------------------------------------------- mpiexec runs
@needs_mpi
@pytest.mark.parametrize("case,ranks", [("cos1d", 2), ("cos1d", 3), ("cos1d", 4),
                                        ("laplace", 2), ("laplace", 3), ("laplace", 4),
                                        ("inverse", 3), ("soft_pinn", 2), ("wave_march", 2), ("wave_march", 3),
                                        ("burgers", 2)])
def test_mpi_equals_serial(tmp_path, case, ranks):
    data = {"cos1d": COS1D, "laplace": LAPLACE, "inverse": INVERSE, "soft_pinn": SOFT_PINN,
            "wave_march": WAVE_MARCH, "burgers": BURGERS}[case]
    cfg_path = write_toml(data, tmp_path / f"{case}.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path))
    proc = mpirun(ranks, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = assert_same_run(serial, tmp_path / "p" / "run.h5")
    assert out["attrs"]["n_ranks"] == ranks
    if case == "burgers":  # the reference is computed once and shared
        assert np.abs(out["solution"]["reference"].ravel() - serial.u_exact).max() == 0
    if case == "wave_march":  # space is split, time marches
        assert "slab 3/3" in proc.stdout and "own + halo" in proc.stdout
    assert f"{ranks} rank(s)" in proc.stdout
    # Ranks on one node share its cores (unless OMP_NUM_THREADS says otherwise).
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // ranks))
    assert f"{threads} thread(s)" in proc.stdout


@needs_mpi
def test_one_failing_rank_ends_the_job(tmp_path):
    cfg_path = write_toml(COS1D, tmp_path / "c.toml")
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from mpi4py import MPI
        from fbpinn.problems.sinusoids import Cos1d
        from fbpinn.cli import main

        calls = [0]
        original = Cos1d.residual

        def residual(self, x, d):
            calls[0] += 1
            if MPI.COMM_WORLD.Get_rank() == 1 and calls[0] == 5:
                raise RuntimeError("injected failure on rank 1")
            return original(self, x, d)

        Cos1d.residual = residual
        sys.exit(main(["train", {str(cfg_path)!r}, "--out", {str(tmp_path / 'out')!r},
                       "--set", "training.steps=100000"]))
    """))
    start = time.time()
    proc = mpirun(2, [str(script)], timeout=90)
    elapsed = time.time() - start
    assert elapsed < 60
    assert proc.returncode != 0
    assert "rank 1/2" in proc.stderr and "injected failure on rank 1" in proc.stderr
    assert not (tmp_path / "out" / "run.h5").exists()


@needs_mpi
def test_unwritable_output_under_mpi_stops_every_rank(tmp_path):
    cfg_path = write_toml(COS1D, tmp_path / "c.toml")
    (tmp_path / "file").write_text("x")
    start = time.time()
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(tmp_path / "file" / "sub")], timeout=60)
    assert time.time() - start < 30
    assert proc.returncode == 2
    assert proc.stderr.count("cannot write results to") == 1


@needs_mpi
def test_config_missing_on_one_rank_stops_every_rank(tmp_path):
    # As when the config is on a node-local disk of one node only.
    cfg_path = write_toml(COS1D, tmp_path / "c.toml")
    script = tmp_path / "one.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from mpi4py import MPI
        from fbpinn.cli import main

        path = {str(cfg_path)!r} if MPI.COMM_WORLD.Get_rank() == 0 else "/nonexistent/c.toml"
        sys.exit(main(["train", path, "--out", {str(tmp_path / 'new' / 'out')!r}]))
    """))
    start = time.time()
    proc = mpirun(2, [str(script)], timeout=60)
    assert time.time() - start < 30
    assert proc.returncode == 2
    assert "no config file '/nonexistent/c.toml'" in proc.stderr
    assert not (tmp_path / "new").exists()  # the pre-flight failed on one rank: nothing was created


@needs_mpi
def test_input_error_on_one_rank_during_setup_ends_the_job(tmp_path):
    # As when one node of the job has no GPU and training.device = "cuda".
    cfg_path = write_toml(COS1D, tmp_path / "c.toml")
    script = tmp_path / "nogpu.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from mpi4py import MPI
        import fbpinn.trainer
        from fbpinn.config import ConfigError
        from fbpinn.cli import main

        original = fbpinn.trainer.select_device

        def select_device(ctx, preference):
            if ctx.rank == 1:
                raise ConfigError("training.device", "'cuda' but torch sees no CUDA device on this node")
            return original(ctx, preference)

        fbpinn.trainer.select_device = select_device
        sys.exit(main(["train", {str(cfg_path)!r}, "--out", {str(tmp_path / 'out')!r}]))
    """))
    start = time.time()
    proc = mpirun(2, [str(script)], timeout=60)
    assert time.time() - start < 30
    assert proc.returncode != 0
    assert "rank 1/2: error: config: training.device" in proc.stderr


@needs_mpi
def test_config_error_under_mpi_is_reported_once(tmp_path):
    cfg_path = write_toml(COS1D, tmp_path / "c.toml")
    proc = mpirun(2, ["-m", "fbpinn", "train", str(cfg_path), "--set", "training.steps=0"])
    assert proc.returncode == 2
    assert proc.stderr.count("config: training.steps: must be >= 1") == 1


def test_without_mpi4py_runs_serially(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if it were not installed
    ctx = Context.from_environment()
    assert (ctx.size, ctx.parallel) == (1, False)
    run = fbpinn.train(fbpinn.load_config(data={**COS1D, "training": {**COS1D["training"], "steps": 3}}), ctx)
    assert run.n_ranks == 1 and len(run.loss_per_step) == 3


def test_parallel_axes_config():
    from fbpinn.config import ConfigError

    cfg = fbpinn.load_config(data={**LAPLACE, "parallel": {"axes": [1]}})
    assert cfg.parallel.axes == [1]
    with pytest.raises(ConfigError, match=r"parallel.axes: must list distinct axis numbers in 0..1"):
        fbpinn.load_config(data={**LAPLACE, "parallel": {"axes": [2]}})
    level = Level(Box([0.0, 0.0], [1.0, 1.0]), (5, 3), 1.9)
    assert Partition(level, 3, axes=[1]).dims == [1, 3]


def test_device_selection():
    from fbpinn.parallel import select_device

    ctx = Context(None)
    assert select_device(ctx, "cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device(ctx, "auto").type == "cpu"
        with pytest.raises(fbpinn.ConfigError, match="training.device: 'cuda' but torch sees no CUDA device"):
            select_device(ctx, "cuda")


@needs_mpi
def test_per_rank_solution_files_and_merge(tmp_path):
    from fbpinn.cli import main
    from fbpinn.io import ResultsError

    cfg_path = write_toml({**LAPLACE, "training": {**LAPLACE["training"], "steps": 10}, "test": {"points": [31, 17]}},
                          tmp_path / "l.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path))
    out = tmp_path / "p"
    proc = mpirun(3, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(out), "--set", "output.per_rank=true"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "run.h5", "run_p0.h5", "run_p1.h5", "run_p2.h5"]
    data = read_results(out / "run.h5")
    u = data["solution"]["u"]
    assert u.shape == (31, 17) and not np.isnan(u).any()
    assert np.abs(u.ravel() - serial.u_test).max() < 1e-12
    assert np.allclose(data["solution"]["error"], u - data["solution"]["exact"], rtol=0, atol=1e-15)

    assert main(["plot", str(out / "run.h5")]) == 0  # plots read through the virtual datasets
    assert (out / "solution.png").stat().st_size > 5000
    assert main(["merge", str(out / "run.h5"), "-o", str(tmp_path / "one.h5")]) == 0
    for part in out.glob("run_p*.h5"):
        part.unlink()
    with pytest.raises(ResultsError, match="missing: run_p0.h5, run_p1.h5, run_p2.h5"):
        read_results(out / "run.h5")
    merged = read_results(tmp_path / "one.h5")
    assert np.array_equal(merged["solution"]["u"], u)
    assert main(["merge", str(tmp_path / "one.h5")]) == 2  # already self-contained


MULTILEVEL = {"problem": {"name": "laplace2d_multiscale", "scales": 2},
              "decomposition": {"levels": [[1, 1], [2, 2], [4, 4]], "overlap": 1.9}, "network": {"hidden": [8]},
              "training": {"steps": 100, "dtype": "float64", "points": [20, 20], "eval_every": 50, "lr": 3e-3},
              "test": {"points": [25, 25]}}


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_multilevel_equals_serial(tmp_path, ranks):
    # The finest level is split with halos; the coarse levels are replicated, gradients summed.
    cfg_path = write_toml(MULTILEVEL, tmp_path / "ml.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path))
    assert len(serial.model.levels) == 3
    proc = mpirun(ranks, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert_same_run(serial, tmp_path / "p" / "run.h5")
    assert "replicated" in proc.stdout and "own + halo" in proc.stdout


def run_cli(args, env_extra, tmp_path, prelude=""):
    env = {**os.environ, **env_extra}
    code = f"import sys\n{prelude}\nfrom fbpinn.cli import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)


@pytest.mark.parametrize("mpi4py", ["usable", "missing"])
def test_processes_started_by_a_launcher_but_not_joined_by_mpi_stop(tmp_path, mpi4py):
    # As with the mpiexec of one MPI and an mpi4py built against another: each process
    # would be a one-rank job, and all would write the same results file.
    cfg_path = write_toml(COS1D, tmp_path / "c.toml")
    out = tmp_path / "out"
    prelude = "sys.modules['mpi4py'] = None" if mpi4py == "missing" else ""
    proc = run_cli(["train", str(cfg_path), "--out", str(out)], {"OMPI_COMM_WORLD_SIZE": "3"}, tmp_path, prelude)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    if mpi4py == "usable":
        assert "fbpinn: error: started as one of 3 processes (OMPI_COMM_WORLD_SIZE=3) but MPI reports a job of " \
               "1 rank: mpi4py uses MPICH" in proc.stderr
    else:
        assert "(OMPI_COMM_WORLD_SIZE=3) but mpi4py is not usable" in proc.stderr
    assert not out.exists()
    # A launcher's variable saying one process is a one-process run.
    proc = run_cli(["train", str(cfg_path), "--out", str(out), "--set", "training.steps=2"],
                   {"OMPI_COMM_WORLD_SIZE": "1"}, tmp_path, prelude)
    assert proc.returncode == 0, proc.stderr
    assert (out / "run.h5").is_file()


@needs_mpi
def test_ordinary_steps_only_start_the_sum_of_the_loss(tmp_path):
    # Steps that neither log, evaluate nor write start the sum of their loss over the ranks and
    # finish it at the next step; the run still equals the serial one step for step.
    cfg_path = write_toml({**COS1D, "training": {**COS1D["training"], "log_every": 25}}, tmp_path / "c.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path))
    script = textwrap.dedent(f"""
        import fbpinn
        from fbpinn.parallel import Context
        from fbpinn.io import write_results
        started = []
        real = Context.iallreduce
        def counted(self, array):
            started.append(len(array))
            return real(self, array)
        Context.iallreduce = counted
        ctx = Context.from_environment()
        run = fbpinn.train(fbpinn.load_config({str(cfg_path)!r}), ctx)
        counts = ctx.gather((len(started), len(run.loss_per_step)))  # one line, from rank 0
        if ctx.rank == 0:
            print("counts", counts, flush=True)
            write_results({str(tmp_path / "run.h5")!r}, run)
    """)
    proc = mpirun(3, ["-c", script])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    due = {1, 25, 50, 75, 100}  # the first and last steps, evaluations (50) and log lines (25)
    assert f"counts {[(100 - len(due), 100)] * 3}" in proc.stdout, proc.stdout
    assert_same_run(serial, tmp_path / "run.h5")


@needs_mpi
def test_halo_copies_follow_their_owners_with_one_exchange_per_step(tmp_path):
    # Adam steps sum each shared subdomain's gradient on every rank that holds it (2 x 2 blocks:
    # corner subdomains are held by four ranks), so the halo copies move with their owners and
    # the parameters are exchanged once, before the first step; a checkpoint step resynchronises
    # them (parameters and Adam's moments).  The L-BFGS phase returns halo gradients to their
    # owners and refreshes the copies before each step, as before.  The run equals the serial one.
    data = {**LAPLACE, "decomposition": {"subdomains": [6, 6], "overlap": 1.9},
            "training": {**LAPLACE["training"], "points": [24, 24], "lbfgs_steps": 10}}
    cfg_path = write_toml(data, tmp_path / "l.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path))
    script = textwrap.dedent(f"""
        from pathlib import Path
        import numpy as np
        import fbpinn
        from fbpinn.checkpoint import Checkpoints
        from fbpinn.io import write_results
        from fbpinn.parallel import Context, HaloExchange
        from fbpinn.trainer import Trainer
        calls = []
        for name in ("params", "moments", "grads", "grads_everywhere"):
            def counted(self, *args, _real=getattr(HaloExchange, name), _name=name):
                calls.append(_name)
                return _real(self, *args)
            setattr(HaloExchange, name, counted)
        ctx = Context.from_environment()
        trainer = Trainer(fbpinn.load_config({str(cfg_path)!r}), ctx)
        assert trainer.dist.partition.dims == [2, 2]
        checkpoints = Checkpoints(Path({str(tmp_path / "ck")!r}), every=60)
        run = trainer.run(checkpoints)
        net = trainer.model.nets[trainer.dist.split]
        rows = {{int(j): net.weights[0][i].detach().numpy() for i, j in enumerate(net.held.tolist())}}
        everyone = ctx.gather((calls, rows))
        if ctx.rank == 0:
            worst, shared = 0.0, 0
            for _, mine in everyone:
                for _, theirs in everyone:
                    for j in set(mine) & set(theirs):
                        worst = max(worst, float(np.abs(mine[j] - theirs[j]).max()))
                        shared += 1
            print("calls", [sorted(set(c)) for c, _ in everyone], [c.count("params") for c, _ in everyone],
                  [c.count("moments") for c, _ in everyone], [c.count("grads_everywhere") for c, _ in everyone],
                  flush=True)
            print("worst", worst, "shared", shared, flush=True)
            write_results({str(tmp_path / "run.h5")!r}, run)
    """)
    proc = mpirun(4, ["-c", script], timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("calls"))
    # Parameters: before step 1; at the checkpoint of step 60; before L-BFGS steps 92 to 100 (step 91
    # follows an Adam step); after step 100 for its evaluation, and again at its checkpoint.  Moments:
    # both of Adam's at the two checkpoints.  Summed gradients: the 90 Adam steps.
    every = ["grads", "grads_everywhere", "moments", "params"]
    assert line == f"calls {[every] * 4} {[1 + 1 + 9 + 1 + 1] * 4} {[2 * 2] * 4} {[90] * 4}", line
    worst = float(next(l for l in proc.stdout.splitlines() if l.startswith("worst")).split()[1])
    assert worst <= 1e-13
    assert_same_run(serial, tmp_path / "run.h5")
