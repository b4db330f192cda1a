"""Perplexity of a text under an auto-regressive DeBERTa, with a sliding window (tools/perplexity.py).

The text is read as the trainer reads a corpus (data/sources.py: blank-line separated documents, the same
tokenizer) and every window is built as a training block is, "[CLS] ids [SEP]" of at most the trained length.
Within a document, the first window scores the first `length - 2` tokens (the payload) and each later one the next
`stride` tokens, after the `payload - stride` tokens before them as context:

    stride = the window's payload (length - 2): the windows are exactly the trainer's blocks, so the figure equals
             the run's own evaluation on the same file (objective/arlm.py scores the same targets)
    smaller strides: every token is scored once with more context (the usual sliding-window perplexity)

Like the trainer, a window of fewer than MIN_BLOCK_TOKENS tokens is skipped (a document shorter than that, or a
short last piece). Special tokens are never targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..data.corpus import MIN_BLOCK_TOKENS, pad_blocks
from ..objective.arlm import next_token_labels
from ..objective.metrics import target_counts, unigram_baselines
from .load import CausalLM


@dataclass
class Windows:
    """input_ids of each window ("[CLS] context + scored tokens [SEP]") and the index in it of its first scored
    token: the tokens before that are context only."""

    input_ids: list[list[int]]
    first_scored: list[int]


def text_windows(documents: Sequence[Sequence[int]], length: int, stride: int, cls_id: int, sep_id: int) -> Windows:
    """The windows of `documents` (each a list of token ids) for a model trained on blocks of `length` tokens."""
    payload = length - 2
    if not 0 < stride <= payload:
        raise ValueError(f"stride {stride} must be in [1, {payload}]")
    shortest = min(MIN_BLOCK_TOKENS, payload)
    windows = Windows([], [])
    for doc in documents:
        start, end = 0, min(payload, len(doc))  # the first window scores a whole payload, the others `stride`
        while start < len(doc):
            context_start = max(0, start - (payload - stride))
            if end - context_start >= shortest:
                windows.input_ids.append([cls_id, *doc[context_start:end], sep_id])
                windows.first_scored.append(1 + start - context_start)
            start, end = end, min(end + stride, len(doc))
    return windows


@torch.no_grad()
def perplexity(lm: CausalLM, windows: Windows, batch_size: int = 16, progress=None) -> dict[str, float]:
    """{"tokens": scored tokens, "loss": mean next-token cross-entropy in nats, "perplexity": exp(loss),
    "unigram_perplexity": exp(H(p)), p the scored tokens' empirical distribution, the best any constant
    distribution does on them} over `windows`, each token scored once; `progress(n)` is called after each batch
    of n windows."""
    special = torch.tensor(sorted(set(lm.tokenizer.special_ids)))
    total, count, counts = 0.0, 0, None
    for begin in range(0, len(windows.input_ids), batch_size):
        batch = pad_blocks(windows.input_ids[begin: begin + batch_size], lm.tokenizer.pad_id)
        labels = next_token_labels(batch["input_ids"], batch["attention_mask"], special)
        # Position i predicts token i + 1: keep the targets at or after each window's first scored token.
        first = torch.tensor(windows.first_scored[begin: begin + batch_size])
        labels[torch.arange(labels.shape[1])[None, :] + 1 < first[:, None]] = IGNORE_INDEX
        logits = lm.next_token_logits(batch["input_ids"], batch["attention_mask"])
        total += F.cross_entropy(logits.flatten(0, 1).double(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
        batch_counts = target_counts(labels[labels != IGNORE_INDEX], logits.shape[-1])
        counts = batch_counts if counts is None else counts + batch_counts
        if progress:
            progress(len(first))
    if not count:
        return {"tokens": 0, "loss": math.nan, "perplexity": math.nan, "unigram_perplexity": math.nan}
    loss = total / count
    return {"tokens": count, "loss": loss, "perplexity": math.exp(loss),
            "unigram_perplexity": math.exp(unigram_baselines(counts)[1].item())}
