"""The count-based bigram detector (hand-computed scores, what it can and cannot detect) and
tools/task_difficulty.py, which must reproduce the trainer's own eval AUC on the same batches."""

import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMALL_MODEL, corpus_overrides, the_line, write_corpus
from debertav3.ablation.difficulty import measure
from debertav3.objective.bigram import BigramDetector
from debertav3.objective.metrics import roc_auc
from debertav3.train import load_config
from debertav3.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_scores_by_hand():
    # One block 0 1 2 0 1: pairs (0,1) x2, (1,2), (2,0); unigram counts 2, 2, 1 (N = 5); as left token 2, 1, 1.
    detector = BigramDetector([[0, 1, 2, 0, 1]], vocab_size=3, smoothing=0.1)
    p = [3 / 8, 3 / 8, 2 / 8]  # (c + 1) / (N + V)
    kv = 0.1 * 3
    p_1_after_0 = (2 + kv * p[1]) / (2 + kv)
    p_2_after_1 = (1 + kv * p[2]) / (1 + kv)
    p_0_after_1 = (0 + kv * p[0]) / (1 + kv)  # a pair never seen: the unigram share alone
    p_2_after_2 = (0 + kv * p[2]) / (1 + kv)
    scores = detector.scores(torch.tensor([[0, 1, 2], [1, 2, 2]]))
    expected_fits = [-(math.log(p_1_after_0 / p[1]) + math.log(p_2_after_1 / p[2])),
                     -(math.log(p_2_after_1 / p[2]) + math.log(p_2_after_2 / p[2]))]
    assert scores[:, 0].tolist() == [0, 0] and scores[:, 2].tolist() == [0, 0]
    assert scores[:, 1].tolist() == pytest.approx(expected_fits, rel=1e-12)
    assert detector.count(torch.tensor([1, 0]), torch.tensor([0, 1])).tolist() == [0, 2]
    assert detector.log_next(torch.tensor([1]), torch.tensor([0])).exp().item() == pytest.approx(p_0_after_1)


def replaced(blocks, vocab, seed):
    """Each block with every token replaced by a uniform draw at rate 0.2 (never at the ends): ids, labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor(blocks)
    where = torch.rand(ids.shape, generator=gen) < 0.2
    where[:, [0, -1]] = False
    new = ids.masked_scatter(where, torch.randint(0, vocab, (int(where.sum()),), generator=gen))
    return new, (new != ids).double()


def test_detects_what_bigrams_know_and_nothing_else():
    vocab, gen = 50, torch.Generator().manual_seed(0)
    # Text with a fixed successor for every token: a replacement breaks both of its pairs.
    chain = [[(start + i) % vocab for i in range(40)] for start in range(0, 200, 7)]
    ids, labels = replaced(chain, vocab, seed=1)
    assert roc_auc(BigramDetector(chain, vocab).scores(ids).flatten(), labels.flatten()) > 0.95
    # Independent uniform tokens: no pair is more likely than another, so the scores carry no signal.
    noise = torch.randint(0, vocab, (400, 40), generator=gen).tolist()
    ids, labels = replaced(torch.randint(0, vocab, (200, 40), generator=gen).tolist(), vocab, seed=2)
    assert abs(roc_auc(BigramDetector(noise, vocab).scores(ids).flatten(), labels.flatten()) - 0.5) < 0.05


def test_needs_text_to_count():
    with pytest.raises(ValueError, match="non-empty block"):
        BigramDetector([], vocab_size=10)


RECIPE = {"model": SMALL_MODEL, "data": {"max_seq_length": 64}, "optim": {"warmup_steps": 1},
          "train": {"batch_size": 4, "max_steps": 4, "save_every": 2, "eval_every": 4, "eval_batches": 2,
                    "log_every": 1, "progress": False}}


def test_tool_reproduces_the_trainers_eval(tmp_path):
    out = tmp_path / "run"
    corpus = write_corpus(tmp_path / "corpus", 40_000, 20_000)
    final = train(load_config(RECIPE, None, [f"train.output_dir={out}", *corpus_overrides(corpus)]))
    rows = measure(str(out), batches=None, max_tokens=10**6)
    assert [r["step"] for r in rows] == [2, 4]
    # The same blocks, masks and samples as the trainer's eval: the same AUC, to float rounding.
    assert rows[-1]["rtd_auc"] == pytest.approx(final["eval/rtd_auc"], abs=1e-6)
    assert rows[0]["rtd_auc"] != rows[-1]["rtd_auc"]  # each checkpoint's own weights
    for row in rows:
        assert 0 <= row["bigram_auc"] <= 1 and 0 <= row["sample_is_original"] <= 1
    # Unigram samples do not depend on the checkpoint, so the detector scores them the same at every step, while
    # the discriminator's score on them follows its weights.
    assert rows[0]["bigram_auc_unigram_samples"] == rows[-1]["bigram_auc_unigram_samples"]
    assert rows[0]["rtd_auc_unigram_samples"] != rows[-1]["rtd_auc_unigram_samples"]
    one = measure(str(out / "checkpoints" / "step-00000002"), batches=1, max_tokens=10**6)
    assert len(one) == 1 and one[0]["step"] == 2


def test_tool_bad_input_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "task_difficulty.py"), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert "is not a complete checkpoint" in the_line(result.stderr)
