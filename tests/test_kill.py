"""Crash safety: SIGKILL at random moments and during checkpoint writes, resume, same final parameters.

Also SIGTERM: the trainer finishes the step, writes a checkpoint and exits cleanly with a message and its summary.
"""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from debertav3.train.checkpoint import complete_checkpoints

from conftest import ROOT, SMALL_MODEL, corpus_overrides, write_corpus

MAX_STEPS = 100
KILLS = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 200_000, 20_000)


def command(corpus, output_dir):
    return [sys.executable, str(ROOT / "recipes" / "rtd_tiny.py"), f"train.output_dir={output_dir}",
            *corpus_overrides(corpus), f"train.max_steps={MAX_STEPS}", "train.save_every=3", "train.keep_last=2",
            "train.eval_every=50", "train.eval_batches=1", "train.log_every=5", "train.progress=false",
            "data.max_seq_length=64", "train.batch_size=8", "data.num_proc=1",
            *(f"model.{k}={v}" for k, v in SMALL_MODEL.items())]


def assert_checkpoints_loadable(output_dir):
    """Every checkpoint that resume could pick is whole: its weights, optimizer and state all read back."""
    for checkpoint in complete_checkpoints(output_dir):
        assert load_file(checkpoint / "model.safetensors")
        json.loads((checkpoint / "trainer_state.json").read_text())
        torch.load(checkpoint / "optimizer.bin", weights_only=False)
        assert (checkpoint / "config.yaml").is_file() and (checkpoint / "tokenizer" / "spm.model").is_file()


def latest_step(output_dir):
    done = complete_checkpoints(output_dir)
    return int(done[-1].name.split("-")[1]) if done else 0


def wait_for(predicate, process, timeout=120.0):
    """Poll quickly until predicate() holds or the process ends; True if the predicate held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_repeated_sigkill_then_resume_matches_uninterrupted_run(corpus, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(command(corpus, reference), check=True, capture_output=True, timeout=600)
    rng = random.Random(0)
    kills, during_save = 0, 0
    while True:
        process = subprocess.Popen(command(corpus, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills < KILLS:
            start = latest_step(killed)
            if kills % 2:  # during a checkpoint write: as soon as its temporary directory appears
                hit = wait_for(lambda: any((killed / "checkpoints").glob(".step-*.tmp")), process)
                during_save += hit
            else:  # at a random moment of training, after it has made some progress
                wait_for(lambda: latest_step(killed) > start, process)
                time.sleep(rng.uniform(0.0, 0.4))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
            assert_checkpoints_loadable(killed)
            continue
        assert process.wait(timeout=600) == 0
        break
    assert kills >= 10 and during_save >= 3, (kills, during_save)
    expected, got = (load_file(complete_checkpoints(d)[-1] / "model.safetensors") for d in (reference, killed))
    assert latest_step(killed) == MAX_STEPS
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    process = subprocess.Popen(command(corpus, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    assert wait_for(lambda: latest_step(tmp_path) >= 3, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-2000:]
    assert "received SIGTERM: saved step" in output
    step = latest_step(tmp_path)
    assert 3 <= step < MAX_STEPS
    assert f"pretraining stopped (SIGTERM) at step {step} of {MAX_STEPS}" in output, output[-2000:]
    assert f"last checkpoint: {tmp_path / 'checkpoints' / f'step-{step:08d}'}" in output
    assert_checkpoints_loadable(tmp_path)
