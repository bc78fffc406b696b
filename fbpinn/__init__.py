"""fbpinn: Finite Basis Physics-Informed Neural Networks in PyTorch.

Public API::

    from fbpinn import load_config, train, save_results, load_results
    cfg = load_config("configs/cos1d.toml", overrides=["training.steps=2000"])
    run = train(cfg)                       # a trained fbpinn.trainer.Run
    save_results("results/cos1d/run.h5", run)
    data = load_results("results/cos1d/run.h5")
"""

__version__ = "0.1.0"

from .config import ConfigError, load_config  # noqa: E402
from .io import ResultsError, read_results as load_results, write_results as save_results  # noqa: E402
from .trainer import TrainingError, train  # noqa: E402

__all__ = ["ConfigError", "ResultsError", "TrainingError", "load_config", "load_results", "save_results",
           "train", "__version__"]
