"""ctxtune datasets: Cityscapes, Pascal-Context 59, synthetic street scenes, any folder layout
(`data.name: folder`, CamVid), transforms, metrics, inference (TTA / sliding window) and
official-format export. Plain PyTorch + OpenCV + NumPy.

Note: this package shadows Hugging Face's `datasets`; nothing here depends on that one.
"""

from .build import build, label_space
from .checks import check_sample
from .bundle import DataBundle
from .errors import DatasetError
from .folder import preflight

__all__ = ["build", "label_space", "check_sample", "DataBundle", "DatasetError", "preflight"]
