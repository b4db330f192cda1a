"""What a run and an export publish gets the modes the user's umask gives (as `save_pretrained`'s files), not the
private ones of tempfile and safetensors' temporary files (0600 files in a 0700 directory)."""

import os
import stat
from pathlib import Path

import pytest

from conftest import SMALL_MODEL, corpus_overrides, write_corpus
from debertav3.train.export import export
from debertav3.train import load_config
from debertav3.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"model": SMALL_MODEL, "data": {"max_seq_length": 64, "num_proc": 1}, "optim": {"warmup_steps": 1},
          "train": {"batch_size": 4, "max_steps": 2, "save_every": 2, "eval_every": 2, "eval_batches": 1,
                    "progress": False}}


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Relative path -> octal permission bits, for `root` and everything below it."""
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


def test_checkpoints_and_exports_get_the_umask_modes(tmp_path, umask_022):
    corpus = write_corpus(tmp_path / "corpus", 40_000, 10_000)
    train(load_config(RECIPE, None, [f"train.output_dir={tmp_path / 'run'}", *corpus_overrides(corpus)]))
    export(tmp_path / "run", tmp_path / "export")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    published = {**modes(checkpoint), **{f"export/{k}": v for k, v in modes(tmp_path / "export").items()}}
    assert {"model.safetensors", "manifest.json", "export/model.safetensors", "export/rtd_head.safetensors"} <= \
        set(published)
    for name, mode in published.items():
        is_dir = (checkpoint / name).is_dir() or (tmp_path / name).is_dir()
        assert mode == ("0o755" if is_dir else "0o644"), (name, mode)
    assert modes(tmp_path / "run")["config.yaml"] == "0o644"  # written at start-up, atomically
