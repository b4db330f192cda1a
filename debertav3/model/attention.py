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
function is odd, so -bucket(j - i) = bucket(i - j)). Scores and softmax are computed in fp32 at least, as the
official code does (fp64 inputs stay fp64). `DisentangledSelfAttention.forward` is this computation in plain
PyTorch, the reference.

Which implementation runs a layer's attention is the layer's `attention_impl` (debertav3/model/implementations.py):
every implementation is an `AttentionImplementation` and returns the same projected output, `output.dense(context)`.
The reference is registered here as "eager"; fast paths register from debertav3/ops.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FallbackWarning
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


def relative_index(query_len: int, key_len: int, config: ModelConfig, device=None) -> tuple[torch.Tensor, int, int]:
    """Index of each (query i, key j) pair into the relative table, restricted to the rows it can reach.

    Returns (idx [Lq, Lk] long, first_row, num_rows): idx counts from `first_row`, so the caller slices the table
    to rows [first_row, first_row + num_rows) before projecting it. For short sequences this avoids projecting and
    multiplying against rows no pair can use (2L-1 rows instead of 512 at L < 128).
    """
    max_position = config.max_relative_positions if config.max_relative_positions > 0 \
        else config.max_position_embeddings
    idx, first, rows = _relative_index_cpu(query_len, key_len, config.position_buckets, max_position,
                                           config.relative_span)
    return idx.to(device, non_blocking=True), first, rows


@functools.lru_cache(maxsize=32)
def _relative_index_cpu(query_len: int, key_len: int, buckets: int, max_position: int, span: int):
    """The index for given lengths, built once on the CPU: no device sync in the forward pass, and reused."""
    rel = torch.arange(query_len)[:, None] - torch.arange(key_len)[None, :]
    if buckets > 0:
        rel = log_bucket_position(rel, buckets, max_position)
    idx = (rel + span).clamp(0, 2 * span - 1)
    first, last = int(idx.min()), int(idx.max())  # the bucket map is monotone: reachable rows are contiguous
    return idx - first, first, last - first + 1


