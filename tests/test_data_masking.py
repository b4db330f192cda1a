"""Masking statistics and invariants (debertav3.data.masking) on real text from the bundled corpus."""

import gzip

import pytest
import torch

from debertav3.data import Masker, MaskingCollator, Tokenizer, pad_blocks
from debertav3.data.corpus import BUNDLED_VALID

IGNORE = -100


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load(None)


@pytest.fixture(scope="module")
def batch(tokenizer):
    """About 100k tokens: 200 blocks of real text, [CLS] ... [SEP], lengths 300-512 (so there is padding), with
    [UNK], [MASK] and [PAD] ids sprinkled inside the real tokens."""
    with gzip.open(BUNDLED_VALID, "rt", encoding="utf-8") as f:
        ids = [i for line in tokenizer.encode_batch(f.read().split("\n")) for i in line]
    gen = torch.Generator().manual_seed(0)
    blocks, start = [], 0
    for _ in range(200):
        n = int(torch.randint(298, 511, (1,), generator=gen))
        block = torch.tensor([tokenizer.cls_id] + ids[start:start + n] + [tokenizer.sep_id])
        start += n
        noise = torch.randint(1, len(block) - 1, (6,), generator=gen)
        block[noise] = torch.tensor([tokenizer.unk_id, tokenizer.unk_id, tokenizer.mask_id, tokenizer.mask_id,
                                     tokenizer.pad_id, tokenizer.unk_id])
        blocks.append(block)
    return pad_blocks(blocks, tokenizer.pad_id)


def run(tokenizer, batch, seed=0, **kwargs):
    masker = Masker(tokenizer, **kwargs)
    return masker(batch["input_ids"], batch["attention_mask"], torch.Generator().manual_seed(seed))


def candidates(tokenizer, batch):
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.special_ids))
    return batch["attention_mask"].bool() & ~special


@pytest.mark.parametrize("whole_word", [False, True])
def test_all_mask_rate_and_replacement(tokenizer, batch, whole_word):
    ids = batch["input_ids"]
    masked, labels = run(tokenizer, batch, mode="all_mask", whole_word=whole_word)
    selected = labels != IGNORE
    rate = selected.sum() / candidates(tokenizer, batch).sum()
    tolerance = 0.03 if whole_word else 0.01  # words come whole, so their count is only ~ the target
    assert abs(rate - 0.15) / 0.15 < tolerance, rate
    assert torch.equal(labels[selected], ids[selected])
    assert (masked[selected] == tokenizer.mask_id).all()  # RTD: every selected token becomes [MASK]
    assert torch.equal(masked[~selected], ids[~selected])


def test_bert_mode_80_10_10(tokenizer, batch):
    ids = batch["input_ids"]
    masked, labels = run(tokenizer, batch, mode="bert")
    selected = labels != IGNORE
    assert abs(selected.sum() / candidates(tokenizer, batch).sum() - 0.15) / 0.15 < 0.01
    n = selected.sum()
    as_mask = (masked[selected] == tokenizer.mask_id).sum() / n
    unchanged = (masked[selected] == ids[selected]).sum() / n
    randomised = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01
    replaced = masked[selected & (masked != ids) & (masked != tokenizer.mask_id)]
    assert not torch.isin(replaced, torch.tensor(tokenizer.special_ids)).any()  # random tokens are ordinary


@pytest.mark.parametrize("mode", ["all_mask", "bert"])
@pytest.mark.parametrize("whole_word", [False, True])
def test_specials_and_padding_never_selected(tokenizer, batch, mode, whole_word):
    masked, labels = run(tokenizer, batch, mode=mode, whole_word=whole_word)
    never = ~candidates(tokenizer, batch)
    assert (labels[never] == IGNORE).all()
    assert torch.equal(masked[never], batch["input_ids"][never])


