"""Disentangled self-attention (DeBERTa paper sec. 3.1, eq. 2-4; the DeBERTa-v2 code path) and relative positions.

Shape legend: B batch, H heads, Lq/Lk query/key length, D head size, HD hidden size, R rows of the (sliced)
relative table.

DeBERTa writes each attention score as content and relative position in both directions (eq. 2) and keeps three of
the four products (eq. 4), with relative distances clipped to a span k (eq. 3) and, in v2/v3, log-bucketed:

    scores(i, j) = (c2c(i, j) + c2p(i, j) + p2c(i, j)) * scale                      scale = 1 / sqrt(D * (1 + terms))
    c2c(i, j) = q_i . k_j                       q = query_proj(x), k = key_proj(x)
    c2p(i, j) = q_i . pos_key[idx(i, j)]        pos_key   = key_proj(R)   (or pos_key_proj with share_att_key=False)
    p2c(i, j) = k_j . pos_query[idx(i, j)]      pos_query = query_proj(R) (or pos_query_proj)
    context   = dropout(softmax_j(scores, padded keys excluded)) v,    v = value_proj(x)

where idx(i, j) = clamp(bucket(i - j) + k, 0, 2k - 1) and "terms" counts the position terms in use (eq. 4's
sqrt(3d) with both). p2c uses the same bucket as c2p, as the official code and transformers do (the bucket
function is odd, so -bucket(j - i) = bucket(i - j)). Causal attention (DeBERTa paper appendix A.4, after UniLM)
sets the whole score to -inf for keys j > i before the softmax, so no term, c2p and p2c included, carries a later
token's content to position i.

`DisentangledSelfAttention` owns the projections and calls its core, `eager_attention` here (the reference: scores
and softmax in fp32 at least, as the official code computes them) or the fast path `attention_impl` names
(model/implementations.py), resolved once when the module is built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import implementations
from .config import ModelConfig
from .dropout import Dropout


def log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Map relative distances r to buckets: |r| <= mid keeps r, larger |r| is compressed logarithmically.

    bucket(r) = sign(r) * (mid + ceil(log(|r| / mid) / log((max_position - 1) / mid) * (mid - 1))), mid = bucket_size/2.
    """
    mid = bucket_size // 2
    abs_pos = relative_pos.abs()
    # Clamp below so log() only ever sees |r| >= mid; those entries are discarded by the where() anyway.
    safe = abs_pos.clamp(min=mid).to(torch.float64)
    log_pos = torch.ceil(torch.log(safe / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative_pos, (log_pos.to(relative_pos.dtype) * relative_pos.sign()))


class RelativePositions(nn.Module):
    """idx(i, j) for every pair of positions up to `max_position_embeddings`, built once with the model.

    `index(Lq, Lk)` returns (idx [Lq, Lk] counted from `first_row`, first_row, num_rows): the rows of the relative
    table that pairs of these lengths reach are contiguous (the bucket map is monotone), so the caller projects only
    those (2L - 1 rows instead of 512 at L < 128). The row ranges are Python ints computed here, at build time, so
    a forward pass needs no host sync and traces under torch.compile with static shapes.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        length = config.max_position_embeddings
        max_position = config.max_relative_positions if config.max_relative_positions > 0 else length
        span = config.relative_span
        rel = torch.arange(length)[:, None] - torch.arange(length)[None, :]
        if config.position_buckets > 0:
            rel = log_bucket_position(rel, config.position_buckets, max_position)
        table = (rel + span).clamp(0, 2 * span - 1)
        self.register_buffer("table", table, persistent=False)
        # idx(i, j) depends on i - j alone: its least value at (0, Lk - 1), its greatest at (Lq - 1, 0).
        self.least = table[0].tolist()  # least[Lk - 1]
        self.greatest = table[:, 0].tolist()  # greatest[Lq - 1]

    def index(self, query_len: int, key_len: int) -> tuple[torch.Tensor, int, int]:
        if max(query_len, key_len) > len(self.least):
            raise ValueError(f"sequence length {max(query_len, key_len)} exceeds max_position_embeddings "
                             f"({len(self.least)}); use shorter sequences or a model with more positions")
        first, last = self.least[key_len - 1], self.greatest[query_len - 1]
        return self.table[:query_len, :key_len] - first, first, last - first + 1


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos_key: torch.Tensor | None,
                    pos_query: torch.Tensor | None, rel_idx: torch.Tensor | None, key_padding_mask: torch.Tensor,
                    scale: float, dropout_p: float, causal: bool = False) -> torch.Tensor:
    """The attention core as the module docstring writes it: context [B, H, Lq, D].

    q [B, H, Lq, D], k and v [B, H, Lk, D]; pos_key and pos_query [H, R, D] (the projected relative table, each
    None when its term is off); rel_idx [Lq, Lk] or per sequence [B, Lq, Lk] indexing R; key_padding_mask [B, Lk]
    bool, True at real tokens; dropout_p the probabilities' dropout (0 in evaluation), which each implementation
    draws itself (here `F.dropout`); causal: query row i is position i and attends only to keys j <= i (needs
    Lq == Lk). This signature is the contract every `attention_impl` implements.
    """
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)  # the scores' dtype: fp32 at least
    scores = q.to(acc) @ k.to(acc).transpose(-1, -2)  # c2c [B, H, Lq, Lk]
    index = None if rel_idx is None else rel_idx.unsqueeze(-3)  # [1 or B, 1, Lq, Lk]
    if pos_key is not None:  # c2p(i, j): row i of q . pos_key^T [B, H, Lq, R] at column idx(i, j)
        c2p_BHQR = q.to(acc) @ pos_key.to(acc).transpose(-1, -2)
        scores = scores + torch.gather(c2p_BHQR, -1, index.expand(B, H, Lq, Lk))
    if pos_query is not None:  # p2c(i, j): row j of k . pos_query^T [B, H, Lk, R] at column idx(i, j)
        p2c_BHKR = k.to(acc) @ pos_query.to(acc).transpose(-1, -2)
        p2c_BHKQ = torch.gather(p2c_BHKR, -1, index.transpose(-1, -2).expand(B, H, Lk, Lq))
        scores = scores + p2c_BHKQ.transpose(-1, -2)
    excluded = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, Lk]
    if causal:
        excluded = excluded | causal_exclusion(Lq, Lk, q.device)
    scores = (scores * scale).masked_fill(excluded, torch.finfo(scores.dtype).min)
    probs = F.dropout(torch.softmax(scores, dim=-1), dropout_p, training=dropout_p > 0)
    return probs.to(v.dtype) @ v


def causal_exclusion(query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    """[Lq, Lk] bool, True where key j comes after query i (the upper triangle the causal mask sets to -inf)."""
    if query_len != key_len:
        raise ValueError(f"causal attention needs a query for every key (query row i is position i), got "
                         f"{query_len} queries for {key_len} keys")
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(1)


implementations.register("attention", implementations.REFERENCE, eager_attention)


class DisentangledSelfAttention(nn.Module):
    """Projections and the attention core (keys `attention.self.*` as in transformers); returns the context with
    the heads merged, before the output dense."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_size = config.head_size
        self.query_proj = nn.Linear(hidden, hidden)
        self.key_proj = nn.Linear(hidden, hidden)
        self.value_proj = nn.Linear(hidden, hidden)
        self.relative_attention = config.relative_attention
        self.pos_terms = [t for t in ("c2p", "p2c") if t in config.pos_att_type] if self.relative_attention else []
        self.share_att_key = config.share_att_key
        if self.relative_attention and not self.share_att_key:
            if "c2p" in self.pos_terms:
                self.pos_key_proj = nn.Linear(hidden, hidden)
            if "p2c" in self.pos_terms:
                self.pos_query_proj = nn.Linear(hidden, hidden)
        self.pos_dropout = Dropout(config.hidden_dropout_prob, config.dropout_impl)
        self.dropout_prob = config.attention_probs_dropout_prob
        # Each position term adds a product of the same variance to the score, so the scale grows with them.
        self.scale = 1.0 / math.sqrt(self.head_size * (1 + len(self.pos_terms)))
        self.impl = implementations.resolve_name("attention", config.attention_impl,
                                                 implementations.default_device_type())
        self.core = implementations.resolve("attention", self.impl)

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor,
                query_states: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                rel_idx: torch.Tensor | None = None, keys_values: tuple | None = None,
                causal: bool = False) -> torch.Tensor:
        """The context [B, Lq, HD] (heads merged, before the output projection).

        hidden_states [B, Lk, HD] give keys and values (or `keys_values` = `self.keys_values(hidden_states)`, when
        the caller reuses them); query_states [B, Lq, HD] (default: hidden_states) give queries.
        key_padding_mask [B, Lk] bool, True at real tokens. rel_embeddings [R, HD] (normalised and sliced) and
        rel_idx [Lq, Lk] (or per sequence [B, Lq, Lk]) indexing its rows. causal: query i attends to keys j <= i
        only (auto-regressive use; Lq == Lk).
        """
        queries_from = hidden_states if query_states is None else query_states
        keys, values = self.keys_values(hidden_states) if keys_values is None else keys_values
        q, k, v = (self.split_heads(t) for t in (self.query_proj(queries_from), keys, values))  # [B, H, L, D]
        pos_key, pos_query = self.relative_tables(rel_embeddings)
        context = self.core(q, k, v, pos_key, pos_query, rel_idx, key_padding_mask, self.scale,
                            self.dropout_prob if self.training else 0.0, causal)
        return context.transpose(1, 2).flatten(-2)

    def keys_values(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(key_proj(hidden_states), value_proj(hidden_states)), each [B, L, HD]."""
        return self.key_proj(hidden_states), self.value_proj(hidden_states)

    def relative_tables(self, rel_embeddings: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pos_key, pos_query) [H, R, D]: the relative table (after dropout) through the key and query projections
        (or their own with share_att_key=False); each None when its term is off."""
        if not self.pos_terms:
            return None, None
        rel = self.pos_dropout(rel_embeddings)
        pos_key = pos_query = None
        if "c2p" in self.pos_terms:
            pos_key = self.split_heads((self.key_proj if self.share_att_key else self.pos_key_proj)(rel))
        if "p2c" in self.pos_terms:
            pos_query = self.split_heads((self.query_proj if self.share_att_key else self.pos_query_proj)(rel))
        return pos_key, pos_query

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, HD] -> [..., H, L, D] (a view): head h is columns hD..(h+1)D."""
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(-3, -2)


def activation(name: str):
    """The feed-forward nonlinearity by transformers' name (gelu is the exact erf form, as in HF's ACT2FN)."""
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh,
            "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[name]
