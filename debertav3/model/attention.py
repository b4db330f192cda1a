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


class BiasedAttention(torch.autograd.Function):
    """dropout(softmax(q k^T * scale + bias)) v in fp32, saving only the probabilities and a bool dropout mask.

    PyTorch's fused CPU attention takes neither a bias that needs a gradient nor dropout, and its fallback keeps
    both the probabilities and the dropped-out probabilities for backward (two [N, Lq, Lk] fp32 tensors per
    layer); here the dropped-out ones are recomputed from the mask in backward, an elementwise product.
    Shapes: q [N, Lq, D], k and v [N, Lk, D], bias [N, Lq, Lk], keep [N, Lq, Lk] bool or None; N = B * H.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, keep, keep_prob: float):
        acc = torch.promote_types(q.dtype, torch.float32)  # scores and softmax in at least fp32
        probs = torch.softmax(torch.baddbmm(bias.to(acc), q.to(acc), k.to(acc).transpose(1, 2), alpha=scale), -1)
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.scale, ctx.keep_prob, ctx.bias_dtype = scale, keep_prob, bias.dtype
        return torch.bmm(BiasedAttention._dropped(probs, keep, keep_prob).to(v.dtype), v)

    @staticmethod
    def _dropped(x, keep, keep_prob):
        return x if keep is None else x * keep / keep_prob

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, keep = ctx.saved_tensors
        dropped = BiasedAttention._dropped(probs, keep, ctx.keep_prob).to(v.dtype)
        grad_v = torch.bmm(dropped.transpose(1, 2), grad_out)
        grad_probs = BiasedAttention._dropped(torch.bmm(grad_out, v.transpose(1, 2)).to(probs.dtype), keep,
                                              ctx.keep_prob)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_q = torch.bmm(grad_scores, k.to(probs.dtype)).mul_(ctx.scale).to(q.dtype)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q.to(probs.dtype)).mul_(ctx.scale).to(k.dtype)
        return grad_q, grad_k, grad_v, grad_scores.to(ctx.bias_dtype), None, None, None


def attend(q_BHQD, k_BHKD, v_BHKD, bias_BHQK, scale: float, dropout_prob: float):
    """softmax(q k^T * scale + bias) v with attention dropout; [B, H, Lq, D].

    On CUDA: PyTorch SDPA (its memory-efficient kernel takes a bias with gradient and never stores the
    probabilities). Elsewhere: `BiasedAttention`.
    """
    if q_BHQD.is_cuda:
        return F.scaled_dot_product_attention(q_BHQD, k_BHKD, v_BHKD, attn_mask=bias_BHQK, scale=scale,
                                              dropout_p=dropout_prob)
    B, H, Lq, D = q_BHQD.shape
    Lk = k_BHKD.shape[-2]
    keep = torch.rand(B * H, Lq, Lk, device=q_BHQD.device) >= dropout_prob if dropout_prob > 0 else None
    out = BiasedAttention.apply(q_BHQD.reshape(B * H, Lq, D), k_BHKD.reshape(B * H, Lk, D),
                                v_BHKD.reshape(B * H, Lk, D), bias_BHQK.expand(B, H, Lq, Lk).reshape(B * H, Lq, Lk),
                                scale, keep, 1.0 - dropout_prob)
    return out.view(B, H, Lq, D)


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
        # The position terms and the padding enter attention as one additive bias, summed in fp32 (official code:
        # fp32 scores; fp16/bf16 overflow otherwise) and rounded once to the model dtype on GPU.
        bias = self._position_bias(q_BQX, k_BKX, rel_embeddings, rel_idx) if self.pos_terms \
            else q_BQX.new_zeros(1, dtype=torch.float32)
        bias = bias.masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(torch.float32).min)
        if q_BQX.is_cuda:
            bias = bias.to(q_BQX.dtype)
        context = attend(self._heads(q_BQX), self._heads(k_BKX), self._heads(self.value_proj(hidden_states)), bias,
                         self.scale, self.dropout_prob if self.training else 0.0)
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
            out = out + RelativeGather.apply(c2p_BHQR, rel_idx.expand(B, H, Lq, Lk)).float()
        if "p2c" in self.pos_terms:
            proj = self.query_proj if self.share_att_key else self.pos_query_proj
            p2c_BHKR = self._against_table(k_BKX, proj(rel) * self.scale)
            # p2c(i, j) = P[j, idx(i, j)]: gather row j with idx transposed, then transpose back to [i, j].
            p2c_BHKQ = RelativeGather.apply(p2c_BHKR, rel_idx.transpose(-1, -2).expand(B, H, Lk, Lq))
            out = out + p2c_BHKQ.transpose(-1, -2).float()
        return out


def activation(name: str):
    """The feed-forward nonlinearity by transformers' name (gelu is the exact erf form, as in HF's ACT2FN)."""
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh,
            "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[name]
