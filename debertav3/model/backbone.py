"""Post-LN layers, encoder and `DebertaV3Model`, with transformers' module and parameter names.

Shape legend: B batch, L length, HD hidden size.
A state dict of `DebertaV3Model` maps one-to-one onto transformers' `DebertaV2Model` (see debertav3.interop.hf).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .attention import DisentangledSelfAttention, RelativePositions, activation
from .config import ModelConfig
from .dropout import Dropout
from .embeddings import Embeddings


class SelfOutput(nn.Module):
    """LayerNorm(dropout(dense(h)) + residual) (keys `attention.output.*` and `output.*`)."""

    def __init__(self, in_size: int, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob, config.dropout_impl)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    """Self-attention and its output block: LayerNorm(dropout(output.dense(self(...))) + residual), the residual
    being the queries' states."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = SelfOutput(config.hidden_size, config)

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor,
                query_states: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                rel_idx: torch.Tensor | None = None, keys_values: tuple | None = None,
                causal: bool = False) -> torch.Tensor:
        """[B, Lq, HD]; arguments as `DisentangledSelfAttention.forward`."""
        context = self.self(hidden_states, key_padding_mask, query_states, rel_embeddings, rel_idx, keys_values,
                            causal)
        return self.output(context, hidden_states if query_states is None else query_states)


class Intermediate(nn.Module):
    """act(dense(x)): the first feed-forward projection and its nonlinearity."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    """One post-LN transformer block: attention block, then feed-forward block. With `query_states`, queries (and
    the residual) come from them while keys and values come from `hidden_states`: the form the enhanced mask
    decoder uses."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = SelfOutput(config.intermediate_size, config)

    def forward(self, hidden_states, key_padding_mask, query_states=None, rel_embeddings=None, rel_idx=None,
                keys_values=None, causal=False):
        """`keys_values`: this layer's `attention.self.keys_values(hidden_states)`, for a caller that reuses them;
        `causal`: position i attends to positions <= i only."""
        attended = self.attention(hidden_states, key_padding_mask, query_states, rel_embeddings, rel_idx,
                                  keys_values, causal)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    """The layer stack with the relative embedding table `rel_embeddings` [2 * span, HD] and its LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        if config.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * config.relative_span, config.hidden_size)
            self.relative_positions = RelativePositions(config)
        if config.relative_attention and config.norm_rel_ebd == "layer_norm":
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def relative_context(self, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(normalised relative table rows the sequence can reach, index into them) for self-attention."""
        if not self.config.relative_attention:
            return None, None
        idx, first, rows = self.relative_positions.index(length, length)
        # LayerNorm is row-wise, so normalising only the reachable rows equals slicing the normalised table.
        table = self.rel_embeddings.weight[first: first + rows]
        if hasattr(self, "LayerNorm"):
            table = self.LayerNorm(table)
        return table, idx

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor, relative: tuple,
                num_layers: int | None = None, causal: bool = False) -> list[torch.Tensor]:
        """Run the first `num_layers` layers (all by default), causal or not; returns [input, output of layer 1,
        ...]."""
        rel_embeddings, rel_idx = relative
        states = [hidden_states]
        for layer in self.layer[: num_layers]:
            states.append(layer(states[-1], key_padding_mask, rel_embeddings=rel_embeddings, rel_idx=rel_idx,
                                causal=causal))
        return states


class EncoderOutput(NamedTuple):
    """What the layers of `DebertaV3Model.encode` produce and what a decoder on top of them reuses."""

    states: list[torch.Tensor]  # [embeddings, layer 1, ..., layer n], each [B, L, HD]
    key_padding_mask: torch.Tensor  # [B, L] bool, True at real tokens
    relative: tuple  # (normalised relative table rows [R, HD], index [L, L] into them), or (None, None)
    causal: bool  # whether each position attended to the positions up to it only


class DebertaV3Model(nn.Module):
    """The DeBERTa-v3 encoder: `DebertaV3Model(config)(input_ids, attention_mask)` -> last hidden states [B, L, HD].

    Numerically the same network as transformers' `DebertaV2Model` (tests/test_parity.py). Load and save
    Hugging Face directories with `debertav3.interop.hf.load_backbone` / `save_backbone`.
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
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               word_embedding_weight: torch.Tensor | None = None, num_layers: int | None = None,
               causal: bool = False) -> EncoderOutput:
        """The embeddings and the first `num_layers` layers (all by default), with what a decoder reuses;
        `causal`: every layer attends auto-regressively (DeBERTa paper appendix A.4)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        key_padding_mask = attention_mask.bool()
        x = self.embeddings(input_ids, attention_mask, word_embedding_weight)
        relative = self.encoder.relative_context(input_ids.shape[1])
        states = self.encoder(x, key_padding_mask, relative, num_layers, causal)
        return EncoderOutput(states, key_padding_mask, relative, causal)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                word_embedding_weight: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """The last hidden states [B, L, HD]; `word_embedding_weight` the table to look ids up in, when the owner
        supplies it (GDES: E_D = sg(E_G) + E_Delta); `causal` as in `encode`."""
        return self.encode(input_ids, attention_mask, word_embedding_weight, causal=causal).states[-1]
