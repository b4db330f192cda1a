"""debertav3: a PyTorch pretrainer for DeBERTaV3 (replaced token detection with gradient-disentangled
embedding sharing) on the DeBERTa disentangled-attention backbone."""

import importlib

from .model.config import ModelConfig, generator_config, preset
from .model import DebertaV3Model
from .objective.rtd import RTDModel, RTDOutput

try:  # the optional fast paths register themselves (debertav3/model/implementations.py)
    importlib.import_module("debertav3.ops")
except ModuleNotFoundError as exc:
    if exc.name != "debertav3.ops":  # a fast path that is there but broken is a bug: show it
        raise

__version__ = "0.1.0"
__all__ = ["DebertaV3Model", "ModelConfig", "RTDModel", "RTDOutput", "generator_config", "preset"]
