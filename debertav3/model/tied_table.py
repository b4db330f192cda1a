"""One dense gradient for a word-embedding table that is both looked up and used as a tied output projection.

The generator reads E twice: its input lookup, and its MLM head (logits = h E^T + b). Autograd would give E two
gradients and add them: the head's is dense [V, HD], and the lookup's is either dense too (a zero-filled [V, HD]
tensor with the looked-up rows added) or sparse, which autograd adds to a dense gradient out of place (a [V, HD]
copy). Either way a whole table is written for a few thousand rows: about 8 ms a step at the issue-8 shapes.

Here the head's backward, which always runs first (the lookup feeds the head), leaves its gradient in a
`TableGradient` instead of returning it; the lookup's backward adds its rows into that tensor in place and returns
the sum as E's only gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TableGradient:
    """Carries the head's dense table gradient to the lookup's backward, for one forward pass."""

    def __init__(self):
        self.pending: torch.Tensor | None = None

    def put(self, grad: torch.Tensor) -> None:
        self.pending = grad

    def take(self) -> torch.Tensor | None:
        grad, self.pending = self.pending, None
        return grad


class _LookupIntoPendingGradient(torch.autograd.Function):
    """F.embedding(ids, weight, padding_idx) whose weight gradient is added into the pending one when there is one."""

    @staticmethod
    def forward(ctx, weight, ids, padding_idx, table_gradient):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.table_gradient, ctx.weight_shape = padding_idx, table_gradient, weight.shape
        return F.embedding(ids, weight, padding_idx=padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        grad = ctx.table_gradient.take()
        if grad is None:  # the head was not backpropagated (its loss left out): the lookup's gradient alone
            grad = grad_out.new_zeros(ctx.weight_shape)
        pad = ctx.padding_idx
        kept_row = None if pad is None else grad[pad].clone()  # the padding row takes no gradient from the lookup
        grad.index_add_(0, ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]).to(grad.dtype))
        if kept_row is not None:
            grad[pad] = kept_row
        return grad, None, None, None


def lookup(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None,
           table_gradient: TableGradient) -> torch.Tensor:
    """`F.embedding(ids, weight, padding_idx)` whose gradient joins the one the head puts in `table_gradient`."""
    return _LookupIntoPendingGradient.apply(weight, ids, padding_idx, table_gradient)
