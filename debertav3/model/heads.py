"""Pretraining heads and the two pretraining networks built from them.

- `LMPredictionHead`: the tied MLM head, transformers' `legacy=False` layout (keys `lm_predictions.lm_head.*`):
  logits = LayerNorm(act(dense(h))) @ E^T + bias, E the word embedding table passed in explicitly.
- `enhanced_mask_decoder`: DeBERTa's EMD (paper section 3.3, official `EnhancedMaskDecoder`): queries
  I = absolute position embeddings + H, H the second-to-last hidden states; the last layer is applied twice
  (shared weights) with keys and values H.
- `RTDHead`: the official replaced-token head (keys `mask_predictions.*`):
  logits = classifier(act(dense(LayerNorm(h + h_[CLS])))), the final [CLS] state added to every token.

Shape legend: B batch, L length, HD hidden size, N masked positions, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import activation
from .backbone import DebertaV3Model


class LMPredictionHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor, word_embedding_weight: torch.Tensor) -> torch.Tensor:
        """h [..., HD] -> logits [..., V] against the (tied) word embedding table."""
        return torch.matmul(self.LayerNorm(self.act(self.dense(h))), word_embedding_weight.t()) + self.bias


class RTDHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, h_BLH: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, L, HD] -> replaced-token logits [B, L]."""
        x = self.LayerNorm(h_BLH + h_BLH[:, :1])
        return self.classifier(self.act(self.dense(x))).squeeze(-1)


def enhanced_mask_decoder(backbone: DebertaV3Model, hidden_BLH: torch.Tensor, key_padding_mask: torch.Tensor,
                          relative: tuple) -> torch.Tensor:
    """EMD: apply the last layer twice to queries I = P + H (P absolute positions), keys/values H."""
    last = backbone.encoder.layer[-1]
    rel_embeddings, rel_idx = relative
    query = backbone.embeddings.position_embeddings.weight[: hidden_BLH.shape[1]] + hidden_BLH
    for _ in range(2):
        query = last(hidden_BLH, key_padding_mask, query, rel_embeddings, rel_idx)
    return query


class MaskedLMModel(nn.Module):
    """Backbone + EMD + tied MLM head: the generator (keys `deberta.*`, `lm_predictions.lm_head.*`).

    The backbone owns an absolute position table (`deberta.embeddings.position_embeddings`) that only the EMD
    uses; transformers ignores that key on load, so an exported generator runs there without the EMD.
    """

    def __init__(self, config: ModelConfig, own_word_embeddings: bool = True):
        super().__init__()
        self.config = config
        self.deberta = DebertaV3Model(config, own_word_embeddings, absolute_positions=True)
        self.lm_predictions = nn.ModuleDict({"lm_head": LMPredictionHead(config)})
        self.lm_predictions.apply(self.deberta._init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked_BL: torch.Tensor,
                word_embedding_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, V] at the N positions where masked_BL is True (row-major order), and nowhere else."""
        weight = self.deberta.embeddings.word_embeddings.weight if word_embedding_weight is None \
            else word_embedding_weight
        # The last layer's ordinary pass would be thrown away (the EMD re-applies it), so stop one layer early.
        states, key_padding_mask, relative = self.deberta.hidden_states(
            input_ids, attention_mask, weight, num_layers=self.config.num_hidden_layers - 1)
        decoded_BLH = enhanced_mask_decoder(self.deberta, states[-1], key_padding_mask, relative)
        return self.lm_predictions["lm_head"](decoded_BLH[masked_BL], weight)


class ReplacedTokenDetectionModel(nn.Module):
    """Backbone + RTD head: the discriminator (keys `deberta.*`, `mask_predictions.*`)."""

    def __init__(self, config: ModelConfig, own_word_embeddings: bool = True):
        super().__init__()
        self.config = config
        self.deberta = DebertaV3Model(config, own_word_embeddings)
        self.mask_predictions = RTDHead(config)
        self.mask_predictions.apply(self.deberta._init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                word_embedding_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Replaced-token logits [B, L]."""
        return self.mask_predictions(self.deberta(input_ids, attention_mask, word_embedding_weight))
