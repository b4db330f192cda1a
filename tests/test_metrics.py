"""debertav3.objective.metrics against hand-computed values and scikit-learn, and the run report's formatting."""

import math
from pathlib import Path

import pytest
import torch

from debertav3.objective.metrics import (binary_entropy, prior_relative_loss, roc_auc, target_counts,
                               unigram_baselines)
from debertav3.train.report import CollapseGuard, format_summary, progress_postfix


def auc(scores, labels):
    return roc_auc(torch.tensor(scores, dtype=torch.float), torch.tensor(labels, dtype=torch.float)).item()


def test_roc_auc_perfect_reversed_and_all_tied():
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == 0.5


def test_roc_auc_with_ties_by_hand():
    # scores 0.1 0.4 0.4 0.8, labels 0 1 0 1. Pairs (positive, negative): (0.4, 0.1) 1, (0.4, 0.4) tie 1/2,
    # (0.8, 0.1) 1, (0.8, 0.4) 1 -> 3.5 / 4 = 0.875. By ranks: 1, 2.5, 2.5, 4; positives 2.5 + 4 = 6.5;
    # (6.5 - 2 * 3 / 2) / (2 * 2) = 3.5 / 4.
    assert auc([0.1, 0.4, 0.4, 0.8], [0, 1, 0, 1]) == 0.875
    # scores 2 1 2 1 3, labels 1 0 0 1 0 (order must not matter). Positives 2, 1; negatives 1, 2, 3.
    # 2 vs (1, 2, 3): 1 + 1/2 + 0; 1 vs (1, 2, 3): 1/2 + 0 + 0 -> 2 / 6. Ranks: the 1s 1.5, the 2s 3.5, the 3 5;
    # positives 3.5 + 1.5 = 5; (5 - 3) / 6 = 1/3.
    assert auc([2, 1, 2, 1, 3], [1, 0, 0, 1, 0]) == pytest.approx(1 / 3, abs=1e-7)


def test_roc_auc_is_nan_without_both_classes():
    assert math.isnan(auc([0.1, 0.5, 0.9], [0, 0, 0]))
    assert math.isnan(auc([0.1, 0.5, 0.9], [1, 1, 1]))
    assert math.isnan(auc([], []))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_on_random_data_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(5000, generator=gen) < 0.15).float()
    scores = torch.randint(0, 20, (5000,), generator=gen).float() + labels * 2  # many ties, some signal
    assert roc_auc(scores, labels).item() == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-6)


def test_metrics_have_fixed_shapes_so_no_host_sync():
    """On the meta device a data-dependent shape (mask indexing) or a host read (.item()) raises."""
    scores, labels = torch.randn(64, device="meta"), torch.ones(64, device="meta")
    assert roc_auc(scores, labels).shape == ()
    assert prior_relative_loss(scores, labels).shape == ()


def test_binary_entropy_by_hand():
    assert binary_entropy(torch.tensor(0.5)).item() == pytest.approx(math.log(2))
    q = 0.14
    assert binary_entropy(torch.tensor(q)).item() == pytest.approx(-q * math.log(q) - (1 - q) * math.log(1 - q))
    assert binary_entropy(torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]


def test_prior_relative_loss_is_one_at_the_prior_and_below_when_informed():
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # q = 1/4
    prior_logit = torch.full_like(targets, math.log(0.25 / 0.75))
    assert prior_relative_loss(prior_logit, targets).item() == pytest.approx(1.0, abs=1e-12)
    informed = torch.where(targets > 0, 2.0, -2.0).double()
    # BCE of +-2 on the right side: ln(1 + e^-2) = 0.12693; H(1/4) = 0.56234 -> 0.22572
    prior = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert prior_relative_loss(informed, targets).item() == pytest.approx(math.log1p(math.exp(-2)) / prior)
    assert prior_relative_loss(informed, targets).item() == pytest.approx(0.22572, abs=1e-5)
    assert prior_relative_loss(-informed, targets).item() > 1.0


def test_prior_relative_loss_is_nan_not_inf_without_replacements():
    for targets in (torch.zeros(5), torch.ones(5)):
        assert math.isnan(prior_relative_loss(torch.zeros(5), targets).item())


def test_unigram_baselines_by_hand():
    # targets 7 7 7 3 3 5: the best constant guess 7 is right 3 / 6 times; p = (1/2, 1/3, 1/6), so the
    # best constant distribution's cross-entropy is -(1/2 ln 1/2 + 1/3 ln 1/3 + 1/6 ln 1/6) = 1.011404
    counts = target_counts(torch.tensor([7, 3, 7, 5, 7, 3]), 10)
    assert counts.tolist() == [0, 0, 0, 2, 0, 1, 0, 3, 0, 0]
    accuracy, loss = unigram_baselines(counts)
    assert accuracy.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6))
    assert loss.item() == pytest.approx(1.011404, abs=1e-6)


def test_collapse_guard_fires_once_from_its_step_on_and_never_when_disabled():
    guard = CollapseGuard(check_step=100, threshold=0.6)
    assert guard.check(50, 0.5) is None  # too early
    assert guard.check(100, 0.7) is None  # learned
    assert guard.check(150, float("nan")) is None  # no replaced token evaluated
    message = guard.check(200, 0.55)
    assert "step 200" in message and "0.550" in message and "optim.lr" in message
    assert "training-dynamics.md" in message and guard.fired == (200, 0.55)
    assert guard.check(300, 0.5) is None and guard.fired == (200, 0.55)
    assert CollapseGuard(check_step=0, threshold=0.6).check(10_000, 0.5) is None


def test_summary_of_a_stopped_mlm_run_without_evaluation():
    text = format_summary(step=30, max_steps=100, tokens_seen=12345, wall_seconds=75, objective="mlm",
                          output_dir=Path("runs/m"), checkpoint=Path("runs/m/checkpoints/step-00000030"),
                          evaluation={}, eval_step=None, stopped_by="SIGTERM")
    assert "stopped (SIGTERM) at step 30 of 100" in text and "12,345 tokens" in text and "1 min 15 s" in text
    assert "none yet" in text and "train.resume=auto" in text and "AUC" not in text
    assert "python tools/export.py runs/m runs/m-hf --part generator" in text


def test_progress_postfix_is_short_and_shows_eval_auc_once_known():
    logged = dict(loss=1.23456, rtd_auc=0.7123, rtd_loss_vs_prior=0.912, mlm_accuracy=0.25, tokens_per_second=999.6)
    assert progress_postfix(logged, None) == dict(loss="1.235", auc="0.71", rtd_prior="0.91", mlm_acc="0.25",
                                                  tok_s="1000")
    assert progress_postfix(logged, 0.8)["eval_auc"] == "0.80"
