"""Embeddings, post-LN layers, encoder and `DebertaV3Model`, with transformers' module and parameter names.

Shape legend: B batch, L length, HD hidden size.
A state dict of `DebertaV3Model` maps one-to-one onto transformers' `DebertaV2Model` (see debertav3.hf).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import DisentangledSelfAttention, activation, relative_index
from .dropout import Dropout, dropout_add
from .tied_table import TableGradient, lookup


class Embeddings(nn.Module):
    """LayerNorm(word_embeddings(ids) [+ absolute positions]) * mask, then dropout (DeBERTa-v2 embeddings).

    `word_embeddings` may be None when the owner supplies the table in forward (GDES: E_D = sg(E_G) + E_Delta).
    `position_embeddings` exists when the input is position-biased or when the enhanced mask decoder needs
    absolute positions (generator); only in the first case are they added here.

    `sparse_gradient` (set by an owner that knows the table receives a dense gradient later in backward, such as
    the tied MLM head's) makes the lookup's gradient the looked-up rows only, on CPU: autograd adds it into the
    dense one in place, where a dense lookup gradient would zero-fill and add a whole [V, HD] table.
    """

    def __init__(self, config: ModelConfig, own_word_embeddings: bool = True, absolute_positions: bool = False):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = (nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
                                if own_word_embeddings else None)
        self.position_biased_input = config.position_biased_input
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if config.position_biased_input or absolute_positions else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, config.hidden_size)
                                      if config.type_vocab_size > 0 else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.sparse_gradient = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                word_embedding_weight: torch.Tensor | None = None,
                table_gradient: TableGradient | None = None) -> torch.Tensor:
        """`table_gradient`: the tied MLM head's, when the lookup's gradient joins it (see `model.tied_table`)."""
        weight = self.word_embeddings.weight if word_embedding_weight is None else word_embedding_weight
        if table_gradient is not None:
            x = lookup(input_ids, weight, self.pad_token_id, table_gradient)
        else:
            # Not under torch.compile, whose backward takes dense gradients only.
            sparse = self.sparse_gradient and weight.device.type == "cpu" and not torch.compiler.is_compiling()
            x = F.embedding(input_ids, weight, padding_idx=self.pad_token_id, sparse=sparse)
        if self.position_biased_input:
            x = x + self.position_embeddings.weight[: input_ids.shape[1]]
        if self.token_type_embeddings is not None:  # token types are all zero in pretraining
            x = x + self.token_type_embeddings.weight[0]
        x = self.LayerNorm(x) * attention_mask.unsqueeze(-1).to(x.dtype)
        return self.dropout(x)


class SelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual) (keys `attention.output.*` and `output.*`); see `finish`."""

    def __init__(self, in_size: int, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def finish(self, projected: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dropout(projected) + residual), `projected` being `dense`'s output: the attention applies
        `dense` itself (`DisentangledSelfAttention.forward`), the feed-forward block in its forward."""
        return self.LayerNorm(dropout_add(projected, residual, self.dropout.p, self.training))


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = SelfOutput(config.hidden_size, config)


class Intermediate(nn.Module):
    """The first feed-forward projection; its activation is applied inside `FeedForwardOutput`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


class FeedForwardOutput(SelfOutput):
    """LayerNorm(dropout(dense(act(pre))) + residual): the activation is applied here, to `Intermediate`'s output."""

    def __init__(self, config: ModelConfig):
        super().__init__(config.intermediate_size, config)
        self.act = activation(config.hidden_act)

    def forward(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.finish(self.dense(self.act(pre)), residual)


class Layer(nn.Module):
    """One post-LN transformer block. With `query_states`, queries (and the residual) come from them while keys
    and values come from `hidden_states`: the form the enhanced mask decoder uses."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = FeedForwardOutput(config)

    def forward(self, hidden_states, key_padding_mask, query_states=None, rel_embeddings=None, rel_idx=None,
                keys_values=None):
        """`keys_values`: this layer's `attention.self.keys_values(hidden_states)`, for a caller that reuses them."""
        residual = hidden_states if query_states is None else query_states
        projected = self.attention.self(hidden_states, key_padding_mask, self.attention.output.dense, query_states,
                                        rel_embeddings, rel_idx, keys_values)
        attended = self.attention.output.finish(projected, residual)
        return self.output(self.intermediate.dense(attended), attended)


class Encoder(nn.Module):
    """The layer stack with the relative embedding table `rel_embeddings` [2 * span, HD] and its LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        if config.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * config.relative_span, config.hidden_size)
        if config.relative_attention and config.norm_rel_ebd == "layer_norm":
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def relative_context(self, length: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(normalised relative table rows the sequence can reach, index into them) for self-attention."""
        if not self.config.relative_attention:
            return None, None
        idx, first, rows = relative_index(length, length, self.config, device)
        # LayerNorm is row-wise, so normalising only the reachable rows equals slicing the normalised table.
        table = self.rel_embeddings.weight[first: first + rows]
        if hasattr(self, "LayerNorm"):
            table = self.LayerNorm(table)
        return table, idx

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor, num_layers: int | None = None,
                relative: tuple | None = None) -> list[torch.Tensor]:
        """Run the first `num_layers` layers (all by default); returns [input, output of layer 1, ...]."""
        rel_embeddings, rel_idx = relative or self.relative_context(hidden_states.shape[1], hidden_states.device)
        states = [hidden_states]
        for layer in self.layer[: num_layers]:
            states.append(layer(states[-1], key_padding_mask, rel_embeddings=rel_embeddings, rel_idx=rel_idx))
        return states


class DebertaV3Model(nn.Module):
    """The DeBERTa-v3 encoder: `DebertaV3Model(config)(input_ids, attention_mask)` -> last hidden states [B, L, HD].

    Numerically the same network as transformers' `DebertaV2Model` (tests/test_parity.py). Load and save
    Hugging Face directories with `from_hf` / `save_hf`.
    """

    def __init__(self, config: ModelConfig, own_word_embeddings: bool = True, absolute_positions: bool = False):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config, own_word_embeddings, absolute_positions)
        self.encoder = Encoder(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for weights, zeros for biases, the padding row zero (as transformers)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      word_embedding_weight: torch.Tensor | None = None, num_layers: int | None = None,
                      table_gradient: TableGradient | None = None):
        """All hidden states [embeddings, layer 1, ..., layer num_layers], the padding mask and relative context."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        key_padding_mask = attention_mask.bool()
        x = self.embeddings(input_ids, attention_mask, word_embedding_weight, table_gradient)
        relative = self.encoder.relative_context(input_ids.shape[1], input_ids.device)
        return self.encoder(x, key_padding_mask, num_layers, relative), key_padding_mask, relative

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                word_embedding_weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden_states(input_ids, attention_mask, word_embedding_weight)[0][-1]

    @classmethod
    def from_hf(cls, path: str, **kwargs) -> "DebertaV3Model":
        """Load a transformers DebertaV2 checkpoint directory (config.json plus safetensors or bin)."""
        from ..hf import load_backbone
        return load_backbone(path, cls, **kwargs)

    def save_hf(self, path: str) -> None:
        """Write a directory that `transformers.AutoModel.from_pretrained` loads with no missing or unexpected keys."""
        from ..hf import save_backbone
        save_backbone(self, path)
