"""Non-finite loss or gradients: `train.nonfinite=skip` skips and counts the update, `stop` saves and stops."""

import json

import pytest
import torch
from safetensors.torch import load_file

from debertav3.objective.rtd import RTDModel
from debertav3.train import load_config
from debertav3.train.checkpoint import complete_checkpoints
from debertav3.errors import UserError
from debertav3.train.loop import train

from conftest import SMALL_MODEL, write_corpus

POISONED_STEP = 3


@pytest.fixture
def poisoned(monkeypatch):
    """Make the loss of the third training forward pass NaN (eval is off, so forward calls are steps)."""
    real_forward, calls = RTDModel.forward, []

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == POISONED_STEP:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(RTDModel, "forward", forward)


def config(tmp_path, *overrides):
    corpus = write_corpus(tmp_path / "corpus", 60_000) / "train.txt"
    recipe = {"model": SMALL_MODEL,
              "data": {"max_seq_length": 64, "num_proc": 1, "train_files": [str(corpus)], "valid_fraction": 0.0},
              "train": {"batch_size": 4, "max_steps": 6, "eval_every": 1000, "log_every": 1, "save_every": 1000,
                        "progress": False, "output_dir": str(tmp_path / "run")}}
    return load_config(recipe, None, list(overrides))


def test_skip_policy_skips_and_counts(tmp_path, poisoned):
    train(config(tmp_path, "train.nonfinite=skip"))
    checkpoint = complete_checkpoints(tmp_path / "run")[-1]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["skipped_steps"] == 1
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_stop_policy_saves_last_good_state(tmp_path, poisoned):
    with pytest.raises(UserError, match=f"non-finite gradients at step {POISONED_STEP}"):
        train(config(tmp_path, "train.nonfinite=stop"))
    saved = complete_checkpoints(tmp_path / "run")
    assert [p.name for p in saved] == [f"step-{POISONED_STEP - 1:08d}"]
    assert all(torch.isfinite(w).all() for w in load_file(saved[0] / "model.safetensors").values())
