"""Masking for replaced token detection and MLM (docs/reference.md, "Replaced token detection").

Shapes: B batch, L sequence length, V vocabulary.

- Selection: `mask_prob` (0.15) of each sequence's candidate tokens, i.e. not [PAD] [CLS] [SEP] [UNK] [MASK] and
  not padding. Like the official DeBERTa code we select a fixed number per sequence (not one coin per token),
  but we round mask_prob * n stochastically, so the expected rate is exactly mask_prob at every length (the
  official code rounds to nearest).
- `all_mask` (official DeBERTaV3 RTD): every selected token becomes [MASK].
  `bert` (BERT's MLM): 80% [MASK], 10% a random non-special token, 10% unchanged.
- Whole-word masking: a word is a piece that starts with SentencePiece's marker plus the pieces that follow it;
  words are taken in random order until the selected tokens reach the target (a word is taken when its middle
  falls before the target, so the token rate stays mask_prob on average). Token masking is the special case
  where every token is a word.
- At most `max_predictions(L)` tokens per sequence (ELECTRA's `max_predictions_per_seq`): the model predicts at
  that fixed number of slots per sequence, so a training step has static shapes. Token masking never reaches the
  cap (it selects at most ceil(mask_prob * n)); whole-word masking takes a word only while the sequence's
  selection stays within it, which leaves the token rate as it was to within the figures of tests/test_data_masking.py.
- Labels follow transformers: the original id where selected, -100 elsewhere.

Every random draw comes from the caller's `torch.Generator` (on its own device), so a batch's masking is a pure
function of the generator state: the trainer seeds one per step and resumes exactly.
"""

from __future__ import annotations

import math

import torch

from ..constants import IGNORE_INDEX, MASK_MODES
from .corpus import pad_blocks
from .tokenizer import Tokenizer



def _uniform(shape: tuple, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (a CPU generator may serve a GPU batch), then moved to `device`."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


WHOLE_WORD_ROOM = 0.02  # whole-word masking's room above ceil(mask_prob * L), as a fraction of L


class Masker:
    """Selects and replaces tokens of a padded batch; see the module docstring for the rules."""

    def __init__(self, tokenizer: Tokenizer, mask_prob: float = 0.15, mode: str = "all_mask", whole_word: bool = False):
        if mode not in MASK_MODES:
            raise ValueError(f"data.mask_mode {mode!r} is unknown; use one of {list(MASK_MODES)}")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"data.mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_prob, self.mode, self.whole_word = mask_prob, mode, whole_word
        self.mask_id = tokenizer.mask_id
        self.special_V = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        self.special_V[list(tokenizer.special_ids)] = True
        self.word_start_V = tokenizer.word_start
        self.ordinary_ids = (~self.special_V).nonzero().squeeze(1)  # what `bert` mode draws random tokens from

    def max_predictions(self, length: int) -> int:
        """The most tokens selected in a sequence of `length` tokens: ceil(mask_prob * length), plus room for the
        last word's overhang under whole-word masking (`WHOLE_WORD_ROOM` of the length)."""
        room = math.ceil(WHOLE_WORD_ROOM * length) if self.whole_word else 0
        return max(1, min(length, math.ceil(self.mask_prob * length) + room))

    def select(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
        """Bool [B, L]: the positions to predict."""
        B, L = input_ids_BL.shape
        device = input_ids_BL.device
        candidate_BL = attention_mask_BL.bool() & ~self.special_V.to(device)[input_ids_BL]
        if self.whole_word:
            # A word starts at a marked piece and after any non-candidate, so words never span specials or padding.
            start_BL = self.word_start_V.to(device)[input_ids_BL] | ~candidate_BL
            start_BL[:, 1:] |= ~candidate_BL[:, :-1]
            start_BL[:, 0] = True
        else:
            start_BL = torch.ones_like(candidate_BL)
        word_BL = start_BL.long().cumsum(1) - 1  # word index of each token; a row has at most L words
        word_len_BW = torch.zeros(B, L, dtype=torch.long, device=device).scatter_add_(1, word_BL,
                                                                                     torch.ones_like(word_BL))
        # All tokens of a word share its candidacy (non-candidates are one-token words), so scatter is exact.
        word_ok_BW = torch.zeros(B, L, dtype=torch.bool, device=device).scatter_(1, word_BL, candidate_BL)
        target_B = torch.floor(self.mask_prob * candidate_BL.sum(1) + _uniform((B,), generator, device))
        # Words in random order (non-candidates last); take each word whose middle lies before the target.
        score_BW = _uniform((B, L), generator, device).masked_fill(~word_ok_BW, 2.0)
        order_BW = score_BW.argsort(1)
        sorted_len_BW = (word_len_BW * word_ok_BW).gather(1, order_BW)
        through_BW = sorted_len_BW.cumsum(1)
        taken_sorted_BW = (through_BW - sorted_len_BW / 2 < target_B[:, None]) & (sorted_len_BW > 0) \
            & (through_BW <= self.max_predictions(L))
        taken_BW = torch.zeros_like(taken_sorted_BW).scatter_(1, order_BW, taken_sorted_BW)
        return taken_BW.gather(1, word_BL) & candidate_BL

    def __call__(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, labels) for a padded batch; deterministic given the generator's state."""
        selected_BL = self.select(input_ids_BL, attention_mask_BL, generator)
        labels_BL = input_ids_BL.masked_fill(~selected_BL, IGNORE_INDEX)
        if self.mode == "all_mask":
            return input_ids_BL.masked_fill(selected_BL, self.mask_id), labels_BL
        device = input_ids_BL.device
        u_BL = _uniform(input_ids_BL.shape, generator, device)
        ordinary = self.ordinary_ids.to(device)
        pick_BL = torch.randint(len(ordinary), input_ids_BL.shape, generator=generator, device=generator.device)
        masked_BL = torch.where(selected_BL & (u_BL < 0.8), self.mask_id, input_ids_BL)
        masked_BL = torch.where(selected_BL & (u_BL >= 0.8) & (u_BL < 0.9), ordinary[pick_BL.to(device)], masked_BL)
        return masked_BL, labels_BL


class MaskingCollator:
    """A DataLoader `collate_fn`: pads blocks (`pad_blocks`) and masks them with its own seeded generator.

    Each DataLoader worker gets a copy; its generator is re-seeded with seed + worker id on first use so the
    workers do not repeat each other's masks. (The trainer does not use this: it seeds a generator per step.)
    """

    def __init__(self, tokenizer: Tokenizer, masker: Masker, seed: int):
        self.pad_id, self.masker, self.seed = tokenizer.pad_id, masker, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker = None

    def __call__(self, blocks: list) -> dict[str, torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self.generator.manual_seed(self.seed + info.id)
        batch = pad_blocks(blocks, self.pad_id)
        batch["input_ids"], batch["labels"] = self.masker(batch["input_ids"], batch["attention_mask"], self.generator)
        return batch
