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

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cpu_attention import DisentangledAttention, band_blocks, band_table_rows, is_band_index
from .dropout import Dropout
from .head_linear import MergeHeads, SplitHeads


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


class RelativeGather(torch.autograd.Function):
    """torch.gather along the last dim that saves only the index for backward.

    torch.gather's backward keeps its whole input alive; here that input is the [B, H, L, R] product against
    the relative table, two per layer, which would otherwise dominate the activation memory of a step.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return torch.gather(table, -1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.table_shape).scatter_add_(-1, index, grad), None


def use_cpu_kernel(x: torch.Tensor) -> bool:
    """Whether attention runs as `DisentangledAttention` (CPU) rather than autograd ops + SDPA (GPU)."""
    return not x.is_cuda


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
        self.pos_dropout = Dropout(config.hidden_dropout_prob)
        self.dropout_prob = config.attention_probs_dropout_prob
        # 1 / sqrt(D * (1 + number of position terms)): each term adds variance, so the scale grows with them.
        self.scale = 1.0 / math.sqrt(self.head_size * (1 + len(self.pos_terms)))

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor, output_proj: nn.Linear,
                query_states: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                rel_idx: torch.Tensor | None = None, keys_values: tuple | None = None) -> torch.Tensor:
        """output_proj(context) [B, Lq, HD]: the attention output projected by `output_proj` (transformers'
        `attention.output.dense`), which on the CPU takes the heads as they are instead of merged.

        hidden_states [B, Lk, HD] give keys and values (or `keys_values`, from `self.keys_values(hidden_states)`,
        when the caller reuses them); query_states [B, Lq, HD] (default: hidden_states). key_padding_mask [B, Lk]
        bool, True at real tokens. rel_embeddings [R, HD] (already normalised and sliced), rel_idx [Lq, Lk] (or per
        sequence [B, Lq, Lk]) indexes its rows.
        """
        if query_states is None:
            query_states = hidden_states
        keys, values = keys_values or self.keys_values(hidden_states)
        pos_key_RX, pos_query_RX = self._relative_tables(rel_embeddings)
        dropout_prob = self.dropout_prob if self.training else 0.0
        if use_cpu_kernel(hidden_states):
            context_HBQD = self._cpu_attention(self._split_heads(self.query_proj, query_states), keys, values,
                                               pos_key_RX, pos_query_RX, rel_idx, key_padding_mask, dropout_prob)
            H, B, Lq, D = context_HBQD.shape
            merged = MergeHeads.apply(context_HBQD.view(H, B * Lq, D), output_proj.weight, output_proj.bias)
            return merged.view(B, Lq, -1)
        context = self._sdpa_attention(self.query_proj(query_states), keys, values, pos_key_RX, pos_query_RX,
                                       rel_idx, key_padding_mask, dropout_prob)
        return output_proj(context)

    def keys_values(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of hidden_states [B, L, HD]: head-major [H, B, L, D] for the CPU kernel, else [B, L, HD].
        The enhanced mask decoder's two passes share them (same layer, same hidden states)."""
        if use_cpu_kernel(hidden_states):
            return self._split_heads(self.key_proj, hidden_states), self._split_heads(self.value_proj, hidden_states)
        return self.key_proj(hidden_states), self.value_proj(hidden_states)

    def _relative_tables(self, rel_embeddings):
        """(pos_key, pos_query) [R, HD], each None when its term is off; the score scale is folded in here, on the
        small tables, instead of on [B, H, L, L] scores."""
        if not self.pos_terms:
            return None, None
        rel = self.pos_dropout(rel_embeddings)
        pos_key = pos_query = None
        if "c2p" in self.pos_terms:
            pos_key = (self.key_proj if self.share_att_key else self.pos_key_proj)(rel) * self.scale
        if "p2c" in self.pos_terms:
            pos_query = (self.query_proj if self.share_att_key else self.pos_query_proj)(rel) * self.scale
        return pos_key, pos_query

    def _split_heads(self, proj: nn.Linear, x_BLX: torch.Tensor) -> torch.Tensor:
        """proj(x) as contiguous head-major [H, B, L, D], without a permuted copy (`head_linear.SplitHeads`)."""
        B, L, X = x_BLX.shape
        split = SplitHeads.apply(x_BLX.reshape(B * L, X), proj.weight, proj.bias, self.num_heads)
        return split.view(self.num_heads, B, L, self.head_size)

    def _against_table(self, x_HBLD: torch.Tensor, table_RX: torch.Tensor | None) -> torch.Tensor | None:
        """x . table^T per head: one [B*L, D] x [D, R] product per head, [H, B, L, R]."""
        if table_RX is None:
            return None
        H, B, L, D = x_HBLD.shape
        table_HDR = table_RX.view(-1, H, D).permute(1, 2, 0)
        return torch.bmm(x_HBLD.reshape(H, B * L, D), table_HDR).view(H, B, L, -1)

    def _against_band(self, x_HBLD: torch.Tensor, table_RX: torch.Tensor | None, term: str) -> torch.Tensor | None:
        """The band-layout product [H, K, B, T, W] of `cpu_attention.band_view`: for each head and block of T rows,
        x [B*T, D] against the W = L + T - 1 table rows the block reaches (`band_table_rows`), in that order.

        At L = 128 (K = 4) that is 159 of the 255 rows per block, and the three products of each term (forward and
        both gradients) take 0.6x the time of the full [B*L, D] x [D, 255] ones, for one [B*L, D] copy of x.
        """
        if table_RX is None:
            return None
        H, B, L, D = x_HBLD.shape
        rows_KW = band_table_rows(L, band_blocks(L), term).to(x_HBLD.device)
        K, W = rows_KW.shape
        x_blocks = x_HBLD.view(H, B, K, L // K, D).transpose(1, 2).reshape(H * K, B * L // K, D)
        # index_select, not indexing: its backward is index_add, several times faster than index_put's accumulate.
        windows_HXD = torch.index_select(table_RX.view(-1, H, D).transpose(0, 1), 1, rows_KW.view(-1))
        return torch.bmm(x_blocks, windows_HXD.view(H * K, W, D).transpose(1, 2)).view(H, K, B, L // K, W)

    def _cpu_attention(self, q_HBQD, k_HBKD, v_HBKD, pos_key_RX, pos_query_RX, rel_idx, key_padding_mask,
                       dropout_prob):
        """The context [H, B, Lq, D] from head-major queries, keys and values."""
        H, B, Lq, D = q_HBQD.shape
        Lk = k_HBKD.shape[2]
        table = pos_key_RX if pos_key_RX is not None else pos_query_RX
        band = table is not None and is_band_index(rel_idx, table.shape[0])
        if band:
            c2p, p2c = self._against_band(q_HBQD, pos_key_RX, "c2p"), self._against_band(k_HBKD, pos_query_RX, "p2c")
        else:
            c2p, p2c = self._against_table(q_HBQD, pos_key_RX), self._against_table(k_HBKD, pos_query_RX)
        context = DisentangledAttention.apply(
            q_HBQD.view(H * B, Lq, D), k_HBKD.view(H * B, Lk, D), v_HBKD.view(H * B, Lk, D), c2p, p2c,
            None if band else rel_idx, key_padding_mask, self.scale, None, 1.0 - dropout_prob)
        return context.view(H, B, Lq, D)

    def _sdpa_attention(self, q_BQX, k_BKX, v_BKX, pos_key_RX, pos_query_RX, rel_idx, key_padding_mask,
                        dropout_prob):
        """Position terms and padding as one additive bias for SDPA (its memory-efficient kernel takes a bias with
        gradient and never stores the probabilities), summed in fp32 as the official code does."""
        heads = lambda x: x.unflatten(-1, (self.num_heads, self.head_size)).transpose(1, 2)  # noqa: E731
        q_BHQD, k_BHKD = heads(q_BQX), heads(k_BKX)
        B, H, Lq, Lk = q_BHQD.shape[0], self.num_heads, q_BHQD.shape[2], k_BHKD.shape[2]
        bias = q_BQX.new_zeros(1, dtype=torch.float32)
        if rel_idx is not None:
            rel_idx = rel_idx.unsqueeze(-3)  # [1 or B, 1, Lq, Lk]
        as_HBLD = lambda x: x.transpose(0, 1)  # noqa: E731  (a view; bmm takes the strides)
        if pos_key_RX is not None:
            c2p_BHQR = self._against_table(as_HBLD(q_BHQD), pos_key_RX).transpose(0, 1)
            bias = bias + RelativeGather.apply(c2p_BHQR, rel_idx.expand(B, H, Lq, Lk)).float()
        if pos_query_RX is not None:
            p2c_BHKR = self._against_table(as_HBLD(k_BHKD), pos_query_RX).transpose(0, 1)
            p2c_BHKQ = RelativeGather.apply(p2c_BHKR, rel_idx.transpose(-1, -2).expand(B, H, Lk, Lq))
            bias = bias + p2c_BHKQ.transpose(-1, -2).float()
        bias = bias.masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(torch.float32).min)
        context = F.scaled_dot_product_attention(q_BHQD, k_BHKD, heads(v_BKX), attn_mask=bias.to(q_BQX.dtype),
                                                 scale=self.scale, dropout_p=dropout_prob)
        return context.transpose(1, 2).flatten(-2)


def activation(name: str):
    """The feed-forward nonlinearity by transformers' name (gelu is the exact erf form, as in HF's ACT2FN)."""
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh,
            "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[name]
