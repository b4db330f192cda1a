"""The "sdpa" attention implementation: the position terms as an additive bias to PyTorch's fused attention.

`F.scaled_dot_product_attention` computes softmax(q k^T * scale + bias) v with its dropout; the bias here is
c2p + p2c (DeBERTa eq. 4's position terms, read from products against the relative table) plus the key padding
mask, summed in fp32 as the official code does. On GPUs its memory-efficient kernel takes a bias with a gradient
and never stores the probabilities. Every projection is an ordinary module call, so hooks and adapters apply.
Same contract as the reference, `debertav3.model.attention.AttentionImplementation` (tests/test_attention_impls.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import implementations
from ..model.attention import AttentionImplementation
from .cpu_attention import against_table


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


class SdpaAttention(AttentionImplementation):
    name = "sdpa"

    def __call__(self, attention, hidden_states, key_padding_mask, query_states, rel_embeddings, rel_idx,
                 keys_values):
        attn = attention.self
        q_BQX = attn.query_proj(hidden_states if query_states is None else query_states)
        k_BKX, v_BKX = attn.keys_values(hidden_states) if keys_values is None else keys_values
        q_BHQD, k_BHKD, v_BHKD = attn.split_heads(q_BQX), attn.split_heads(k_BKX), attn.split_heads(v_BKX)
        B, H, Lq, Lk = q_BHQD.shape[0], attn.num_heads, q_BHQD.shape[2], k_BHKD.shape[2]
        pos_key_RX, pos_query_RX = attn.scaled_relative_tables(rel_embeddings)
        bias = q_BQX.new_zeros(1, dtype=torch.float32)
        if rel_idx is not None:
            rel_idx = rel_idx.unsqueeze(-3)  # [1 or B, 1, Lq, Lk]
        as_HBLD = lambda x: x.transpose(0, 1)  # noqa: E731  (a view; bmm takes the strides)
        if pos_key_RX is not None:
            c2p_BHQR = against_table(as_HBLD(q_BHQD), pos_key_RX).transpose(0, 1)
            bias = bias + RelativeGather.apply(c2p_BHQR, rel_idx.expand(B, H, Lq, Lk)).float()
        if pos_query_RX is not None:
            p2c_BHKR = against_table(as_HBLD(k_BHKD), pos_query_RX).transpose(0, 1)
            p2c_BHKQ = RelativeGather.apply(p2c_BHKR, rel_idx.transpose(-1, -2).expand(B, H, Lk, Lq))
            bias = bias + p2c_BHKQ.transpose(-1, -2).float()
        bias = bias.masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(torch.float32).min)
        dropout_prob = attn.dropout.p if attn.training else 0.0
        context = F.scaled_dot_product_attention(q_BHQD, k_BHKD, v_BHKD, attn_mask=bias.to(q_BQX.dtype),
                                                 scale=attn.scale, dropout_p=dropout_prob)
        return attention.output.dense(context.transpose(1, 2).flatten(-2))


implementations.register("attention", SdpaAttention.name, SdpaAttention())
