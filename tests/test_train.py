"""The trainer end to end on CPU: a smoke run, exact resume, and 2 processes against 1."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from debertav3.train import load_config
from debertav3.train.checkpoint import complete_checkpoints
from debertav3.train.loop import train
from debertav3.errors import CollapseWarning

from conftest import ROOT, SMALL_MODEL, corpus_overrides, write_corpus

SMALL = {
    "model": SMALL_MODEL,
    "data": {"max_seq_length": 64, "num_proc": 1},
    "optim": {"lr": 2e-3, "warmup_steps": 5},
    "train": {"batch_size": 8, "log_every": 1, "eval_every": 10, "eval_batches": 2, "embedding_stats_every": 5,
              "save_every": 1000, "progress": False},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 300_000, 30_000)


def config(corpus, output_dir, *overrides):
    return load_config(SMALL, None, [*corpus_overrides(corpus), f"train.output_dir={output_dir}", *overrides])


def scalars(output_dir) -> dict[str, dict[int, float]]:
    """Every scalar in the run's TensorBoard event files: tag -> {step: value}."""
    found = {}
    for run in Path(output_dir, "tensorboard").iterdir():
        events = EventAccumulator(str(run))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return found


def test_smoke_run_losses_fall_and_everything_is_logged(corpus, tmp_path):
    train(config(corpus, tmp_path, "train.max_steps=30"))
    logged = scalars(tmp_path)
    for tag in ("loss", "mlm_loss", "rtd_loss", "mlm_accuracy", "rtd_accuracy", "replaced_fraction", "precision",
                "recall", "rtd_auc", "rtd_loss_vs_prior", "lr", "grad_norm", "tokens_per_second"):
        assert len(logged[f"train/{tag}"]) == 30, tag
    for tag in ("E_G", "E_D", "E_Delta"):
        assert len(logged[f"embeddings/cosine_{tag}"]) == 6
    for tag in ("loss", "rtd_auc", "rtd_loss_vs_prior", "mlm_accuracy", "mlm_accuracy_unigram", "mlm_loss_unigram"):
        assert {10, 20, 30} <= set(logged[f"eval/{tag}"]), tag
    # the same masks at every evaluation: the targets' baselines do not move
    assert len(set(logged["eval/mlm_accuracy_unigram"].values())) == 1
    for tag in ("train/mlm_loss", "train/rtd_loss"):
        curve = [logged[tag][s] for s in range(1, 31)]
        assert sum(curve[-5:]) < sum(curve[:5]), f"{tag} did not fall: {curve}"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000030"]


def test_collapse_guard_warns_once_on_a_run_that_cannot_learn(corpus, tmp_path, capsys):
    cfg = config(corpus, tmp_path, "optim.lr=1e-9", "train.max_steps=20", "train.eval_batches=4",
                 "train.collapse_check_step=10")
    with pytest.warns(CollapseWarning) as record:
        train(cfg)
    collapse = [w for w in record if issubclass(w.category, CollapseWarning)]
    assert len(collapse) == 1, [str(w.message) for w in collapse]
    message = str(collapse[0].message)
    assert message.startswith("step 10: eval RTD AUC") and "has not learned to detect replacements" in message
    auc = scalars(tmp_path)["eval/rtd_auc"]
    assert set(auc) == {10, 20} and all(0.4 < v < 0.6 for v in auc.values()), auc
    summary = capsys.readouterr().out.split("pretraining finished")[-1]
    fired = re.search(r"collapse guard: fired at step 10 \(eval RTD AUC (0\.\d{3})\)", summary)
    assert fired and float(fired.group(1)) == pytest.approx(auc[10], abs=5e-4), summary


def test_a_learning_run_keeps_the_guard_silent_and_prints_its_summary(corpus, tmp_path, capsys):
    """Near-uniform replacements (high temperature) are easy to spot by token identity: a tiny model learns that
    in a few dozen steps (AUC 0.83, 0.88, 0.88 at steps 20, 40, 60 when this was written)."""
    cfg = config(corpus, tmp_path, "optim.lr=1e-3", "rtd.temperature=100", "train.max_steps=60",
                 "train.eval_every=20", "train.eval_batches=4", "train.collapse_check_step=20")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        logged = train(cfg)
    logged_eval = scalars(tmp_path)
    auc, ratio = logged_eval["eval/rtd_auc"], logged_eval["eval/rtd_loss_vs_prior"]
    assert set(auc) == {20, 40, 60} and min(auc.values()) > 0.75 and auc[60] > auc[20], auc
    assert ratio[60] < min(ratio[20], 0.8), ratio
    out = capsys.readouterr().out
    checkpoint = complete_checkpoints(tmp_path)[-1]
    tokens = json.loads((checkpoint / "trainer_state.json").read_text())["tokens_seen"]
    figures = (f"RTD AUC {logged['eval/rtd_auc']:.3f}, RTD loss / prior {logged['eval/rtd_loss_vs_prior']:.2f}, "
               f"MLM accuracy {logged['eval/mlm_accuracy']:.3f} (unigram {logged['eval/mlm_accuracy_unigram']:.3f})")
    assert "eval step 20: RTD AUC" in out and f"eval step 60: {figures}" in out
    summary = out.split("pretraining finished")[-1]
    assert summary.startswith(f" at step 60 of 60: {tokens:,} tokens seen, wall time")
    assert f"last eval (step 60): {figures}" in summary and "collapse guard" not in summary
    assert f"last checkpoint: {checkpoint}" in summary
    assert f"next: python tools/export.py {tmp_path} {tmp_path}-hf\n" in summary + "\n"


