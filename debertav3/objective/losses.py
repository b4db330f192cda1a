"""The generator's vocabulary step in plain PyTorch: the reference `mlm_loss` implementation, "eager".

    logits = h E^T + b at the prediction slots (E the tied word table, h = LMPredictionHead.transform(...))
    L_MLM  = sum over slots with a target of CE(logits, y) / denominator,    accuracy = mean(argmax logits == y)
    replacement ~ softmax(logits / T), special tokens excluded (ELECTRA sec. 3.1; objective/sampling.py)

An `mlm_loss` implementation is a callable

    (h_NH, weight_VH, bias_V, targets_N, uniforms_N, denominator, temperature, special_ids)
        -> (L_MLM, accuracy, sampled ids [N])

with `targets_N` -100 at the slots that pad a row (no loss, not counted in the accuracy), `uniforms_N` in (0, 1]
one per row, `denominator` (a tensor) what the summed cross-entropy is divided by. Replacements carry no gradient.
Fast paths live in debertav3/ops and are held to this one by tests/test_mlm_loss_impls.py.
Shape legend: N prediction slots, HD the table's width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..model import implementations
from .sampling import sample_tokens


def eager_vocabulary_loss(h_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor, targets_N: torch.Tensor,
                          uniforms_N: torch.Tensor, denominator: torch.Tensor, temperature: float,
                          special_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_MLM, MLM accuracy, sampled replacements [N]) by ordinary autograd over the [N, V] logits."""
    logits_NV = (h_NH @ weight_VH.t() + bias_V).float()
    loss = F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX, reduction="sum") / denominator
    accuracy = (logits_NV.argmax(-1) == targets_N).sum() / (targets_N != IGNORE_INDEX).sum().clamp(min=1)
    sampled = sample_tokens(torch.softmax(logits_NV.detach() / temperature, -1), uniforms_N, special_ids)
    return loss, accuracy, sampled


implementations.register("mlm_loss", implementations.REFERENCE, eager_vocabulary_loss)
