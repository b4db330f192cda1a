"""The reference path stands alone: with debertav3/ops removed, the package imports, `auto` resolves to the
reference on every device, a fast path asked for by name is refused in one line, and pretraining runs and learns
(its loss falls) on the reference."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # an end-to-end run: see pyproject.toml's markers

SCRIPT = r"""
import json, sys
# An editable install's finder would find debertav3.ops in the checkout; only the copy may be imported.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__name__", type(f).__name__).lower()]
import debertav3
try:
    import debertav3.ops
    raise AssertionError("debertav3.ops is still importable")
except ModuleNotFoundError:
    pass
from debertav3.model import implementations
from debertav3.train import load_config
from debertav3.train.loop import train

assert debertav3.__file__.startswith(sys.argv[1]), debertav3.__file__
resolved = {kind: implementations.resolve_name(kind, "auto", "cpu") for kind in implementations.NAMES}
try:
    implementations.resolve("attention", "sdpa")
    refused = None
except Exception as exc:
    refused = f"{type(exc).__name__}: {exc}"
cfg = load_config(None, None, [
    "model.vocab_size=8064", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=64", "data.max_seq_length=32", "optim.lr=3e-3", "optim.warmup_steps=5",
    f"train.output_dir={sys.argv[2]}", "train.batch_size=8", "train.max_steps=40", "train.eval_every=1000",
    "train.save_every=1000", "train.log_every=10", "train.progress=false", "train.collapse_check_step=0"])
train(cfg)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(str(next(__import__("pathlib").Path(sys.argv[2], "tensorboard").rglob("events.*")).parent))
events.Reload()
loss = [e.value for e in events.Scalars("train/loss")]
print(json.dumps({"resolved": resolved, "refused": refused, "loss": loss}))
"""


def test_training_runs_on_the_reference_path_without_the_ops_package(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "debertav3", copy / "debertav3", ignore=shutil.ignore_patterns("ops", "__pycache__"))
    assert not (copy / "debertav3" / "ops").exists()
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(copy), str(tmp_path / "run")], cwd=tmp_path,
                            env={"PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                 "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["resolved"] == {"attention": "eager", "mlm_loss": "eager", "dropout": "eager"}
    assert report["refused"].startswith("ConfigError: model.attention_impl 'sdpa' is not available")
    loss = report["loss"]
    assert len(loss) == 4 and loss[-1] < 0.9 * loss[0], loss  # logged every 10 of 40 steps: it learns
