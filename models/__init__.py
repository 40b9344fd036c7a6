"""ctxtune models: plain PyTorch modules and ``build_model(cfg)`` (no hpo/Ray/MLflow imports here).

Importing this package registers every model (``model_names()`` lists them).
"""
from models.config import ConfigError
from models.loss import seg_loss
from models.registry import build_model, model_names, preset

# model modules register themselves on import
from models import fcn, glore_net, msglore, deeplabv3plus  # noqa: E402,F401

try:  # written concurrently by another engineer; becomes a plain `from models import spacemeshlab` once it exists
    import models.spacemeshlab  # noqa: E402,F401  (this form raises ModuleNotFoundError while the file is absent)
except ModuleNotFoundError as e:
    if e.name != "models.spacemeshlab":
        raise

__all__ = ["build_model", "preset", "model_names", "ConfigError", "seg_loss"]
