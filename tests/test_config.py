"""Config loading, overrides and the errors that name the bad key."""

import pytest

import fbpinn
from fbpinn.config import ConfigError, load_config, parse_override, to_toml
from pathlib import Path

CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.toml"))

GOOD = {"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4]}, "training": {"points": [100]}}


def with_(section, key, value):
    data = {k: dict(v) for k, v in GOOD.items()}
    data.setdefault(section, {})[key] = value
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    again = load_config(data=__import__("tomllib").loads(to_toml(cfg)))
    assert to_toml(again) == to_toml(cfg)


def test_required_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"harmonic_oscillator", "harmonic_oscillator_inverse", "cos1d", "cos1d_pinn"} <= names


@pytest.mark.parametrize("section,key,value,message", [
    ("training", "stepz", 10, "training.stepz: unknown key; allowed: steps"),
    ("training", "steps", "ten", "training.steps: must be an integer, got 'ten'"),
    ("training", "steps", 0, "training.steps: must be >= 1"),
    ("training", "lr", -1.0, "training.lr: must be positive"),
    ("training", "dtype", "float16", "training.dtype: must be one of float32, float64"),
    ("training", "sampler", "halton", "training.sampler: must be one of grid, uniform, sobol"),
    ("training", "points", [10, 10], "training.points: must list 1 positive count"),
    ("training", "compile", "yes", "training.compile: must be true or false"),
    ("training", "resample_every", 10, "training.resample_every: needs a random sampler"),
    ("decomposition", "overlap", 0.9, "decomposition.overlap: must exceed 1"),
    ("decomposition", "window", "gauss", "decomposition.window: unknown window 'gauss'; available: cosine, sigmoid"),
    ("decomposition", "subdomains", [2, 2], "decomposition.subdomains: must list 1 positive count"),
    ("network", "activation", "relu", "network.activation: unknown activation 'relu'"),
    ("network", "hidden", [], "network.hidden: must list positive layer widths"),
    ("problem", "omega", -1.0, "problem.omega: must be positive"),
    ("problem", "mu", 4.0, "problem.mu: unknown key; allowed: output_scale, physics, domain, omega"),
    ("problem", "name", "heat", "problem.name: unknown problem 'heat'; available: "),
    ("solver", "x", 1, "solver: unknown table; allowed: problem, decomposition"),
])
def test_errors_name_the_key(section, key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(data=with_(section, key, value))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_problem_lists_every_problem_and_the_way_to_add_one():
    from fbpinn import registry

    with pytest.raises(ConfigError) as info:
        load_config(data=with_("problem", "name", "heat"))
    assert str(info.value) == (f"config: problem.name: unknown problem 'heat'; available: "
                               f"{', '.join(registry.names('problem'))}; a problem of your own is named by "
                               "problem.module (docs/guide.md, \"Your own problem\")")
    assert {"burgers", "cos1d", "wave2d"} <= set(registry.names("problem"))


def test_levels():
    cfg = load_config(data={"problem": {"name": "laplace2d_multiscale"},
                            "decomposition": {"levels": [[1, 1], [2, 2], [4, 4]], "overlap": 1.9},
                            "training": {"points": [10, 10]}})
    assert cfg.decomposition.level_shapes() == [[1, 1], [2, 2], [4, 4]]
    with pytest.raises(ConfigError, match="decomposition.subdomains: set either subdomains .* not both or neither"):
        load_config(data={"problem": {"name": "cos1d"}, "decomposition": {"subdomains": [4], "levels": [[1], [4]]}})
    with pytest.raises(ConfigError, match="decomposition.subdomains: set either"):
        load_config(data={"problem": {"name": "cos1d"}})
    with pytest.raises(ConfigError, match=r"decomposition.levels: must list 2 positive count\(s\) per level.*got \[2\]"):
        load_config(data={"problem": {"name": "laplace2d_multiscale"}, "decomposition": {"levels": [[1, 1], [2]]}})


def test_oscillator_value_checks():
    with pytest.raises(ConfigError, match="problem.constraint: must be one of hard, soft, none"):
        load_config(data={"problem": {"name": "harmonic_oscillator", "constraint": "weak"}})
    with pytest.raises(ConfigError, match="problem.mu: must give an under-damped"):
        load_config(data={"problem": {"name": "harmonic_oscillator", "mu": 50.0}})
    with pytest.raises(ConfigError, match="problem.physics: false leaves nothing to fit"):
        load_config(data={"problem": {"name": "harmonic_oscillator", "physics": False}})
    with pytest.raises(ConfigError, match="problem.physics: false leaves nothing to fit"):
        load_config(data={"problem": {"name": "cos1d", "physics": False}})
    with pytest.raises(ConfigError, match="problem.sigma: must be positive, got 0.0"):
        load_config(data={"problem": {"name": "harmonic_oscillator", "sigma": 0.0}})
    with pytest.raises(ConfigError, match="problem.ansatz: must be one of pulse, taylor, got 'cubic'"):
        load_config(data={"problem": {"name": "wave2d", "ansatz": "cubic"}})
    with pytest.raises(ConfigError, match="problem.fade: must be positive, got -0.1"):
        load_config(data={"problem": {"name": "wave2d", "ansatz": "taylor", "fade": -0.1}})
    with pytest.raises(ConfigError, match="problem.absorbing_order: must be 1 or 2, got 3"):
        load_config(data={"problem": {"name": "wave2d", "absorbing_order": 3}})
    with pytest.raises(ConfigError, match="problem.output_scale: must be positive, got 0.0"):
        load_config(data={"problem": {"name": "cos1d", "output_scale": 0.0}})
    with pytest.raises(ConfigError, match="problem.noise: must be >= 0"):
        load_config(data={"problem": {"name": "harmonic_oscillator_inverse", "noise": -0.1}})
    with pytest.raises(ConfigError, match="problem.ic_weights: must be >= 0"):
        load_config(data={"problem": {"name": "harmonic_oscillator", "ic_weights": [1.0, -1.0]}})


def test_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[problem]\nname = "cos1d"\n[training]\nsteps = 5\n')
    cfg = load_config(path, ["training.steps=7", "training.lr=2e-3", "problem.name=harmonic_oscillator",
                             "training.points=50", "decomposition.subdomains=[3]"])
    assert cfg.training.steps == 7 and cfg.training.lr == 2e-3
    assert cfg.problem_name == "harmonic_oscillator" and cfg.training.points == [50]
    assert cfg.decomposition.subdomains == [3]
    assert parse_override("a.b=true") == (["a", "b"], True)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.steps")
    with pytest.raises(ConfigError, match="must be section.key"):
        parse_override("steps=3")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[problem\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_public_api():
    assert fbpinn.load_config is load_config
    assert callable(fbpinn.train) and callable(fbpinn.load_results)
