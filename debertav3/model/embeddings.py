"""The input embeddings of DeBERTa-v2/v3 (transformers' `DebertaV2Embeddings`, same module and parameter names).

Shape legend: B batch, L length, HD hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .dropout import Dropout


class Embeddings(nn.Module):
    """LayerNorm(embed_proj(word_embeddings(ids) [+ absolute positions])) * mask, then dropout (DeBERTa-v2
    embeddings; `embed_proj` only when `config.embedding_size` differs from hidden_size).

    `word_embeddings` may be None when the owner supplies the table in forward (GDES: E_D = sg(E_G) + E_Delta).
    `position_embeddings` exists when the input is position-biased or when the enhanced mask decoder needs
    absolute positions (generator); only in the first case are they added here.
    """

    def __init__(self, config: ModelConfig, own_word_embeddings: bool = True, absolute_positions: bool = False):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        width = config.embedding_width
        self.word_embeddings = (nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
                                if own_word_embeddings else None)
        self.position_biased_input = config.position_biased_input
        # hidden_size wide either way: the EMD adds them to hidden states, and position-biased input (added to the
        # words) is only allowed when the words are hidden_size wide too (ModelConfig.validate).
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if config.position_biased_input or absolute_positions else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, width)
                                      if config.type_vocab_size > 0 else None)
        self.embed_proj = nn.Linear(width, config.hidden_size, bias=False) if width != config.hidden_size else None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob, config.dropout_impl)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                word_embedding_weight: torch.Tensor | None = None) -> torch.Tensor:
        """`word_embedding_weight`: the table to look the ids up in, when the owner supplies it (default: own)."""
        weight = self.word_embeddings.weight if word_embedding_weight is None else word_embedding_weight
        x = F.embedding(input_ids, weight, padding_idx=self.pad_token_id)  # the padding row gets no gradient
        if self.position_biased_input:
            x = x + self.position_embeddings.weight[: input_ids.shape[1]]
        if self.token_type_embeddings is not None:  # token types are all zero in pretraining
            x = x + self.token_type_embeddings.weight[0]
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = self.LayerNorm(x) * attention_mask.unsqueeze(-1).to(x.dtype)
        return self.dropout(x)
