"""Pretraining heads and the two pretraining networks built from them.

- `LMPredictionHead`: the tied MLM head, transformers' `legacy=False` layout (keys `lm_predictions.lm_head.*`):
  logits = LayerNorm(act(dense(h))) @ E^T + bias, E the word embedding table passed in explicitly; dense maps
  hidden_size to the embedding width (the official `BertLMPredictionHead`; transformers' legacy head).
- `enhanced_mask_decoder`: DeBERTa's EMD (paper section 3.3, official `EnhancedMaskDecoder`): queries
  I = absolute position embeddings + H, H the second-to-last hidden states; the last layer is applied twice
  (shared weights) with keys and values H. Computed only for the query rows asked for (the masked positions), or
  for every position in order, causal or not (the auto-regressive model, DeBERTa paper appendix A.4).
- `RTDHead`: the official replaced-token head (keys `mask_predictions.*`):
  logits = classifier(act(dense(LayerNorm(h + h_[CLS])))), the final [CLS] state added to every token.

Shape legend: B batch, L length, HD hidden size, M positions per sequence, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .attention import activation
from .backbone import DebertaV3Model, EncoderOutput


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


def enhanced_mask_decoder(backbone: DebertaV3Model, encoded: EncoderOutput,
                          positions_BM: torch.Tensor | None) -> torch.Tensor:
    """EMD at the given positions: the last layer applied twice to queries I = P + H, keys and values H.

    Each query row only attends and passes through the feed-forward on its own, so computing the rows at the
    masked positions (15%) gives exactly those rows of the full EMD at a fraction of its cost. `positions_BM` holds
    M positions per sequence (a fixed number: static shapes), or is None for every position in order (M = L), the
    only form a causal `encoded` takes (query i attends to keys j <= i); `encoded` is the backbone's output up to
    the second-to-last layer. Returns [B, M, HD], row m of sequence b the EMD's output at position positions_BM[b, m].
    """
    hidden_BLH = encoded.states[-1]
    rel_embeddings, rel_idx = encoded.relative
    absolute = backbone.embeddings.position_embeddings.weight
    if positions_BM is None:
        query, query_idx = absolute[: hidden_BLH.shape[1]] + hidden_BLH, rel_idx
    else:
        hidden_BMH = torch.gather(hidden_BLH, 1, positions_BM.unsqueeze(-1).expand(-1, -1, hidden_BLH.shape[-1]))
        # F.embedding, not weight[positions_BM]: indexing's backward accumulates repeated positions with parallel
        # atomic adds on CPU, in an order that changes from run to run; embedding's backward is deterministic.
        query = nn.functional.embedding(positions_BM, absolute) + hidden_BMH
        query_idx = rel_idx[positions_BM] if rel_idx is not None else None  # [B, M, L]
    last = backbone.encoder.layer[-1]
    keys_values = last.attention.self.keys_values(hidden_BLH)  # both passes attend to the same hidden states
    for _ in range(2):
        query = last(hidden_BLH, encoded.key_padding_mask, query, rel_embeddings, query_idx, keys_values,
                     encoded.causal)
    return query


class MaskedLMModel(nn.Module):
    """Backbone + EMD + tied MLM head: the generator, and the auto-regressive model (keys `deberta.*`,
    `lm_predictions.lm_head.*`).

    The backbone owns an absolute position table (`deberta.embeddings.position_embeddings`) that only the EMD
    uses; transformers ignores that key on load, so an exported generator runs there without the EMD. With
    `enhanced_mask_decoder=False` the head reads the last layer's states directly (DeBERTa-AP and the
    absolute-position baseline of the paper's Table 10; transformers' DebertaV2ForMaskedLM computes the same).
    """

    def __init__(self, config: ModelConfig, own_word_embeddings: bool = True, enhanced_mask_decoder: bool = True):
        super().__init__()
        self.config = config
        self.uses_emd = enhanced_mask_decoder
        self.deberta = DebertaV3Model(config, own_word_embeddings, absolute_positions=enhanced_mask_decoder)
        self.lm_predictions = nn.ModuleDict({"lm_head": LMPredictionHead(config)})
        self.lm_predictions.apply(self.deberta._init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions_BM: torch.Tensor | None,
                word_embedding_weight: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Logits [B, M, V] at `positions_BM` [B, M] (None: at every position, [B, L, V]), and nowhere else;
        `word_embedding_weight` the tied table when the owner supplies it (default: the backbone's own); `causal`:
        every layer, the EMD's too, attends to earlier positions only (then `positions_BM` must be None)."""
        weight = self._table(word_embedding_weight)
        return self.head_states(input_ids, attention_mask, positions_BM, weight, causal) @ weight.t() \
            + self.lm_predictions["lm_head"].bias

    def head_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions_BM: torch.Tensor | None,
                    word_embedding_weight: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """The MLM head's transformed states [B, M, embedding width] at `positions_BM` (None: every position):
        logits = states E^T + b."""
        weight = self._table(word_embedding_weight)
        if not self.uses_emd:
            hidden_BLH = self.deberta(input_ids, attention_mask, weight, causal)
            if positions_BM is not None:
                rows_BMH = positions_BM.unsqueeze(-1).expand(-1, -1, hidden_BLH.shape[-1])
                hidden_BLH = torch.gather(hidden_BLH, 1, rows_BMH)
            return self.lm_predictions["lm_head"].transform(hidden_BLH)
        # The last layer's ordinary pass would be thrown away (the EMD re-applies it), so stop one layer early.
        encoded = self.deberta.encode(input_ids, attention_mask, weight, num_layers=self.config.num_hidden_layers - 1,
                                      causal=causal)
        return self.lm_predictions["lm_head"].transform(enhanced_mask_decoder(self.deberta, encoded, positions_BM))

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
