"""The "cpu_bits" dropout implementation: the mask from 16-bit slices of fast 64-bit random words.

Each 64-bit random word is cut into four 16-bit integers, and an element is dropped when its integer falls below
round(p * 2^16), so the drop probability is round(p * 65536) / 65536 (0.1000061 for p = 0.1). On the CPU the
words come from numpy's SFC64 generator (O'Neill's small fast counting generator, which passes PractRand and
BigCrush), seeded for each mask with a 63-bit draw from torch's default generator: masks follow
`torch.manual_seed`, so a resumed run repeats them. torch's own CPU dropout draws a double-precision Bernoulli
per element from one mt19937 stream, which is what this avoids. Backward keeps the 0 / 1 mask.

Same contract as the reference in debertav3/model/dropout.py (tests/test_attention_impls.py holds it there).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..model import implementations

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

    fp32 rather than bool because applying it is then a plain product, cheaper on the CPU than `torch.where` or
    `masked_fill` with a bool mask.
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


def bits_dropout(x: torch.Tensor, p: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """dropout(x) (+ residual) in training mode, the mask from `keep_mask` and the sum in the same pass."""
    if p == 1.0:  # nothing kept: keep_mask's threshold would overflow the 16-bit levels
        dropped = x * 0.0
        return dropped if residual is None else dropped + residual
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p), residual)


implementations.register("dropout", "cpu_bits", bits_dropout)
