"""Bad input to the pretraining command: one line `error: ...` naming the problem, exit code 2, no traceback,
and nothing lost or half-written. docs/reliability.md lists each case with its message."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from debertav3.train import main
from debertav3.train.checkpoint import complete_checkpoints

from conftest import SMALL_MODEL, corpus_overrides, the_line, write_corpus

SMALL = {
    "model": SMALL_MODEL,
    "data": {"max_seq_length": 64, "num_proc": 1},
    "train": {"batch_size": 4, "max_steps": 2, "save_every": 2, "eval_every": 2, "eval_batches": 1,
              "progress": False},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = write_corpus(tmp_path_factory.mktemp("inputs"), 60_000, 10_000)
    (folder / "empty.txt").write_text("\n\n")
    (folder / "binary.bin").write_bytes(os.urandom(4096) + b"\x00" * 4096)
    (folder / "a_file").write_text("not a directory")
    return folder


def run(capsys, files, output_dir, *overrides):
    """main() as the command line runs it; returns (exit code, the one error line that ends stderr)."""
    with pytest.raises(SystemExit) as info:
        main(SMALL, [*corpus_overrides(files), f"train.output_dir={output_dir}", *overrides])
    return info.value.code, the_line(capsys.readouterr().err) + "\n"


CASES = {
    "unknown config key": (["train.max_stepz=3"], "train.max_stepz"),
    "wrong type": (["train.max_steps=many"], "train.max_steps"),
    "zero size": (["train.batch_size=0"], "train.batch_size must be positive"),
    "negative size": (["model.hidden_size=-64"], "model.hidden_size must be positive"),
    "hidden not divisible by heads": (["model.num_attention_heads=3"], "divisible"),
    "unknown embedding_sharing": (["rtd.embedding_sharing=tied"], "rtd.embedding_sharing"),
    "missing corpus": (["data.train_files=[{files}/missing.txt]"], "missing.txt"),
    "empty corpus": (["data.train_files=[{files}/empty.txt]"], "empty.txt"),
    "binary file as corpus": (["data.train_files=[{files}/binary.bin]"], "binary.bin"),
    "tokenizer and model vocabulary mismatch": (["model.vocab_size=1000"], "model.vocab_size"),
    "max_seq_length beyond max_position_embeddings": (["data.max_seq_length=1024"], "max_position_embeddings"),
    "unwritable output directory": (["train.output_dir={files}/a_file/run"], "train.output_dir"),
    "missing YAML config": (["--config", "{files}/nope.yaml"], "nope.yaml"),
    "resume from a missing checkpoint": (["train.resume={files}/no-such-checkpoint"], "train.resume"),
    "init from a missing model directory": (["model.init_discriminator={files}/no-model"], "no-model"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_in_one_line(name, files, tmp_path, capsys):
    overrides, expected = CASES[name]
    overrides = [o.format(files=files) for o in overrides]
    code, err = run(capsys, files, tmp_path / "run", *overrides)
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert not complete_checkpoints(tmp_path / "run")


def test_resume_with_a_different_model_config(files, tmp_path, capsys):
    assert main(SMALL, [*corpus_overrides(files), f"train.output_dir={tmp_path}"]) is not None
    before = load_file(complete_checkpoints(tmp_path)[-1] / "model.safetensors")
    code, err = run(capsys, files, tmp_path, "train.max_steps=4", "model.intermediate_size=256")
    assert code == 2 and "different model" in err and err.count("\n") == 1
    after = load_file(complete_checkpoints(tmp_path)[-1] / "model.safetensors")
    assert before.keys() == after.keys()  # the checkpoint it refused is untouched


def test_disk_full_while_checkpointing(files, tmp_path, capsys, monkeypatch):
    """The second save fails with ENOSPC: one line, the first checkpoint intact, no temporary left behind."""
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = []

    def save_state(self, output_dir, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    code, err = run(capsys, files, tmp_path, "train.max_steps=4")
    assert code == 2 and "No space left on device" in err and err.count("\n") == 1
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002"]
    assert load_file(complete_checkpoints(tmp_path)[0] / "model.safetensors")
    assert not list((tmp_path / "checkpoints").glob(".step-*"))


def test_a_refused_run_leaves_no_new_directory(files, tmp_path, capsys):
    """Refused at start-up (here a data.cache_dir under a file): the output directory it created, and the parents
    it created for it, are gone; a directory that existed before stays."""
    bad_cache = f"data.cache_dir={files}/a_file/cache"
    code, err = run(capsys, files, tmp_path / "new" / "run", bad_cache)
    assert code == 2 and "data.cache_dir" in err
    assert not (tmp_path / "new").exists()
    (tmp_path / "existing").mkdir()
    code, err = run(capsys, files, tmp_path / "existing", bad_cache)
    assert code == 2 and (tmp_path / "existing").is_dir()


INTERNAL_VALUE_ERROR = """
import sys
import debertav3.train.loop as loop
from debertav3.train import main

def build_model(cfg, special_ids, device_type):
    raise ValueError("an internal check failed")

loop.build_model = build_model
main({{"model": {model}, "train": {{"progress": False}}}}, sys.argv[1:])
"""


def test_a_bug_is_not_reported_as_a_user_mistake(tmp_path):
    """A ValueError from inside the trainer (a failed internal check) keeps its traceback and is not exit status 2;
    a bad config value, in the same run, is one line and status 2."""
    script = INTERNAL_VALUE_ERROR.format(model=SMALL_MODEL)
    command = [sys.executable, "-c", script, f"train.output_dir={tmp_path / 'run'}"]
    bug = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert bug.returncode not in (0, 2) and "Traceback" in bug.stderr
    assert bug.stderr.rstrip().endswith("ValueError: an internal check failed"), bug.stderr[-2000:]
    mistake = subprocess.run([*command, "optim.lr=-1"], capture_output=True, text=True, timeout=300)
    assert mistake.returncode == 2
    assert the_line(mistake.stderr) == "error: optim.lr must be a finite number > 0, got -1.0"
