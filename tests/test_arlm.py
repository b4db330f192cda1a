"""The auto-regressive objective, DeBERTa-MT's task mix, perplexity windows and sampling, against hand-computed
cases (objective/arlm.py, train/config.py MTConfig, debertav3/lm)."""

import math

import pytest
import torch
import torch.nn.functional as F

from debertav3.constants import IGNORE_INDEX
from debertav3.errors import ConfigError
from debertav3.lm.load import CausalLM
from debertav3.lm.sample import generate, next_token_probabilities
from debertav3.lm.score import perplexity, text_windows
from debertav3.model import MaskedLMModel
from debertav3.model.config import preset
from debertav3.objective.arlm import next_token_labels, next_token_loss
from debertav3.objective.rtd import RTDModel
from debertav3.train import load_config
from debertav3.train.config import MTConfig

SPECIAL = torch.tensor([0, 1, 2, 3, 4])


def tiny(emd=True, **overrides):
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)
    torch.manual_seed(0)
    return MaskedLMModel(cfg, enhanced_mask_decoder=emd).eval()


def test_next_token_labels_by_hand():
    ids = torch.tensor([[1, 10, 11, 12, 2, 0], [1, 20, 4, 21, 22, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    x = IGNORE_INDEX
    # [SEP] (2), padding and a special id inside the text (4) are never targets; the last position has none.
    assert next_token_labels(ids, mask, SPECIAL).tolist() == [[10, 11, 12, x, x, x], [20, x, 21, 22, x, x]]


@pytest.mark.parametrize("emd", [True, False])
def test_next_token_loss_is_the_mean_cross_entropy_of_the_following_tokens(emd):
    model = tiny(emd)
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = next_token_labels(ids, mask, SPECIAL)
    count = (labels != IGNORE_INDEX).sum()
    loss, accuracy = next_token_loss(model, model.deberta.embeddings.word_embeddings.weight, ids, mask, labels,
                                     count.float())
    # By hand: run each prefix on its own (no later token exists to leak) and score the token that follows it.
    losses, hits = [], []
    for b in range(2):
        for i in range(ids.shape[1] - 1):
            if labels[b, i] == IGNORE_INDEX:
                continue
            prefix = ids[b: b + 1, : i + 1]
            logits = model(prefix, torch.ones_like(prefix), None, causal=True)[0, -1]
            losses.append(-F.log_softmax(logits, -1)[ids[b, i + 1]])
            hits.append(float(logits.argmax() == ids[b, i + 1]))
    assert len(losses) == count
    torch.testing.assert_close(loss, torch.stack(losses).mean(), rtol=1e-5, atol=1e-5)
    assert accuracy.item() == pytest.approx(sum(hits) / len(hits))


def test_rtd_model_routes_the_causal_task_by_objective():
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = torch.randint(5, 1000, (2, 8))
    mask = torch.ones_like(ids)
    labels = next_token_labels(ids, mask, SPECIAL)
    arlm = RTDModel(cfg, None, objective="arlm")
    out = arlm(ids, mask, labels, causal=True)
    assert out.mlm_loss is None and out.rtd_loss is None and torch.equal(out.loss, out.arlm_loss)
    with pytest.raises(ValueError, match="objective arlm only has the causal task"):
        arlm(ids, mask, labels)
    with pytest.raises(ValueError, match="objective rtd has no causal task"):
        RTDModel(cfg, cfg, objective="rtd")(ids, mask, labels, causal=True)
    mt = RTDModel(cfg, None, objective="mt")
    masked = torch.full_like(ids, IGNORE_INDEX)
    masked[:, 3] = ids[:, 3]
    assert mt(ids, mask, masked).mlm_loss is not None and mt(ids, mask, labels, causal=True).arlm_loss is not None


@pytest.mark.parametrize("fraction,first", [(0.5, [0, 1, 0, 1, 0, 1]), (1 / 3, [0, 0, 1, 0, 0, 1]),
                                            (0.25, [0, 0, 0, 1, 0, 0, 0, 1])])
def test_mt_spreads_the_arlm_steps_evenly(fraction, first):
    mt = MTConfig(fraction)
    assert [int(mt.causal_step(s)) for s in range(len(first))] == first
    assert sum(mt.causal_step(s) for s in range(1200)) == round(1200 * fraction)


@pytest.mark.parametrize("overrides,message", [
    (["objective=arlm", "rtd.rtd_weight=10"], "rtd.rtd_weight set with objective=arlm, which ignores it; remove it "
                                              "or use objective=rtd"),
    (["objective=arlm", "data.mask_prob=0.2"], "data.mask_prob set with objective=arlm, which ignores it; remove it "
                                               "or use objective=mlm or mt or rtd"),
    (["objective=rtd", "mt.arlm_fraction=0.3"], "mt.arlm_fraction set with objective=rtd, which ignores it; remove "
                                                "it or use objective=mt"),
    (["objective=mt", "mt.arlm_fraction=1.0"], "mt.arlm_fraction must be in (0, 1)"),
])
def test_settings_an_objective_ignores_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, None, overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_windows_by_hand():
    doc = list(range(100, 120))  # 20 tokens; length 10 holds 8 between [CLS] (1) and [SEP] (2)
    blocks = text_windows([doc], 10, 8, 1, 2)
    # Stride = payload: the trainer's blocks; the last 4 tokens make a piece under 8 tokens, skipped as it does.
    assert blocks.input_ids == [[1, *range(100, 108), 2], [1, *range(108, 116), 2]]
    assert blocks.first_scored == [1, 1]
    sliding = text_windows([doc], 10, 4, 1, 2)  # the first window scores 8, each later one 4 after 4 of context
    assert sliding.input_ids == [[1, *range(100, 108), 2], [1, *range(104, 112), 2], [1, *range(108, 116), 2],
                                 [1, *range(112, 120), 2]]
    assert sliding.first_scored == [1, 5, 5, 5]
    assert text_windows([list(range(7))], 10, 8, 1, 2).input_ids == []


class FakeTokenizer:
    pad_id, cls_id, sep_id = 0, 1, 2
    special_ids = (0, 1, 2, 3, 4)


def test_perplexity_is_the_exponent_of_the_mean_cross_entropy_of_the_scored_tokens():
    lm = CausalLM(tiny(), FakeTokenizer(), 12)
    docs = [list(range(10, 40)), list(range(50, 62))]
    windows = text_windows(docs, 12, 5, 1, 2)
    result = perplexity(lm, windows, batch_size=3)
    nll, count = 0.0, 0
    for ids, first in zip(windows.input_ids, windows.first_scored):
        logits = lm.next_token_logits(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
        for target in range(first, len(ids) - 1):  # the [SEP] at the end is not scored
            nll -= F.log_softmax(logits[target - 1].double(), -1)[ids[target]].item()
            count += 1
    # The second document's last 2 tokens make a window of 5 + 2 < 8 tokens, skipped as the trainer skips them.
    assert result["tokens"] == count == sum(len(d) for d in docs) - 2
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    targets = [ids[t] for ids, first in zip(windows.input_ids, windows.first_scored)
               for t in range(first, len(ids) - 1)]
    shares = [targets.count(t) / len(targets) for t in set(targets)]
    assert result["unigram_perplexity"] == pytest.approx(math.exp(-sum(p * math.log(p) for p in shares)), rel=1e-6)


def test_sampling_filters_by_hand():
    logits = torch.log(torch.tensor([0.3, 0.05, 0.3, 0.2, 0.1, 0.05]))  # ids 0 and 2 special here
    special = torch.tensor([0, 2])
    base = next_token_probabilities(logits, special, 1.0)
    torch.testing.assert_close(base, torch.tensor([0, 0.125, 0, 0.5, 0.25, 0.125]))
    torch.testing.assert_close(next_token_probabilities(logits, special, 1.0, top_k=2),
                               torch.tensor([0, 0, 0, 2 / 3, 1 / 3, 0]))
    # top-p 0.6: 0.5 alone does not reach it, 0.5 + 0.25 does: ids 3 and 4.
    torch.testing.assert_close(next_token_probabilities(logits, special, 1.0, top_p=0.6),
                               torch.tensor([0, 0, 0, 2 / 3, 1 / 3, 0]))
    torch.testing.assert_close(next_token_probabilities(logits, special, 0.0), torch.eye(6)[3])
    hot = next_token_probabilities(logits, special, 0.5)  # p^(1/T), renormalised
    torch.testing.assert_close(hot, torch.tensor([0, 0.125, 0, 0.5, 0.25, 0.125]) ** 2 / 0.34375)


def test_generation_is_seeded_and_slides_past_the_window():
    lm = CausalLM(tiny(), FakeTokenizer(), 12)
    first = generate(lm, [10, 11, 12], 20, seed=3)
    assert first == generate(lm, [10, 11, 12], 20, seed=3) and first != generate(lm, [10, 11, 12], 20, seed=4)
    assert len(first) == 20 and not set(first) & set(FakeTokenizer.special_ids)
    assert generate(lm, [10, 11, 12], 5, temperature=0) == generate(lm, [10, 11, 12], 5, temperature=0, seed=9)
