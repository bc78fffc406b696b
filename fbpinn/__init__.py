"""fbpinn: Finite Basis Physics-Informed Neural Networks in PyTorch.

Public API::

    from fbpinn import load_config, train, save_results, load_results
    cfg = load_config("configs/cos1d.toml", overrides=["training.steps=2000"])
    run = train(cfg)                       # a trained fbpinn.trainer.Run
    save_results("results/cos1d/run.h5", run)
    data = load_results("results/cos1d/run.h5")
    sol = Solution.load("results/cos1d/run.h5")   # the trained model: sol(x), sol(x, "u_x")
"""

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), so that ``import fbpinn`` and
# ``fbpinn.cli`` stay fast: ``fbpinn train`` installs its stop-signal handlers before torch
# is imported (see fbpinn.signals).
_PUBLIC = {"ConfigError": ("config", "ConfigError"), "load_config": ("config", "load_config"),
           "ResultsError": ("io", "ResultsError"), "load_results": ("io", "read_results"),
           "Solution": ("solution", "Solution"),
           "save_results": ("io", "write_results"), "TrainingError": ("trainer", "TrainingError"),
           "train": ("trainer", "train")}

__all__ = ["ConfigError", "ResultsError", "Solution", "TrainingError", "load_config", "load_results",
           "save_results", "train", "__version__"]


def __getattr__(name: str):
    """Import a public name, or a submodule (``fbpinn.io``), when it is first asked for."""
    import importlib

    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
