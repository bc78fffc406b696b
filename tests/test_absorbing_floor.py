"""scripts/absorbing_floor.py: the error that the absorbing sides alone cause, per order."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from test_parallel import write_toml

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"problem": {"name": "wave2d", "velocity": "mixture", "width": 0.2, "t_max": 1.0},
         "decomposition": {"subdomains": [2, 2, 2]}, "network": {"hidden": [8]},
         "training": {"points": [8, 8, 4]}, "test": {"points": [11, 11, 6]}}


def floor_script():
    spec = importlib.util.spec_from_file_location("absorbing_floor", ROOT / "scripts" / "absorbing_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_second_order_condition_lowers_the_floor(tmp_path, capsys):
    assert floor_script().main([str(write_toml(SMALL, tmp_path / "c.toml")), "--h", "0.02"]) == 0
    found = dict(re.findall(r"absorbing_order = (\d): rel L2 ([0-9.e+-]+)", capsys.readouterr().out))
    first, second = float(found["1"]), float(found["2"])
    # Measured at h = 0.02 on an 11 x 11 x 6 grid: 2.66e-2 and 1.11e-2 (at h = 0.005 on the 41 x 41 x 21
    # grid of wave2d_small: 1.62e-2 and 3.64e-3).
    print(found)
    assert 0.01 < first < 0.04 and second < first / 2


def test_the_free_space_solution_is_the_reference(tmp_path):
    # The script's scheme (second order) on the padded grid converges to the package's reference (fourth order).
    floor = floor_script()
    from fbpinn.config import load_config
    from fbpinn.trainer import build
    import torch
    problem = build(load_config(write_toml(SMALL, tmp_path / "c.toml")))[0]
    times, axis = np.linspace(0, 1, 3), np.linspace(-1, 1, 11)
    ref = problem.reference([torch.from_numpy(axis), torch.from_numpy(axis), torch.from_numpy(times)]).numpy()
    errors = []
    for h, pad in ((0.02, 80), (0.01, 160)):
        free = floor.solve(problem, h, pad, None, times, axis)
        errors.append(np.sqrt(((free - ref) ** 2).sum((0, 1)) / (ref**2).sum((0, 1))))
    print(errors)
    # Measured: 2.1e-3 and 6.5e-4 at t = 0.5, 3.5e-3 and 1.1e-3 at t = 1 (second order: 2.4e-4 at h =
    # 0.005 from 0.005 vs 0.01); at t = 0 both equal u0.
    assert errors[1][0] < 1e-12 and errors[1].max() < 2e-3 and (errors[0][1:] / errors[1][1:]).min() > 2.8


@pytest.mark.parametrize("args, test, message", [(["--h", "0.03"], [11, 11, 6], "--h must divide 2"),
                                                 (["--h", "0.02"], [12, 12, 6], "must be square and on the FD grid"),
                                                 (["--h", "0.02"], [11, 21, 6], "must be square and on the FD grid")])
def test_bad_arguments(tmp_path, args, test, message):
    cfg = write_toml({**SMALL, "test": {"points": test}}, tmp_path / "c.toml")
    with pytest.raises(SystemExit, match=message):
        floor_script().main([str(cfg), *args])
