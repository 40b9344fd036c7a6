"""ctxtune models: plain PyTorch modules and ``build_model(cfg)`` (no hpo/Ray/MLflow imports here).

Importing this package registers every model (``model_names()`` lists them).
"""
from models.config import ConfigError
from models.loss import seg_loss
from models.registry import build_model, model_names, preset

# model modules register themselves on import
from models import fcn, glore_net, msglore, deeplabv3plus  # noqa: E402,F401

from models import spacemeshlab  # noqa: E402,F401

__all__ = ["build_model", "preset", "model_names", "ConfigError", "seg_loss"]
