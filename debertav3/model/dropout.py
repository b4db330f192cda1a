"""Dropout with a cheap CPU mask (Srivastava et al. 2014: y = x * m / (1 - p), m ~ Bernoulli(1 - p)).

torch's CPU dropout draws one double-precision Bernoulli per element from a single mt19937 stream, about 8 ns per
element on a 2-core machine; a training step of the issue-8 model draws about forty masks, which took a tenth of the
step. Here each 64-bit draw of the same default generator is cut into four 16-bit integers, and an element is
dropped when its integer falls below round(p * 2^16): four times faster, reproducible under `torch.manual_seed`,
with a drop probability of round(p * 65536) / 65536 (0.1000061 for p = 0.1). Backward keeps the mask as bool (1 byte
per element). On CUDA, `F.dropout` (fused Philox) is used unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> torch.Tensor:
    """Bool tensor of `shape`: False (dropped) with probability round(p * 2^16) / 2^16; default generator.

    Apply it as `torch.where(keep, x, 0)`: on CPU that is 1.4x faster than `x * keep` (which first converts the
    mask to x's dtype) and 2x faster than `x.masked_fill(~keep, 0)`."""
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    levels = words.view(torch.int16)[:numel].view(shape)  # int16 in [-2^15, 2^15), uniform
    return levels >= round(p * _LEVELS) - _LEVELS // 2


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, saving only the bool mask (the gradient is the same map)."""

    @staticmethod
    def forward(ctx, x, keep, scale: float):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Functional form of `Dropout`."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p == 1.0:
        return torch.zeros_like(x)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` (no parameters, so state dicts are unchanged); see the module docstring."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
