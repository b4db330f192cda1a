"""Relative positions (log buckets) and disentangled self-attention (DeBERTa paper eq. 2-4, DeBERTa-v2 code path).

Shape legend: B batch, H heads, Lq/Lk query/key length, D head size, R rows of the (sliced) relative table.

Scores = (Q K^T + c2p + p2c) / sqrt(D * (1 + number of position terms)), with
    c2p(i, j) = Q_i . pos_key[idx(i, j)]      pos_key   = key_proj(R)   (or pos_key_proj with share_att_key=False)
    p2c(i, j) = K_j . pos_query[idx(i, j)]    pos_query = query_proj(R) (or pos_query_proj)
where idx(i, j) = clamp(bucket(i - j) + span, 0, 2 * span - 1). p2c uses the same bucket as c2p, as the official
code and transformers do (the bucket function is odd, so -bucket(j - i) = bucket(i - j)).
Both terms are matrix products against the relative table followed by a gather, never [B, H, L, L, D] tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


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
    span = config.relative_span
    rel = torch.arange(query_len, device=device)[:, None] - torch.arange(key_len, device=device)[None, :]
    if config.position_buckets > 0:
        max_position = config.max_relative_positions if config.max_relative_positions > 0 \
            else config.max_position_embeddings
        rel = log_bucket_position(rel, config.position_buckets, max_position)
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
        self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dropout_prob = config.attention_probs_dropout_prob
        # 1 / sqrt(D * (1 + number of position terms)): each term adds variance, so the scale grows with them.
        self.scale = 1.0 / math.sqrt(self.head_size * (1 + len(self.pos_terms)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, H*D] -> [..., H, L, D]."""
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(-3, -2)

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor,
                query_states: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                rel_idx: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states [B, Lk, HD] give keys and values; query_states [B, Lq, HD] (default: hidden_states).

        key_padding_mask [B, Lk] bool, True at real tokens. rel_embeddings [R, HD] (already normalised and sliced),
        rel_idx [Lq, Lk] (or per sequence [B, 1, Lq, Lk]) indexes its rows. Returns the context [B, Lq, HD]
        before the output projection.
        """
        if query_states is None:
            query_states = hidden_states
        q_BQX, k_BKX = self.query_proj(query_states), self.key_proj(hidden_states)
        # The position terms enter as an additive bias of fused attention (PyTorch SDPA), which computes
        # softmax(q k^T * scale + bias) with fp32 accumulation and, on GPU, never stores the [B, H, Lq, Lk]
        # probabilities. The bias is summed in fp32 and rounded once to the model dtype (official code: fp32).
        keep_BK = key_padding_mask[:, None, None, :]
        if self.pos_terms:
            bias = self._position_bias(q_BQX, k_BKX, rel_embeddings, rel_idx)
            bias = bias.masked_fill(~keep_BK, torch.finfo(bias.dtype).min).to(q_BQX.dtype)
        else:
            bias = keep_BK
        context = F.scaled_dot_product_attention(
            self._heads(q_BQX), self._heads(k_BKX), self._heads(self.value_proj(hidden_states)), attn_mask=bias,
            scale=self.scale, dropout_p=self.dropout_prob if self.training else 0.0)
        return context.transpose(-3, -2).flatten(-2)

    def _per_head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H*D] -> [H, B*L, D] (a view): one large product per head instead of B*H small ones."""
        return x.reshape(-1, self.num_heads, self.head_size).transpose(0, 1)

    def _against_table(self, x_BLX: torch.Tensor, table_RX: torch.Tensor) -> torch.Tensor:
        """x . table^T per head, [B, H, L, R]; table already scaled."""
        B, L, _ = x_BLX.shape
        out_HNR = torch.bmm(self._per_head(x_BLX), self._per_head(table_RX).transpose(1, 2))
        return out_HNR.view(self.num_heads, B, L, -1).transpose(0, 1)

    def _position_bias(self, q_BQX: torch.Tensor, k_BKX: torch.Tensor, rel_embeddings: torch.Tensor,
                       rel_idx: torch.Tensor) -> torch.Tensor:
        """(c2p + p2c) * scale in fp32 (eq. 4): the scale is folded into the small projected position tables."""
        rel = self.pos_dropout(rel_embeddings)
        B, H, Lq, Lk = q_BQX.shape[0], self.num_heads, q_BQX.shape[1], k_BKX.shape[1]
        out = 0
        if "c2p" in self.pos_terms:
            proj = self.key_proj if self.share_att_key else self.pos_key_proj
            c2p_BHQR = self._against_table(q_BQX, proj(rel) * self.scale)
            out = out + torch.gather(c2p_BHQR, -1, rel_idx.expand(B, H, Lq, Lk)).float()
        if "p2c" in self.pos_terms:
            proj = self.query_proj if self.share_att_key else self.pos_query_proj
            p2c_BHKR = self._against_table(k_BKX, proj(rel) * self.scale)
            # p2c(i, j) = P[j, idx(i, j)]: gather row j with idx transposed, then transpose back to [i, j].
            p2c_BHKQ = torch.gather(p2c_BHKR, -1, rel_idx.transpose(-1, -2).expand(B, H, Lk, Lq))
            out = out + p2c_BHKQ.transpose(-1, -2).float()
        return out


def activation(name: str):
    """The feed-forward nonlinearity by transformers' name (gelu is the exact erf form, as in HF's ACT2FN)."""
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh,
            "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[name]
