"""Dropout (Srivastava et al. 2014): y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element, identity in eval.

`Dropout` is the one dropout module of the network. It has `nn.Dropout`'s semantics and no parameters (state
dicts are unchanged); which implementation draws the mask is the `dropout_impl` it is built with
(debertav3/model/implementations.py), so one config key switches every dropout of a model. The reference,
registered here as "eager", is `F.dropout` (torch's Bernoulli mask, `torch.manual_seed` reproducible).

A dropout implementation is a function `(x, p, residual=None) -> dropout(x) + residual` (the sum left out when
`residual` is None), called only in training with 0 < p; fusing the residual sum is what lets a fast path save a
pass over the hidden states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import implementations


def eager_dropout(x: torch.Tensor, p: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: `F.dropout` in training mode, then the residual added."""
    dropped = F.dropout(x, p, training=True)
    return dropped if residual is None else dropped + residual


implementations.register("dropout", implementations.REFERENCE, eager_dropout)


class Dropout(nn.Module):
    """`nn.Dropout(p)` whose mask is drawn by the `impl` dropout implementation ("auto" picks by device)."""

    def __init__(self, p: float, impl: str = "auto"):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        implementations.check_name("dropout", impl)
        self.p, self.impl = p, impl

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """dropout(x), plus `residual` when given (in one pass where the implementation fuses the sum)."""
        if not self.training or self.p == 0.0:
            return x if residual is None else x + residual
        return implementations.resolve("dropout", self.impl, x.device.type)(x, self.p, residual)

    def extra_repr(self) -> str:
        return f"p={self.p}, impl={self.impl!r}"
