"""Dropout (Srivastava et al. 2014): y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element, identity in eval.

`Dropout` is the dropout module of the network's hidden states. It has `nn.Dropout`'s semantics and no parameters
(state dicts are unchanged); which function draws the mask is the `dropout_impl` it is built with
(model/implementations.py), resolved once. The reference, registered here as "eager", is `F.dropout` (torch's
Bernoulli mask, `torch.manual_seed` reproducible). A dropout implementation is a function `(x, p) -> dropout(x)`,
called only in training with 0 < p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import implementations


def eager_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """The reference: `F.dropout` in training mode."""
    return F.dropout(x, p, training=True)


implementations.register("dropout", implementations.REFERENCE, eager_dropout)


class Dropout(nn.Module):
    """`nn.Dropout(p)` whose mask is drawn by the `impl` dropout implementation (`auto`: by the device the module
    is built on)."""

    def __init__(self, p: float, impl: str = "auto"):
        super().__init__()
        self.p = p
        self.impl = implementations.resolve_name("dropout", impl, implementations.default_device_type())
        self.drop = implementations.resolve("dropout", self.impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x, self.p) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}, impl={self.impl!r}"
