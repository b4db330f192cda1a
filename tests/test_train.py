"""The trainer end to end on CPU: a smoke run, exact resume, and 2 processes against 1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from debertav3.train import load_config
from debertav3.train.checkpoint import complete_checkpoints
from debertav3.train.loop import train

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
                "recall", "lr", "grad_norm", "tokens_per_second"):
        assert len(logged[f"train/{tag}"]) == 30, tag
    for tag in ("E_G", "E_D", "E_Delta"):
        assert len(logged[f"embeddings/cosine_{tag}"]) == 6
    assert {10, 20, 30} <= set(logged["eval/loss"])
    for tag in ("train/mlm_loss", "train/rtd_loss"):
        curve = [logged[tag][s] for s in range(1, 31)]
        assert sum(curve[-5:]) < sum(curve[:5]), f"{tag} did not fall: {curve}"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000030"]


def final_weights(output_dir):
    return load_file(complete_checkpoints(output_dir)[-1] / "model.safetensors")


def test_resume_reproduces_uninterrupted_run(corpus, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(config(corpus, straight, "train.max_steps=8", "train.save_every=4"))
    train(config(corpus, interrupted, "train.max_steps=8", "train.save_every=4"), stop_after_steps=4)
    assert [p.name for p in complete_checkpoints(interrupted)] == ["step-00000004"]
    train(config(corpus, interrupted, "train.max_steps=8", "train.save_every=4"))  # resume=auto
    a, b = final_weights(straight), final_weights(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss_a, loss_b = scalars(straight)["train/loss"], scalars(interrupted)["train/loss"]
    assert loss_a == loss_b and len(loss_a) == 8


def test_resume_refuses_a_different_model(corpus, tmp_path):
    from debertav3.train.loop import UserError

    train(config(corpus, tmp_path, "train.max_steps=2"))
    with pytest.raises(UserError, match="different model"):
        train(config(corpus, tmp_path, "train.max_steps=4", "model.intermediate_size=256"))


@pytest.mark.slow
def test_two_processes_follow_one_process(corpus, tmp_path):
    """2 CPU processes at the same global batch as 1: same losses (dropout off).

    `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (its CPU launcher
    expects mpirun), so the two processes come from torchrun via --multi_gpu with ACCELERATE_USE_CPU=1.
    """
    common = [*corpus_overrides(corpus), "train.max_steps=6", "model.hidden_dropout_prob=0.0",
              "model.attention_probs_dropout_prob=0.0", "train.progress=false", "train.log_every=1",
              "model.vocab_size=8064", "model.hidden_size=64", "model.num_hidden_layers=2",
              "model.num_attention_heads=2", "model.intermediate_size=128", "data.max_seq_length=64",
              "data.num_proc=1"]
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
    for tag in ("train/loss", "train/mlm_loss", "train/rtd_loss"):
        for step in range(1, 7):
            assert two[tag][step] == pytest.approx(one[tag][step], rel=1e-4, abs=1e-5), (tag, step)
