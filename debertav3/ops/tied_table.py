"""One gradient for a word table that the generator reads twice: in its input lookup and in its tied MLM head.

Autograd gives the table one gradient per read and adds them: the head's is a dense [V, HD] tensor, and the
lookup's is another, zero-filled with the looked-up rows added. Inside `TiedLookup` the head's gradient is handed
over to the lookup instead of returned; the lookup adds its rows into it in place and returns the sum as the
table's only gradient. The values are autograd's; a zero fill and an add over the whole table are saved.

The chunked vocabulary step (ops/mlm_loss.py) offers `TiedLookup` as its `tied_lookup`
(debertav3/objective/losses.py); the reference path reads the table plainly.
Shape legend: V vocabulary, HD hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _HandOver:
    """The head's gradient on its way to the lookup. Whichever of the two backward passes runs second forms the
    sum, so the gradient is right in either order, and when only one of the two reads is backpropagated."""

    def __init__(self):
        self.pending: torch.Tensor | None = None  # the head's gradient, waiting for the lookup's rows
        self.lookup_finished = False  # the lookup already returned a gradient of its own


class _HeadRead(torch.autograd.Function):
    """The table as the head reads it: the same values; its gradient is left in the hand-over for the lookup."""

    @staticmethod
    def forward(ctx, table, hand_over):
        ctx.hand_over = hand_over
        return table.view_as(table)

    @staticmethod
    def backward(ctx, grad):
        if ctx.hand_over.lookup_finished:  # the lookup ran first: autograd adds the two gradients
            return grad, None
        ctx.hand_over.pending = grad
        return None, None


class _PairedLookup(torch.autograd.Function):
    """F.embedding(ids, table, padding_idx) whose table gradient is added into the head's, when it is pending."""

    @staticmethod
    def forward(ctx, table, ids, padding_idx, hand_over):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.hand_over, ctx.table_shape = padding_idx, hand_over, table.shape
        return F.embedding(ids, table, padding_idx=padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        grad, ctx.hand_over.pending = ctx.hand_over.pending, None
        if grad is None:  # the head was not backpropagated (yet): the lookup's gradient alone
            ctx.hand_over.lookup_finished = True
            grad = grad_out.new_zeros(ctx.table_shape)
        elif not grad.is_contiguous():  # written in place below: it must be a tensor of its own
            grad = grad.contiguous()
        pad = ctx.padding_idx
        kept_row = None if pad is None else grad[pad].clone()  # the padding row takes no gradient from the lookup
        grad.index_add_(0, ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]).to(grad.dtype))
        if kept_row is not None:
            grad[pad] = kept_row
        return grad, None, None, None


class TiedLookup:
    """`with TiedLookup(embeddings, table) as head_table:` one forward pass in which `embeddings` looks up `table`
    and the tied head reads `head_table` (the same values), the two sharing one gradient (module docstring).

    `embeddings` is a `debertav3.model.embeddings.Embeddings`: for the duration its `lookup` of `table` is the
    paired one (its lookup of any other table is unchanged). The head's states must depend on the lookup, as the
    generator's do. Under torch.compile, which traces neither function, the table is read plainly.
    """

    def __init__(self, embeddings: nn.Module, table: torch.Tensor):
        self.embeddings, self.table = embeddings, table
        self.installed = False

    def __enter__(self) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self.table
        hand_over, plain_lookup, table = _HandOver(), self.embeddings.lookup, self.table
        padding_idx = self.embeddings.pad_token_id

        def paired_lookup(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            if weight is not table:
                return plain_lookup(ids, weight)
            return _PairedLookup.apply(weight, ids, padding_idx, hand_over)

        self.embeddings.lookup = paired_lookup
        self.installed = True
        return _HeadRead.apply(table, hand_over)

    def __exit__(self, *exc_info) -> None:
        if self.installed:
            del self.embeddings.lookup  # the class's own lookup again
            self.installed = False
