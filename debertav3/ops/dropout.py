"""The "cpu_bits" dropout implementation: the mask from 16-bit slices of fast 64-bit random words.

Each 64-bit random word is cut into four 16-bit integers, and an element is dropped when its integer falls below
round(p * 2^16), so the drop probability is round(p * 65536) / 65536 (0.1000061 for p = 0.1). On the CPU the
words come from numpy's SFC64 generator (O'Neill's small fast counting generator, which passes PractRand and
BigCrush), seeded for each mask with a 63-bit draw from torch's default generator: masks follow
`torch.manual_seed`, so a resumed run repeats them. torch's own CPU dropout draws a double-precision Bernoulli
per element from one mt19937 stream, which is what this avoids. Backward keeps the 0 / 1 mask. The CPU attention
core draws its probabilities' dropout with the same masks (`keep_mask`, ops/cpu_attention.py).

Same contract as the reference in debertav3/model/dropout.py (tests/test_kernels.py holds it there). torch.compile
does not trace numpy's generator: inside a compiled step the reference runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..model import implementations

_LEVELS = 1 << 16


def random_words(count: int) -> torch.Tensor:
    """`count` uniformly random int64 words on the host, reproducible under `torch.manual_seed` (see the module
    docstring)."""
    seed = int(torch.randint(2 ** 63 - 1, ()))
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 host tensor of `shape`: 0 (dropped) with probability round(p * 2^16) / 2^16, else 1; default
    generator. Written into `out` (a floating host tensor of `shape`) when given.

    fp32 rather than bool because applying it is then a plain product, cheaper on the CPU than `torch.where` or
    `masked_fill` with a bool mask.
    """
    numel = math.prod(shape)
    words = random_words((numel + 3) // 4)
    levels = words.view(torch.int16)[:numel].view(shape)  # int16 in [-2^15, 2^15), uniform
    return torch.ge(levels, round(p * _LEVELS) - _LEVELS // 2,
                    out=torch.empty(shape) if out is None else out)


class _MaskedScale(torch.autograd.Function):
    """x * mask * scale with the 0 / 1 mask saved for backward, where x's gradient is the same map. addcmul's
    value carries the 1 / (1 - p), so the mask is never scaled in a pass of its own."""

    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, mask, value=scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, mask, value=ctx.scale).to(grad.dtype), None, None


def bits_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(x) in training mode, the mask from `keep_mask`."""
    if torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    if p == 1.0:  # nothing kept: keep_mask's threshold would overflow the 16-bit levels
        return x * 0.0
    return _MaskedScale.apply(x, keep_mask(x.shape, p).to(x.device), 1.0 / (1.0 - p))


implementations.register("dropout", "cpu_bits", bits_dropout)
