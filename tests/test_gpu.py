"""The CUDA path: a GPU run equals the CPU run, and ranks bind to GPUs by node-local rank.

The tests that need a GPU are skipped where torch sees none (as on CI); the binding
rule itself is checked everywhere with a stand-in for torch.cuda.
"""

import textwrap

import numpy as np
import pytest
import torch

import fbpinn
from fbpinn.parallel import Context, select_device
from test_parallel import BURGERS, LAPLACE, assert_same_run, mpirun, needs_mpi, write_toml

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def with_training(case: dict, **training) -> dict:
    return {**case, "training": {**case["training"], **training}}


def test_rank_takes_gpu_local_rank_mod_visible_gpus(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    ctx = Context(None)
    for local_rank, gpu in ((0, 0), (3, 3), (6, 2)):
        ctx.local_rank = local_rank
        assert select_device(ctx, "auto") == torch.device("cuda", gpu)
        assert select_device(ctx, "cuda") == torch.device("cuda", gpu)
    assert chosen == [torch.device("cuda", g) for g in (0, 0, 3, 3, 2, 2)]
    assert select_device(ctx, "cpu").type == "cpu"


@needs_mpi
def test_node_local_rank_from_shared_memory_communicator(tmp_path):
    script = tmp_path / "local.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from fbpinn.parallel import Context
        ctx = Context.from_environment()
        Path({str(tmp_path)!r}, f"rank{{ctx.rank}}").write_text(f"{{ctx.local_rank}} of {{ctx.local_size}}")
    """))  # one file per rank: the launcher may interleave the ranks' output lines
    proc = mpirun(3, [str(script)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [(tmp_path / f"rank{r}").read_text() for r in range(3)] == [f"{r} of 3" for r in range(3)]


@needs_cuda
@pytest.mark.parametrize("case", [LAPLACE, BURGERS], ids=["laplace", "burgers"])
def test_cuda_run_equals_cpu_run_in_float64(case):
    cfg = with_training(case, steps=100)
    cpu = fbpinn.train(fbpinn.load_config(data=with_training(cfg, device="cpu")))
    gpu = fbpinn.train(fbpinn.load_config(data=with_training(cfg, device="cuda")))
    assert gpu.model.device.type == "cuda"
    ref, got = np.asarray(cpu.loss_per_step), np.asarray(gpu.loss_per_step)
    assert np.abs(got - ref).max() <= 1e-9 * np.abs(ref).max()
    for name, arr in cpu.model.parameter_arrays().items():
        other = gpu.model.parameter_arrays()[name]
        assert np.abs(other - arr).max() <= 1e-9 * max(np.abs(arr).max(), 1.0), name
    assert np.abs(gpu.u_test - cpu.u_test).max() <= 1e-8


@needs_cuda
def test_compiled_float32_on_cuda_follows_eager():
    cfg = with_training(LAPLACE, steps=40, dtype="float32", device="cuda")
    eager = fbpinn.train(fbpinn.load_config(data=cfg))
    compiled = fbpinn.train(fbpinn.load_config(data=with_training(cfg, compile=True)))
    ref, got = np.asarray(eager.loss_per_step), np.asarray(compiled.loss_per_step)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


@needs_cuda
def test_the_compiled_step_is_replayed_as_a_cuda_graph_equal_to_the_eager_run():
    # Fixed points on one GPU: the traced whole step, recorded once as a CUDA graph after two
    # ordinary calls and checked at its first replay, then replayed; float64, so the numbers of the
    # eager run to rounding.
    from fbpinn.cudagraph import CapturedStep
    from fbpinn.trainer import Trainer

    cfg = with_training(LAPLACE, steps=30, dtype="float64", device="cuda")
    eager, compiled = (Trainer(fbpinn.load_config(data=with_training(cfg, compile=c))) for c in (False, True))
    assert not compiled.sizes_change()
    ref = [eager.step(s)[0] for s in range(1, 31)]
    got = [compiled.step(s)[0] for s in range(1, 31)]
    step = compiled._traced
    assert isinstance(step, CapturedStep) and step.replaying and step.graph is not None and step.calls == 2
    assert got == pytest.approx(ref, rel=1e-9)
    for a, b in zip(compiled.params, eager.params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-9, atol=1e-11)


@needs_cuda
@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_ranks_sharing_a_gpu_equal_the_serial_cpu_run(tmp_path, ranks):
    cfg_path = write_toml(LAPLACE, tmp_path / "l.toml")
    serial = fbpinn.train(fbpinn.load_config(cfg_path, overrides=["training.device=cpu"]))
    out = tmp_path / "out"
    proc = mpirun(ranks, ["-m", "fbpinn", "train", str(cfg_path), "--out", str(out), "--set", "training.device=cuda"],
                  timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(serial, out / "run.h5")
