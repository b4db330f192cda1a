"""Shared test scaffolding: a small model recipe and small corpora cut from the bundled English slice."""

import gzip
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CORPUS = ROOT / "debertav3" / "resources" / "corpus" / "gutenberg_slice.txt.gz"
GLUE_FIXTURES = ROOT / "tests" / "fixtures" / "glue"  # synthetic SST-2 and CoLA files (make_glue_like.py there)

# A model small enough for many CPU runs per test file, sized for the bundled 8001-id tokenizer. Dropout is set
# explicitly (rtd_tiny has none): resume and multi-process tests must also reproduce the dropout masks.
SMALL_MODEL = {"vocab_size": 8064, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 128, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def write_corpus(folder: Path, train_chars: int, valid_chars: int = 0) -> Path:
    """train.txt (and valid.txt) in `folder`: consecutive pieces of the bundled slice, so quick to tokenize."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(BUNDLED_CORPUS, "rt") as fh:
        (folder / "train.txt").write_text(fh.read(train_chars))
        if valid_chars:
            (folder / "valid.txt").write_text(fh.read(valid_chars))
    return folder


def corpus_overrides(folder: Path) -> list[str]:
    """`key=value` overrides pointing a run at `write_corpus`'s files."""
    overrides = [f"data.train_files=[{folder / 'train.txt'}]"]
    if (folder / "valid.txt").exists():
        overrides.append(f"data.valid_files=[{folder / 'valid.txt'}]")
    return overrides


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP's waiting threads make a run
    several times slower (tests/test_finetune.py's SST-2 run: 14 s with one thread, 100+ s with two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def the_line(err: str, kind: str = "error") -> str:
    """The one `error: ...` / `interrupted: ...` line, which ends stderr (progress bars may come before it)."""
    assert "Traceback" not in err, err
    found = re.findall(r"(?:error|interrupted): [^\r\n]*", err)
    assert len(found) == 1 and found[0].startswith(f"{kind}: ") and err.rstrip("\n").endswith(found[0]), err
    return found[0]
