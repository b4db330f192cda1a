"""The "sdpa" attention core: the position terms as an additive bias to PyTorch's fused attention.

`F.scaled_dot_product_attention` computes softmax(q k^T * scale + bias) v with its dropout; the bias here is
c2p + p2c (DeBERTa eq. 4's position terms, read from products against the relative tables, which carry the scale)
plus the key padding mask (and, causal, the upper triangle), summed in fp32 as the official code does. On GPUs
its memory-efficient kernel takes a bias with a gradient and never stores the probabilities. Same contract as the
reference core, `debertav3.model.attention.eager_attention` (tests/test_attention_impls.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import implementations
from ..model.attention import causal_exclusion


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


def sdpa_attention(q, k, v, pos_key, pos_query, rel_idx, key_padding_mask, scale, dropout_p, causal=False):
    """The attention core (`eager_attention`'s contract): context [B, H, Lq, D]."""
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    bias = q.new_zeros(1, dtype=torch.float32)
    index = None if rel_idx is None else rel_idx.unsqueeze(-3)  # [1 or B, 1, Lq, Lk]
    if pos_key is not None:  # the scale rides on the small [H, R, D] table, not on [B, H, Lq, Lk]
        c2p_BHQR = q @ (pos_key * scale).transpose(-1, -2)
        bias = bias + RelativeGather.apply(c2p_BHQR, index.expand(B, H, Lq, Lk)).float()
    if pos_query is not None:
        p2c_BHKR = k @ (pos_query * scale).transpose(-1, -2)
        p2c_BHKQ = RelativeGather.apply(p2c_BHKR, index.transpose(-1, -2).expand(B, H, Lk, Lq))
        bias = bias + p2c_BHKQ.transpose(-1, -2).float()
    excluded = ~key_padding_mask[:, None, None, :]
    if causal:  # folded into the bias: SDPA takes is_causal or a mask, not both
        excluded = excluded | causal_exclusion(Lq, Lk, q.device)
    bias = bias.masked_fill(excluded, torch.finfo(torch.float32).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale, dropout_p=dropout_p)


implementations.register("attention", "sdpa", sdpa_attention)
