"""ctxtune models: plain PyTorch modules and ``build_model(cfg)`` (no hpo/Ray/MLflow imports here).

Importing this package registers every model (``model_names()`` lists them).
"""
from models.config import ConfigError
from models.loss import seg_loss
from models.registry import build_model, model_names, preset

__all__ = ["build_model", "preset", "model_names", "ConfigError", "seg_loss"]
