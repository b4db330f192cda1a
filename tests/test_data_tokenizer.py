"""Tokenizer: DeBERTa-v3 ids, training (library and command line), parity with transformers, bad input."""

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from debertav3.data import Tokenizer, train_tokenizer
from debertav3.data.corpus import BUNDLED_VALID

REPO = Path(__file__).resolve().parents[1]
EDGE_CASES = ["Tabs\tand\nline breaks", "  leading and trailing spaces  ", "two  spaces", "cafe\u0301 (NFD)",
              "Wait\u2026 \u201cquoted\u201d \u2014 dash", "", "x"]


@pytest.fixture(scope="module")
def lines():
    with gzip.open(BUNDLED_VALID, "rt", encoding="utf-8") as f:
        return [line for line in f.read().split("\n") if line]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lines):
    """A 600-piece unigram model trained on the bundled held-out book given as .txt, .txt.gz and .jsonl."""
    root = tmp_path_factory.mktemp("corpus")
    third = len(lines) // 3
    (root / "a.txt").write_text("\n".join(lines[:third]) + "\n", encoding="utf-8")
    with gzip.open(root / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[third:2 * third]) + "\n")
    (root / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[2 * third:]))
    inputs = [str(root / "a.txt"), str(root / "b.txt.gz"), str(root / "c.jsonl")]
    return train_tokenizer(inputs, 600, root / "tokenizer", seed=3)


def test_bundled_ids():
    tok = Tokenizer.load(None)
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 8000)
    assert tok.special_ids == (0, 1, 2, 3, 8000) and tok.vocab_size == 8001
    assert tok.word_start.shape == (8001,) and tok.word_start.dtype == torch.bool
    the = tok.encode_batch(["the"])[0]
    assert len(the) == 1 and tok.word_start[the[0]] and not tok.word_start[list(tok.special_ids)].any()


def test_encode_decode_and_normalisation():
    tok = Tokenizer.load(None)
    text = "It was the best of times, it was the worst of times."
    ids = tok.encode_batch([text])[0]
    assert tok.decode(ids) == text
    assert tok.decode([tok.cls_id] + ids + [tok.sep_id, tok.pad_id]) == text
    assert "[MASK]" in tok.decode(ids[:3] + [tok.mask_id] + ids[4:])
    a, b, c, d = tok.encode_batch(["a\tb", "a b", "cafe\u0301", "caf\u00e9"])
    assert a == b and c == d  # tabs are spaces, NFC applies (as in transformers)
    assert tok.encode_batch([]) == []


def test_pickle_keeps_the_model():
    tok = Tokenizer.load(None)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode_batch(["A pickled tokenizer."]) == tok.encode_batch(["A pickled tokenizer."])
    assert copy.directory == tok.directory


def test_trained_model_has_deberta_ids_and_only_the_final_directory(trained):
    directory = Path(trained.directory)
    assert sorted(p.name for p in directory.iterdir()) == ["spm.model", "tokenizer_config.json"]
    assert [p.name for p in directory.parent.iterdir() if p.name.startswith(".")] == []  # no staging left
    assert trained.mask_id == 600 and trained.vocab_size == 601
    assert [trained.sp.id_to_piece(i) for i in range(4)] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    reloaded = Tokenizer.load(directory)
    assert reloaded.encode_batch(["Some words"]) == trained.encode_batch(["Some words"])


def test_save_exports_a_loadable_directory(tmp_path):
    tok = Tokenizer.load(None)
    tok.save(tmp_path / "export")
    assert Tokenizer.load(tmp_path / "export").encode_batch(["Exported."]) == tok.encode_batch(["Exported."])


@pytest.mark.parametrize("which", ["trained", "bundled"])
def test_same_ids_as_transformers(which, trained, lines):
    transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency (parity check)")
    ours = trained if which == "trained" else Tokenizer.load(None)
    theirs = transformers.AutoTokenizer.from_pretrained(ours.directory)
    assert type(theirs).__name__ == "DebertaV2Tokenizer"
    assert (theirs.pad_token_id, theirs.cls_token_id, theirs.sep_token_id, theirs.unk_token_id,
            theirs.mask_token_id) == ours.special_ids
    assert theirs.convert_tokens_to_ids("[MASK]") == ours.mask_id == ours.vocab_size - 1
    texts = lines + EDGE_CASES
    assert ours.encode_batch(texts) == theirs(texts, add_special_tokens=False)["input_ids"]
    assert theirs(lines[0])["input_ids"] == [ours.cls_id] + ours.encode_batch(lines[:1])[0] + [ours.sep_id]


def test_check_fits():
    tok = Tokenizer.load(None)
    tok.check_fits(8001)
    with pytest.raises(ValueError, match=r"model\.vocab_size \(8000\).*resources/tokenizer.*>= 8001"):
        tok.check_fits(8000)


def test_load_errors(tmp_path, lines):
    with pytest.raises(ValueError, match="no spm.model in"):
        Tokenizer.load(tmp_path)
    # SentencePiece's own defaults (<unk>=0, <s>=1, </s>=2) are not DeBERTa-v3's ids.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "spm"),
                                   vocab_size=300, minloglevel=2)
    with pytest.raises(ValueError, match="not DeBERTa-v3's"):
        Tokenizer.load(tmp_path)


def test_train_errors(tmp_path, lines):
    (tmp_path / "empty.txt").write_text("\n \n\n")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "small.txt").write_text("tiny corpus\n")
    cases = {"file not found": ([str(tmp_path / "missing.txt")], 300),
             "no text in": ([str(tmp_path / "empty.txt")], 300),
             "is binary": ([str(tmp_path / "binary.bin")], 300),
             "Vocabulary size too high": ([str(tmp_path / "small.txt")], 300),
             "must be > 4": ([str(tmp_path / "small.txt")], 4)}
    for message, (inputs, size) in cases.items():
        with pytest.raises(ValueError, match=message):
            train_tokenizer(inputs, size, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        train_tokenizer([str(tmp_path / "small.txt")], 300, tmp_path / "out")


def run_tool(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_tokenizer.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_command_line(tmp_path, lines):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ok = run_tool("--input", str(corpus), "--vocab-size", "400", "--output", str(tmp_path / "tok"))
    assert ok.returncode == 0, ok.stderr
    assert Tokenizer.load(tmp_path / "tok").mask_id == 400
    bad = run_tool("--input", str(tmp_path / "nope.txt"), "--vocab-size", "400", "--output", str(tmp_path / "x"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "nope.txt" in bad.stderr
    assert not (tmp_path / "x").exists()
