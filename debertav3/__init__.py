"""debertav3: a PyTorch pretrainer for DeBERTaV3 (replaced token detection with gradient-disentangled
embedding sharing) on the DeBERTa disentangled-attention backbone."""

from .model.config import ModelConfig, generator_config, preset
from .model import DebertaV3Model
from .objective.rtd import RTDModel, RTDOutput

__version__ = "0.1.0"
__all__ = ["DebertaV3Model", "ModelConfig", "RTDModel", "RTDOutput", "generator_config", "preset"]
