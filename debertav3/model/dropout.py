"""Dropout with a cheap CPU mask (Srivastava et al. 2014: y = x * m / (1 - p), m ~ Bernoulli(1 - p)).

torch's CPU dropout draws one double-precision Bernoulli per element from a single mt19937 stream, about 8 ns per
element on a 2-core machine; a training step of the issue-8 model draws about forty masks, which took a tenth of the
step. Here each 64-bit random word is cut into four 16-bit integers, and an element is dropped when its integer
falls below round(p * 2^16), giving a drop probability of round(p * 65536) / 65536 (0.1000061 for p = 0.1). The
words come from numpy's SFC64 generator (O'Neill's small fast counting generator, which passes PractRand and
BigCrush), seeded for each mask with a 63-bit draw from torch's default generator: masks follow `torch.manual_seed`
(so a resumed run repeats them), and the words come twice as fast as from torch's mt19937 (`random_`); drawing
the masks is still about 4.5% of the issue-8 step at seq 128 (numpy's loop, about 3 ns a word in the step). Backward
keeps the mask. On CUDA, `F.dropout` (fused Philox) is used unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def random_words(count: int, device=None) -> torch.Tensor:
    """`count` uniformly random int64 words, reproducible under `torch.manual_seed` (see the module docstring)."""
    if torch.device(device or "cpu").type != "cpu":
        return torch.empty(count, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    seed = int(torch.randint(2 ** 63 - 1, ()))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 tensor of `shape`: 0 (dropped) with probability round(p * 2^16) / 2^16, else 1; default generator.
    Written into `out` (a floating tensor of `shape`) when given.

    fp32 rather than bool because applying it is then a plain product: on CPU `x * mask` takes a fifth of the time
    of `torch.where(keep, x, 0)` and a quarter of `x.masked_fill(~keep, 0)`, worth the larger mask.
    """
    numel = math.prod(shape)
    words = random_words((numel + 3) // 4, device)
    levels = words.view(torch.int16)[:numel].view(shape)  # int16 in [-2^15, 2^15), uniform
    return torch.ge(levels, round(p * _LEVELS) - _LEVELS // 2,
                    out=torch.empty(shape, device=device) if out is None else out)


def _scaled_product(x: torch.Tensor, mask: torch.Tensor, scale: float, added: torch.Tensor | None = None):
    """added + scale * x * mask in one pass: addcmul's value carries the 1 / (1 - p), so the mask stays 0 / 1
    (no scaling pass over it), and a 0-d zero stands in for a missing `added` at no cost."""
    return torch.addcmul(x.new_zeros(()) if added is None else added, x, mask, value=scale).to(x.dtype)


class _MaskedScale(torch.autograd.Function):
    """x * mask * scale (+ residual), the 0 / 1 mask saved for backward: x's gradient is the same map, the
    residual's (when there is one) passes through unchanged."""

    @staticmethod
    def forward(ctx, x, mask, scale, residual):
        ctx.save_for_backward(mask)
        ctx.scale, ctx.has_residual = scale, residual is not None
        return _scaled_product(x, mask, scale, residual)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return _scaled_product(grad, mask, ctx.scale), None, None, grad if ctx.has_residual else None


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """dropout(x) + residual, the dropout and the sum in one pass on the CPU."""
    if not training or p == 0.0 or x.device.type != "cpu" or p == 1.0:
        return dropout(x, p, training) + residual
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p), residual)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Functional form of `Dropout`."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p == 1.0:
        return torch.zeros_like(x)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p), None)


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
