"""Pretraining heads and the two pretraining networks built from them.

- `LMPredictionHead`: the tied MLM head, transformers' `legacy=False` layout (keys `lm_predictions.lm_head.*`):
  logits = LayerNorm(act(dense(h))) @ E^T + bias, E the word embedding table passed in explicitly; dense maps
  hidden_size to the embedding width (the official `BertLMPredictionHead`; transformers' legacy head).
- `enhanced_mask_decoder`: DeBERTa's EMD (paper section 3.3, official `EnhancedMaskDecoder`): queries
  I = absolute position embeddings + H, H the second-to-last hidden states; the last layer is applied twice
  (shared weights) with keys and values H. Computed only for the masked query rows.
- `RTDHead`: the official replaced-token head (keys `mask_predictions.*`):
  logits = classifier(act(dense(LayerNorm(h + h_[CLS])))), the final [CLS] state added to every token.

Shape legend: B batch, L length, HD hidden size, N masked positions, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .attention import activation
from .backbone import DebertaV3Model


class LMPredictionHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_width)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.embedding_width, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """LayerNorm(act(dense(h))): the states that are projected onto the vocabulary."""
        return self.LayerNorm(self.act(self.dense(h)))

    def forward(self, h: torch.Tensor, word_embedding_weight: torch.Tensor) -> torch.Tensor:
        """h [..., HD] -> logits [..., V] against the (tied) word embedding table."""
        return torch.matmul(self.transform(h), word_embedding_weight.t()) + self.bias


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
                          relative: tuple, masked_BL: torch.Tensor) -> torch.Tensor:
    """EMD at the masked positions: the last layer applied twice to queries I = P + H, keys and values H.

    Each query row only attends and passes through the feed-forward on its own, so computing the rows at the
    masked positions (15%) gives exactly those rows of the full EMD at a fraction of its cost. The masked
    positions of each sequence are gathered into M = max-per-sequence query slots. Returns [N, HD] in row-major
    order of `masked_BL` (the order of `h[masked_BL]`).
    """
    rel_embeddings, rel_idx = relative
    batch_N, position_N = masked_BL.nonzero(as_tuple=True)
    slot_N = (masked_BL.cumsum(1) - 1)[batch_N, position_N]
    num_slots = int(slot_N.max()) + 1 if slot_N.numel() else 1
    # Unused slots point at position 0: their rows are computed and dropped, never mixed into others.
    position_BM = torch.zeros(masked_BL.shape[0], num_slots, dtype=torch.long, device=masked_BL.device)
    position_BM[batch_N, slot_N] = position_N
    hidden_BMH = torch.gather(hidden_BLH, 1, position_BM.unsqueeze(-1).expand(-1, -1, hidden_BLH.shape[-1]))
    # F.embedding, not weight[position_BM]: indexing's backward accumulates the repeated positions with parallel
    # atomic adds on CPU, in an order that changes from run to run; embedding's backward is deterministic.
    query = nn.functional.embedding(position_BM, backbone.embeddings.position_embeddings.weight) + hidden_BMH
    query_idx = rel_idx[position_BM] if rel_idx is not None else None  # [B, M, L]
    last = backbone.encoder.layer[-1]
    keys_values = last.attention.keys_values(hidden_BLH)  # both passes attend to the same hidden states
    for _ in range(2):
        query = last(hidden_BLH, key_padding_mask, query, rel_embeddings, query_idx, keys_values)
    return query[batch_N, slot_N]


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
        weight = self._table(word_embedding_weight)
        return torch.matmul(self.masked_states(input_ids, attention_mask, masked_BL, weight), weight.t()) \
            + self.lm_predictions["lm_head"].bias

    def masked_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked_BL: torch.Tensor,
                      word_embedding_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The head's transformed states [N, HD] at the masked positions: logits = states E^T + bias."""
        weight = self._table(word_embedding_weight)
        # The last layer's ordinary pass would be thrown away (the EMD re-applies it), so stop one layer early.
        states, key_padding_mask, relative = self.deberta.hidden_states(
            input_ids, attention_mask, weight, num_layers=self.config.num_hidden_layers - 1)
        decoded_NH = enhanced_mask_decoder(self.deberta, states[-1], key_padding_mask, relative, masked_BL)
        return self.lm_predictions["lm_head"].transform(decoded_NH)

    def _table(self, word_embedding_weight: torch.Tensor | None) -> torch.Tensor:
        return self.deberta.embeddings.word_embeddings.weight if word_embedding_weight is None \
            else word_embedding_weight


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
