"""A count-based replaced-token detector: the local statistics a discriminator should at least match.

The RTD task gets harder as the generator improves (its samples fit their context better), so a discriminator's
ROC-AUC means little on its own. This detector puts a number beside it: scored on the same replacements, it says
how much of the task plain bigram statistics of the training text solve. Each token t_i is scored by how much
worse it fits its two neighbours than chance, a bigram log-likelihood ratio:

    score_i = -[log p(t_i | t_{i-1}) - log p(t_i)] - [log p(t_{i+1} | t_i) - log p(t_{i+1})]

with counts c from the training blocks (N tokens, vocabulary V), p(b) = (c(b) + 1) / (N + V) and the add-k
bigram interpolated with it, p(b | a) = (c(a, b) + k V p(b)) / (c_left(a) + k V), where c_left(a) counts a as the
left token of a pair. A sequence's first and last positions lack a neighbour and score 0.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


class BigramDetector:
    """Bigram counts of `blocks` (token-id sequences) over `vocab_size` ids; `scores` rates tokens as replaced."""

    def __init__(self, blocks: Iterable[Sequence[int]], vocab_size: int, smoothing: float = 0.1):
        self.vocab_size, self.smoothing = vocab_size, smoothing
        unigram = torch.zeros(vocab_size, dtype=torch.float64)
        left = torch.zeros(vocab_size, dtype=torch.float64)
        pairs = []
        for block in blocks:
            ids = torch.as_tensor(block, dtype=torch.long)
            unigram += torch.bincount(ids, minlength=vocab_size)
            left += torch.bincount(ids[:-1], minlength=vocab_size)
            pairs.append(ids[:-1] * vocab_size + ids[1:])
        if not pairs or unigram.sum() == 0:
            raise ValueError("BigramDetector needs at least one non-empty block to count")
        # Sorted pair keys and their counts: a dense V x V table would not fit for a 128k vocabulary.
        self.pair_keys, pair_counts = torch.cat(pairs).unique(return_counts=True)
        self.pair_counts = pair_counts.double()
        self.left_counts = left
        self.log_unigram = ((unigram + 1) / (unigram.sum() + vocab_size)).log()

    def count(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """c(a, b) for each pair of ids (same shapes)."""
        keys = a * self.vocab_size + b
        where = torch.searchsorted(self.pair_keys, keys).clamp(max=len(self.pair_keys) - 1)
        found = self.pair_keys[where] == keys
        return torch.where(found, self.pair_counts[where], torch.zeros((), dtype=torch.float64))

    def log_next(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """log p(b | a), the smoothed bigram of the module docstring."""
        prior = self.smoothing * self.vocab_size
        return ((self.count(a, b) + prior * self.log_unigram[b].exp()) / (self.left_counts[a] + prior)).log()

    def scores(self, ids: torch.Tensor) -> torch.Tensor:
        """score_i for a batch of sequences `ids` (B, L): higher means more likely replaced; 0 at both ends."""
        ids = ids.long()
        before, token, after = ids[:, :-2], ids[:, 1:-1], ids[:, 2:]
        fit = (self.log_next(before, token) - self.log_unigram[token]
               + self.log_next(token, after) - self.log_unigram[after])
        scores = torch.zeros(ids.shape, dtype=torch.float64)
        scores[:, 1:-1] = -fit
        return scores
