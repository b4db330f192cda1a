"""The two losses of replaced token detection, in plain PyTorch (the reference `mlm_loss` implementation, "eager").

    generator:      logits = LMPredictionHead.transform(h) E^T + b at the masked rows (E the tied word table)
                    L_MLM  = sum_n CE(logits_n, y_n) / denominator,  accuracy = mean(argmax logits_n == y_n)
                    replacement_n ~ softmax(logits_n / T), special tokens excluded (ELECTRA sec. 3.1)
    discriminator:  L_RTD  = sum_t BCE(logit_t, replaced_t) / non-pad tokens (ELECTRA sec. 2, official code)

An `mlm_loss` implementation is a callable

    (h_NH, weight_VH, bias_V, targets_N, uniforms_N, denominator, temperature, special_ids)
        -> (L_MLM, accuracy, sampled ids [N])

`h_NH` the head's transformed states, `uniforms_N` in (0, 1] one per row (None: nothing is drawn and `sampled` is
empty), `denominator` what the summed cross-entropy is divided by. Replacements carry no gradient. A fast path may
also offer `tied_lookup(embeddings, table)`, a context manager for the generator's forward pass that yields the
table the head should read (see `tied_lookup` below). Fast paths live in debertav3/ops and are held to
`eager_vocabulary_loss` by tests/test_mlm_loss_impls.py.
Shape legend: N masked rows, HD hidden size, V vocabulary.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model import implementations
from .sampling import sample_tokens


def eager_vocabulary_loss(h_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor, targets_N: torch.Tensor,
                          uniforms_N: torch.Tensor | None, denominator, temperature: float,
                          special_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_MLM, MLM accuracy, sampled replacements [N]) by ordinary autograd over the [N, V] logits."""
    logits_NV = (h_NH @ weight_VH.t() + bias_V).float()
    loss = F.cross_entropy(logits_NV, targets_N, reduction="sum") / denominator
    accuracy = (logits_NV.argmax(-1) == targets_N).sum().float() / max(targets_N.numel(), 1)
    if uniforms_N is None:
        sampled = torch.empty(0, dtype=torch.long, device=h_NH.device)
    else:
        sampled = sample_tokens(torch.softmax(logits_NV.detach() / temperature, -1), uniforms_N, special_ids)
    return loss, accuracy, sampled


implementations.register("mlm_loss", implementations.REFERENCE, eager_vocabulary_loss)


def tied_lookup(vocabulary_loss: Callable, embeddings: nn.Module, table: torch.Tensor) -> AbstractContextManager:
    """The context for one generator forward pass with `vocabulary_loss`; it yields the table the head reads.

    The generator reads its word table twice, in the input lookup and in the tied head. An implementation with a
    `tied_lookup` attribute pairs the two (debertav3/ops/tied_table.py) so that the table receives one gradient;
    any other reads `table` itself and autograd adds the two gradients.
    """
    pairing = getattr(vocabulary_loss, "tied_lookup", None)
    return nullcontext(table) if pairing is None else pairing(embeddings, table)


def rtd_loss(logits: torch.Tensor, replaced: torch.Tensor, num_tokens) -> torch.Tensor:
    """Binary cross-entropy of the replaced-token logits, summed and divided by `num_tokens` (all non-pad tokens,
    [CLS] and [SEP] included, as the official code averages)."""
    return F.binary_cross_entropy_with_logits(logits, replaced, reduction="sum") / num_tokens
