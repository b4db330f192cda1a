"""Metrics that say whether pretraining learned anything, against what a model that learned nothing scores.

Accuracy alone hides a collapsed discriminator: with 14% of tokens replaced, answering "original" everywhere scores
0.86. These compare each prediction with the best answer that ignores the input:

    roc_auc               ranking quality of the "replaced" scores: 0.5 for any constant (or random) score, 1.0 for
                          perfect separation; it does not move with the replaced fraction
    prior_relative_loss   RTD cross-entropy / H(q), q the replaced fraction: 1.0 is the loss of always answering q
                          (the prior), below 1.0 the discriminator knows more than the prior
    unigram_baselines     for the MLM: accuracy and cross-entropy of the best constant prediction for the targets

All functions are fixed-shape tensor operations (no boolean-mask indexing, no `.item()`), so calling them in a
training step costs no host sync and traces under torch.compile; `valid` masks leave padding out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def roc_auc(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """ROC-AUC of the positive class (label 1, "replaced"): P(score of a positive > score of a negative), ties 1/2.

    Counted pair by pair without enumerating pairs: sort the scores once; for each score, `searchsorted` left and
    right give its tie range [lo, hi) in the sorted order, and the running count of negatives in that order gives
    the negatives strictly below it (count at lo) and up to its ties (count at hi). A positive wins
    below + (ties) / 2 pairs, so, summing twice that (an integer, exact in int64),
        AUC = sum over positives of (count at lo + count at hi) / (2 P N)      P positives, N negatives.
    `valid` (bool, the shape of `scores`) leaves the other entries out, padding say: they are neither positives
    nor negatives. Fixed shapes throughout, no host sync. Scalar float32 tensor; NaN when either class is absent.
    """
    scores = scores.detach().flatten()
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.flatten().bool()
    replaced = labels.detach().flatten() > 0.5
    positive, negative = (replaced & valid).long(), (~replaced & valid).long()
    order = torch.argsort(scores)
    ordered = scores[order]
    negatives_through = negative[order].cumsum(0)  # negatives among the first k + 1 sorted scores
    lo = torch.searchsorted(ordered, scores, side="left")
    hi = torch.searchsorted(ordered, scores, side="right")
    below = torch.where(lo > 0, negatives_through[(lo - 1).clamp(min=0)], 0)
    through_ties = negatives_through[(hi - 1).clamp(min=0)]
    doubled_wins = ((below + through_ties) * positive).sum()
    pairs = positive.sum() * negative.sum()
    auc = doubled_wins / (2 * pairs).clamp(min=1)
    return torch.where(pairs > 0, auc, torch.nan).float()


def binary_entropy(q: torch.Tensor) -> torch.Tensor:
    """H(q) = -q ln q - (1 - q) ln(1 - q) in nats (0 at q = 0 or 1): the cross-entropy of always predicting q."""
    q = torch.as_tensor(q)
    return -(torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q))


def prior_relative_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy of `logits` against `targets` divided by H(q), q = mean(targets), both over the
    `valid` entries (all by default).

    1.0 is what the constant logit ln(q / (1 - q)) scores on these tokens (the discriminator learned nothing beyond
    the replaced fraction), below 1.0 it detects replacements. NaN (not inf) when q is 0 or 1, where H(q) = 0.
    """
    logits = logits.detach()
    targets = targets.detach().to(logits.dtype)
    weight = torch.ones_like(logits) if valid is None else valid.to(logits.dtype)
    count = weight.sum()
    prior = binary_entropy((targets * weight).sum() / count)
    loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="sum") / count
    return torch.where(prior > 0, loss / prior, torch.nan)


def target_counts(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How often each id occurs among the MLM `targets` (the original ids at masked positions): int64 [num_classes].

    Counts of several batches or processes add up, so the baselines of pooled targets come from summed counts."""
    return torch.bincount(targets.flatten(), minlength=num_classes)


def unigram_baselines(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, cross-entropy in nats) of the best constant ("unigram") predictor of the counted targets.

    The best constant guess is the most frequent target: accuracy = max count / total. The constant distribution
    with the least cross-entropy on them is their empirical distribution p, so the loss is its entropy
    -sum p ln p. Computed from the evaluated targets themselves, these are the best any input-blind predictor can
    score on that set (a lower bound for one fitted elsewhere). NaN for no targets.
    """
    counts = counts.double()
    total = counts.sum()
    p = counts / total
    return (counts.max() / total).float(), (-torch.xlogy(p, p).sum()).float()