class DisentangledSelfAttention(nn.Module):
    """Self-attention over content and relative position (keys `attention.self.*` as in transformers)."""

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
        self.dropout = Dropout(config.attention_probs_dropout_prob, config.dropout_impl)
        # Each position term adds a product of the same variance to the score, so the scale grows with them.
        self.scale = 1.0 / math.sqrt(self.head_size * (1 + len(self.pos_terms)))

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor,
                query_states: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                rel_idx: torch.Tensor | None = None, keys_values: tuple | None = None) -> torch.Tensor:
        """The context [B, Lq, HD] (heads merged, before the output projection), as the module docstring writes it.

        hidden_states [B, Lk, HD] give keys and values (or `keys_values` = `self.keys_values(hidden_states)`, when
        the caller reuses them); query_states [B, Lq, HD] (default: hidden_states) give queries.
        key_padding_mask [B, Lk] bool, True at real tokens. rel_embeddings [R, HD] (normalised and sliced) and
        rel_idx [Lq, Lk] (or per sequence [B, Lq, Lk]) indexing its rows.
        """
        queries_from = hidden_states if query_states is None else query_states
        keys, values = self.keys_values(hidden_states) if keys_values is None else keys_values
        q, k, v = (self.split_heads(t) for t in (self.query_proj(queries_from), keys, values))  # [B, H, L, D]
        B, H, Lq, Lk = q.shape[0], self.num_heads, q.shape[2], k.shape[2]
        acc = torch.promote_types(q.dtype, torch.float32)  # the scores' dtype: fp32 at least
        scores = q.to(acc) @ k.to(acc).transpose(-1, -2)  # c2c [B, H, Lq, Lk]
        pos_key, pos_query = self.relative_tables(rel_embeddings)
        index = None if rel_idx is None else rel_idx.unsqueeze(-3)  # [1 or B, 1, Lq, Lk]
        if pos_key is not None:  # c2p(i, j): row i of q . pos_key^T [B, H, Lq, R] at column idx(i, j)
            c2p_BHQR = q.to(acc) @ self.split_heads(pos_key).to(acc).transpose(-1, -2)
            scores = scores + torch.gather(c2p_BHQR, -1, index.expand(B, H, Lq, Lk))
        if pos_query is not None:  # p2c(i, j): row j of k . pos_query^T [B, H, Lk, R] at column idx(i, j)
            p2c_BHKR = k.to(acc) @ self.split_heads(pos_query).to(acc).transpose(-1, -2)
            p2c_BHKQ = torch.gather(p2c_BHKR, -1, index.transpose(-1, -2).expand(B, H, Lk, Lq))
            scores = scores + p2c_BHKQ.transpose(-1, -2)
        scores = (scores * self.scale).masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = probs.to(v.dtype) @ v
        return context.transpose(1, 2).flatten(-2)

    def keys_values(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(key_proj(hidden_states), value_proj(hidden_states)), each [B, L, HD]."""
        return self.key_proj(hidden_states), self.value_proj(hidden_states)

    def relative_tables(self, rel_embeddings: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pos_key, pos_query) [R, HD]: the relative table (after dropout) through the key and query projections
        (or their own with share_att_key=False); each None when its term is off."""
        if not self.pos_terms:
            return None, None
        rel = self.pos_dropout(rel_embeddings)
        pos_key = pos_query = None
        if "c2p" in self.pos_terms:
            pos_key = (self.key_proj if self.share_att_key else self.pos_key_proj)(rel)
        if "p2c" in self.pos_terms:
            pos_query = (self.query_proj if self.share_att_key else self.pos_query_proj)(rel)
        return pos_key, pos_query

    def scaled_relative_tables(self, rel_embeddings: torch.Tensor | None):
        """`relative_tables` times the score scale: fast paths fold the scale into these small [R, HD] tables
        instead of applying it to [B, H, Lq, Lk] terms."""
        return tuple(None if t is None else t * self.scale for t in self.relative_tables(rel_embeddings))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, HD] -> [..., H, L, D] (a view): head h is columns hD..(h+1)D."""
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(-3, -2)


class AttentionImplementation:
    """What every `attention_impl` implements; this base class is the reference, registered as "eager".

    `attention` is a layer's `Attention` module (backbone.py): `attention.self` the `DisentangledSelfAttention`
    with its projections, `attention.output.dense` the output projection. An implementation returns
    `attention.output.dense(context)` [B, Lq, HD], the projected output, so that one which keeps the heads apart
    can apply the projection to them unmerged. `keys_values` is the implementation's own form of a layer's keys
    and values, which `__call__` accepts back (the enhanced mask decoder computes them once for two passes).
    `declines` says why the implementation cannot run this module as it is (then the reference runs instead).
    """

    name = implementations.REFERENCE

    def declines(self, attention: nn.Module) -> str | None:
        return None

    def keys_values(self, attention: nn.Module, hidden_states: torch.Tensor) -> tuple:
        return attention.self.keys_values(hidden_states)

    def __call__(self, attention: nn.Module, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor,
                 query_states: torch.Tensor | None, rel_embeddings: torch.Tensor | None, rel_idx: torch.Tensor | None,
                 keys_values: tuple | None) -> torch.Tensor:
        context = attention.self(hidden_states, key_padding_mask, query_states, rel_embeddings, rel_idx, keys_values)
        return attention.output.dense(context)


REFERENCE_ATTENTION = implementations.register("attention", implementations.REFERENCE, AttentionImplementation())
_declines_warned: set[str] = set()


def attention_implementation(attention: nn.Module, device_type: str) -> AttentionImplementation:
    """The implementation that runs `attention` (an `Attention` with an `impl` name) on `device_type`: the
    registered one, or the reference where that one declines, with a warning the first time for each reason."""
    chosen = implementations.resolve("attention", attention.impl, device_type)
    reason = chosen.declines(attention)
    if reason is None:
        return chosen
    message = f"attention_impl {chosen.name!r} cannot run this layer ({reason}); the eager reference runs instead"
    if message not in _declines_warned:
        _declines_warned.add(message)
        warnings.warn(message, FallbackWarning, stacklevel=3)
    return REFERENCE_ATTENTION


def activation(name: str):
    """The feed-forward nonlinearity by transformers' name (gelu is the exact erf form, as in HF's ACT2FN)."""
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh,
            "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[name]