def test_an_mlm_run_reports_unigram_baselines_and_no_detection_metrics(corpus, tmp_path, capsys):
    logged = train(config(corpus, tmp_path, "objective=mlm", "train.max_steps=2"))
    assert 0 < logged["eval/mlm_accuracy_unigram"] < 1 and logged["eval/mlm_loss_unigram"] > 0
    assert not any("rtd" in k for k in logged), sorted(logged)
    summary = capsys.readouterr().out.split("pretraining finished")[-1]
    assert f"MLM accuracy {logged['eval/mlm_accuracy']:.3f} (unigram {logged['eval/mlm_accuracy_unigram']:.3f})" \
        in summary and "AUC" not in summary
    assert f"python tools/export.py {tmp_path} {tmp_path}-hf --part generator" in summary


def test_a_command_line_run_shows_the_collapse_warning_on_stderr(corpus, tmp_path):
    """What a user of a recipe sees: the warning on stderr (Python's default warning filters), the summary on
    stdout."""
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "rtd_tiny.py"), *corpus_overrides(corpus),
                             f"train.output_dir={tmp_path}", "train.max_steps=4", "train.eval_every=2",
                             "train.eval_batches=1", "train.collapse_check_step=2", "optim.lr=1e-9",
                             "train.progress=false", "data.max_seq_length=64", "train.batch_size=4",
                             "data.num_proc=1", *(f"model.{k}={v}" for k, v in SMALL_MODEL.items())],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("\nwarning: step 2: eval RTD AUC") == 1, result.stderr[-3000:]
    assert "warnings.warn" not in result.stderr  # one line, without Python's source line
    assert "pretraining finished at step 4 of 4" in result.stdout
    assert "collapse guard: fired at step 2" in result.stdout


def final_weights(output_dir):
    return load_file(complete_checkpoints(output_dir)[-1] / "model.safetensors")


@pytest.mark.parametrize("objective", ["rtd", "arlm", "mt"])
def test_resume_reproduces_uninterrupted_run(corpus, tmp_path, objective):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    settings = ("train.max_steps=8", "train.save_every=4", f"objective={objective}")
    train(config(corpus, straight, *settings))
    train(config(corpus, interrupted, *settings), stop_after_steps=4)
    assert [p.name for p in complete_checkpoints(interrupted)] == ["step-00000004"]
    train(config(corpus, interrupted, *settings))  # resume=auto
    a, b = final_weights(straight), final_weights(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss_a, loss_b = scalars(straight)["train/loss"], scalars(interrupted)["train/loss"]
    assert loss_a == loss_b and len(loss_a) == 8


def test_resume_refuses_a_different_model(corpus, tmp_path):
    from debertav3.errors import UserError

    train(config(corpus, tmp_path, "train.max_steps=2"))
    with pytest.raises(UserError, match="different model"):
        train(config(corpus, tmp_path, "train.max_steps=4", "model.intermediate_size=256"))


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["joint", "decoupled"])
def test_two_processes_follow_one_process(corpus, tmp_path, schedule):
    """2 CPU processes at the same global batch as 1: same losses (dropout off), in either rtd.schedule (the
    decoupled one runs DDP with unused parameters allowed: each stage leaves the other network without gradients).

    `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (its CPU launcher
    expects mpirun), so the two processes come from torchrun via --multi_gpu with ACCELERATE_USE_CPU=1.
    """
    common = [*corpus_overrides(corpus), "train.max_steps=6", "model.hidden_dropout_prob=0.0",
              "model.attention_probs_dropout_prob=0.0", "train.progress=false", "train.log_every=1",
              "model.vocab_size=8064", "model.hidden_size=64", "model.num_hidden_layers=2",
              "model.num_attention_heads=2", "model.intermediate_size=128", "data.max_seq_length=64",
              "data.num_proc=1", f"rtd.schedule={schedule}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    for processes, batch in ((1, 8), (2, 4)):
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--multi_gpu"] if processes > 1 else ["--cpu"]
        result = subprocess.run([*launch, str(ROOT / "recipes" / "rtd_tiny.py"), *common,
                                 f"train.batch_size={batch}", f"train.output_dir={tmp_path / str(processes)}"],
                                capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = scalars(tmp_path / "1"), scalars(tmp_path / "2")
    # A batch of 4 and a batch of 8 round the generator's probabilities differently (~1e-7), so a uniform that
    # falls that close to a cdf edge draws the neighbouring token (objective/sampling.py) and that position's RTD
    # loss differs (one such draw moved the mean over the 8 x 64 positions by 7e-5). RTD gets room for two
    # such positions (each moves the mean by well under 1/512 here); the MLM loss does not depend on the draws,
    # and under GDES no RTD gradient reaches the generator, so it stays exact.
    few_draws = 2 / (8 * 64)
    tolerance = {"train/mlm_loss": {"abs": 1e-5}, "train/rtd_loss": {"abs": few_draws},
                 "train/loss": {"abs": 1e-5 + 50 * few_draws}}
    for tag, room in tolerance.items():
        for step in range(1, 7):
            assert two[tag][step] == pytest.approx(one[tag][step], rel=1e-4, **room), (tag, step)
    # pooled over processes: the gathered scores and summed target counts of 2 processes are 1 process's
    for tag in ("eval/rtd_auc", "eval/rtd_loss_vs_prior", "eval/mlm_accuracy_unigram", "eval/mlm_loss_unigram"):
        assert two[tag][6] == pytest.approx(one[tag][6], rel=1e-4), tag
