"""Post-LN layers, encoder and `DebertaV3Model`, with transformers' module and parameter names.

Shape legend: B batch, L length, HD hidden size.
A state dict of `DebertaV3Model` maps one-to-one onto transformers' `DebertaV2Model` (see debertav3.interop.hf).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .attention import AttentionImplementation, DisentangledSelfAttention, activation, attention_implementation, \
    relative_index
from .dropout import Dropout
from .embeddings import Embeddings


class SelfOutput(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual) (keys `attention.output.*` and `output.*`); see `finish`."""

    def __init__(self, in_size: int, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob, config.dropout_impl)

    def finish(self, projected: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dropout(projected) + residual), `projected` being `dense`'s output: the attention
        implementation applies `dense` (`AttentionImplementation`), the feed-forward block in its forward."""
        return self.LayerNorm(self.dropout(projected, residual))


class Attention(nn.Module):
    """Self-attention and its output block: LayerNorm(dropout(output.dense(self(...))) + residual).

    `impl` (the config's `attention_impl`) names the implementation that computes output.dense(self(...));
    `attention_implementation` resolves it for the device, and to the reference where it declines this module.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = SelfOutput(config.hidden_size, config)
        self.impl = config.attention_impl

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor,
                query_states: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                rel_idx: torch.Tensor | None = None, keys_values: tuple | None = None) -> torch.Tensor:
        """The attention block's output [B, Lq, HD]; arguments as `DisentangledSelfAttention.forward`, with
        `keys_values` from this module's `keys_values`. The residual is the queries' states."""
        implementation = self.implementation(hidden_states)
        projected = implementation(self, hidden_states, key_padding_mask, query_states, rel_embeddings, rel_idx,
                                   keys_values)
        return self.output.finish(projected, hidden_states if query_states is None else query_states)

    def keys_values(self, hidden_states: torch.Tensor) -> tuple:
        """This layer's keys and values of hidden_states [B, L, HD], in the form its implementation takes back in
        `forward`: the enhanced mask decoder's two passes share them (same layer, same hidden states)."""
        return self.implementation(hidden_states).keys_values(self, hidden_states)

    def implementation(self, x: torch.Tensor) -> AttentionImplementation:
        return attention_implementation(self, x.device.type)


class Intermediate(nn.Module):
    """act(dense(x)): the first feed-forward projection and its nonlinearity."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class FeedForwardOutput(SelfOutput):
    """LayerNorm(dropout(dense(h)) + residual), h the `Intermediate` output."""

    def __init__(self, config: ModelConfig):
        super().__init__(config.intermediate_size, config)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.finish(self.dense(h), residual)


class Layer(nn.Module):
    """One post-LN transformer block: attention block, then feed-forward block. With `query_states`, queries (and
    the residual) come from them while keys and values come from `hidden_states`: the form the enhanced mask
    decoder uses."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = FeedForwardOutput(config)

    def forward(self, hidden_states, key_padding_mask, query_states=None, rel_embeddings=None, rel_idx=None,
                keys_values=None):
        """`keys_values`: this layer's `attention.keys_values(hidden_states)`, for a caller that reuses them."""
        attended = self.attention(hidden_states, key_padding_mask, query_states, rel_embeddings, rel_idx,
                                  keys_values)
        return self.output(self.intermediate(attended), attended)


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

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      word_embedding_weight: torch.Tensor | None = None, num_layers: int | None = None):
        """All hidden states [embeddings, layer 1, ..., layer num_layers], the padding mask and relative context."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        key_padding_mask = attention_mask.bool()
        x = self.embeddings(input_ids, attention_mask, word_embedding_weight)
        relative = self.encoder.relative_context(input_ids.shape[1], input_ids.device)
        return self.encoder(x, key_padding_mask, num_layers, relative), key_padding_mask, relative

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                word_embedding_weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden_states(input_ids, attention_mask, word_embedding_weight)[0][-1]

    @classmethod
    def from_hf(cls, path: str, **kwargs) -> "DebertaV3Model":
        """Load a transformers DebertaV2 checkpoint directory (config.json plus safetensors or bin)."""
        from ..interop.hf import load_backbone
        return load_backbone(path, cls, **kwargs)

    def save_hf(self, path: str) -> None:
        """Write a directory that `transformers.AutoModel.from_pretrained` loads with no missing or unexpected keys."""
        from ..interop.hf import save_backbone
        save_backbone(self, path)
