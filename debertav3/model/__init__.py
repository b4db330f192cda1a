"""The DeBERTa-v3 network: disentangled attention, encoder and pretraining heads (imports only torch)."""

from .backbone import DebertaV3Model, EncoderOutput
from .heads import LMPredictionHead, MaskedLMModel, ReplacedTokenDetectionModel, RTDHead, enhanced_mask_decoder

__all__ = ["DebertaV3Model", "EncoderOutput", "LMPredictionHead", "MaskedLMModel", "ReplacedTokenDetectionModel",
           "RTDHead", "enhanced_mask_decoder"]