@pytest.mark.parametrize("mode", ["all_mask", "bert"])
def test_deterministic_per_generator_seed(tokenizer, batch, mode):
    a, b, c = (run(tokenizer, batch, seed=s, mode=mode) for s in (1, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_whole_word_selects_whole_words(tokenizer, batch):
    ids = batch["input_ids"]
    _, labels = run(tokenizer, batch, whole_word=True)
    selected = labels != IGNORE
    # A piece without the word-start marker continues the word of the piece before it (when both are candidates).
    continues = ~tokenizer.word_start[ids] & candidates(tokenizer, batch)
    continues[:, 0] = False
    both = continues[:, 1:] & candidates(tokenizer, batch)[:, :-1]
    assert torch.equal(selected[:, 1:][both], selected[:, :-1][both])
    assert both.sum() > 1000  # the text has many multi-piece words, so this checked something


def test_collator_pads_masks_and_repeats_per_seed(tokenizer):
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    blocks = [[cls] + list(range(10, 40)) + [sep], [cls, 50, 51, sep]]
    masker = Masker(tokenizer, mask_prob=0.3)
    first = MaskingCollator(tokenizer, masker, seed=5)(blocks)
    again = MaskingCollator(tokenizer, masker, seed=5)(blocks)
    assert first["input_ids"].shape == first["labels"].shape == first["attention_mask"].shape == (2, 32)
    assert first["attention_mask"][1].tolist() == [1] * 4 + [0] * 28
    assert (first["input_ids"][1, 4:] == tokenizer.pad_id).all()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert (first["labels"][0] != IGNORE).sum() == 9  # 0.3 x 30 candidates: a whole number, so exactly


@pytest.mark.parametrize("length", [128, 512])
@pytest.mark.parametrize("whole_word", [False, True])
def test_no_sequence_exceeds_the_prediction_slots_and_the_cap_keeps_the_rate(tokenizer, length, whole_word):
    """Packed blocks of real text, as pretraining sees them: no row selects more than `max_predictions(L)`
    (the model's fixed number of prediction slots), and the selected rate is the uncapped masker's to within
    0.5% of it: measured, the whole-word cap changed 0 rows of the valid slice at L = 512 and 0.08% of them at
    L = 128 (token masking never reaches it)."""
    with gzip.open(BUNDLED_VALID, "rt", encoding="utf-8") as f:
        ids = [i for line in tokenizer.encode_batch(f.read().split("\n")) for i in line]
    payload = length - 2
    blocks = [[tokenizer.cls_id] + ids[i:i + payload] + [tokenizer.sep_id]
              for i in range(0, len(ids) - payload, payload)][:300]
    packed = pad_blocks(blocks, tokenizer.pad_id, length)
    masker = Masker(tokenizer, whole_word=whole_word)
    slots = masker.max_predictions(length)
    assert slots == (20 if length == 128 else 77) + (3 if whole_word and length == 128 else 0) \
        + (11 if whole_word and length == 512 else 0)
    rates, uncapped_rates = [], []
    for seed in range(3):
        _, labels = masker(packed["input_ids"], packed["attention_mask"], torch.Generator().manual_seed(seed))
        counts = (labels != IGNORE).sum(1)
        assert counts.max() <= slots
        rates.append(counts.sum() / candidates(tokenizer, packed).sum())
        uncapped = Masker(tokenizer, whole_word=whole_word)
        uncapped.max_predictions = lambda length: length  # the same draws without the cap
        _, labels = uncapped(packed["input_ids"], packed["attention_mask"], torch.Generator().manual_seed(seed))
        uncapped_rates.append((labels != IGNORE).sum() / candidates(tokenizer, packed).sum())
    rate, uncapped_rate = sum(rates) / 3, sum(uncapped_rates) / 3
    assert abs(rate - uncapped_rate) / uncapped_rate < 0.005, (rate, uncapped_rate)
    assert abs(rate - 0.15) / 0.15 < (0.03 if whole_word else 0.01), rate
