"""`RTDModel` from a training `Config`: what the trainer trains and what export reads back."""

from __future__ import annotations

from typing import Sequence

from ..model.config import generator_config
from ..interop.hf import load_rtd_weights
from ..objective.rtd import RTDModel
from .config import Config


def build_model(cfg: Config, special_token_ids: Sequence[int], device_type: str = "cpu") -> RTDModel:
    """The generator (half depth unless `model.generator_layers`, the discriminator's width unless
    `model.generator_hidden_size`) and discriminator of `cfg`, or the single full-depth network of objectives mlm,
    arlm and mt, initialised from `model.init_*` directories where given; `attention_impl: auto` resolved for
    `device_type`, the device the model will run on."""
    disc = cfg.model.backbone().for_device(device_type)
    gen = disc
    if cfg.objective == "rtd":
        gen = generator_config(disc, cfg.model.generator_layers, cfg.model.generator_hidden_size)
    model = RTDModel(gen, disc if cfg.objective == "rtd" else None, cfg.rtd.embedding_sharing, cfg.rtd.rtd_weight,
                     cfg.rtd.temperature, cfg.objective, special_token_ids, cfg.model.enhanced_mask_decoder)
    load_rtd_weights(model, cfg.model.init_discriminator, cfg.model.init_generator, cfg.model.generator_start)
    return model
