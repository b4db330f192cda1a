"""Auto-regressive language modelling on the DeBERTa network (DeBERTa paper appendix A.4, Table 10).

The same network as the MLM generator, run causally: every layer attends to earlier positions only (a triangular
mask over the whole score, c2p and p2c included; model/attention.py), the enhanced mask decoder's too, and the
tied head predicts at every position the token that follows it:

    labels(i)  = x_{i+1} where that is a text token, -100 elsewhere ([SEP], padding, the last position)
    L_ARLM     = sum_i CE(logits_i, labels(i)) / (number of labelled positions)
    perplexity = exp(L_ARLM over all held-out tokens), token-level; the unigram baseline is exp(H(p)), p the
                 empirical distribution of those same targets (objective/metrics.py `unigram_baselines`)

Special tokens are never targets: [CLS] opens every block as a start token and [SEP] only marks where a block was
cut, so text tokens alone are scored, in training, evaluation and tools/perplexity.py alike.
Shape legend: B batch, L length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..model import MaskedLMModel


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      special_token_ids: torch.Tensor) -> torch.Tensor:
    """[B, L]: at position i the id at i + 1 when it is a real token and not a special one, else -100."""
    following = torch.cat([input_ids[:, 1:], input_ids.new_full((input_ids.shape[0], 1), IGNORE_INDEX)], 1)
    real = torch.cat([attention_mask[:, 1:].bool(), attention_mask.new_zeros(input_ids.shape[0], 1).bool()], 1)
    text = real & ~torch.isin(following, special_token_ids)
    return torch.where(text, following, IGNORE_INDEX)


def next_token_loss(network: MaskedLMModel, table: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, labels: torch.Tensor,
                    denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_ARLM: cross-entropy summed over the labelled positions / `denominator`, accuracy of the argmax) of the
    causal network on `input_ids`; `table` the tied word embeddings."""
    states_BLH = network.head_states(input_ids, attention_mask, None, table, causal=True)
    logits_BLV = (states_BLH @ table.t() + network.lm_predictions["lm_head"].bias).float()
    loss = F.cross_entropy(logits_BLV.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum") / denominator
    labelled = labels != IGNORE_INDEX
    accuracy = ((logits_BLV.argmax(-1) == labels) & labelled).sum() / labelled.sum().clamp(min=1)
    return loss, accuracy
