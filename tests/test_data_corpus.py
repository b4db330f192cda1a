"""Corpus pipeline: documents, packing, held-out split, streaming = map-style, bad input (debertav3.data.corpus)."""

import gzip
import itertools
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from debertav3.data import BlockStream, Masker, MaskingCollator, Tokenizer, build_datasets, pad_blocks
from debertav3.data.corpus import BUNDLED_VALID
from debertav3.data.config import DataConfig

LENGTH = 64  # max_seq_length in these tests: 62 ids between [CLS] and [SEP]
# Words per document, and the blocks each gives at LENGTH 64: pieces under 8 ids are dropped.
WORDS = [3, 20, 62, 63, 130, 500, 7, 1000]
EXPECTED_BLOCKS = [0, 1, 1, 1, 2, 8, 0, 17]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load(None)


@pytest.fixture(scope="module")
def words(tok):
    """(word, id) pairs of words that are one piece each, so a document of one repeated word has one id."""
    found = []
    for i in range(100, tok.mask_id):
        piece = tok.sp.id_to_piece(i)
        word = piece[1:]
        if piece.startswith("\u2581") and word.isalpha() and len(word) > 2 and tok.encode_batch([word]) == [[i]]:
            found.append((word, i))
    assert len(found) >= 300
    return found


def config(tmp_path, files, **kwargs):
    kwargs = {"valid_fraction": 0.0, "num_proc": 1, "max_seq_length": LENGTH, "cache_dir": str(tmp_path / "cache"),
              **kwargs}
    return DataConfig(train_files=[str(f) for f in files], **kwargs)


def write_documents(path, docs, mode):
    """Documents as lines ("line") or as paragraphs of 25 words between blank lines ("blank_line")."""
    if mode == "line":
        text = "".join(" ".join(doc) + "\n" for doc in docs)
    else:
        text = "\n".join("".join(" ".join(doc[i:i + 25]) + "\n" for i in range(0, len(doc), 25)) for doc in docs)
    path.write_text(text, encoding="utf-8")
    return path


def contents(block):
    return block[1:-1]


@pytest.mark.parametrize("mode", ["blank_line", "line"])
def test_blocks_never_cross_documents(tmp_path, tok, words, mode):
    docs = [[words[k][0]] * n for k, n in enumerate(WORDS)]
    corpus = write_documents(tmp_path / "docs.txt", docs, mode)
    train, valid = build_datasets(config(tmp_path, [corpus], documents=mode), tok, seed=0)
    blocks = [train[i] for i in range(len(train))]
    assert len(valid) == 0
    assert all(b[0] == tok.cls_id and b[-1] == tok.sep_id and len(b) <= LENGTH for b in blocks)
    document_of = {words[k][1]: k for k in range(len(docs))}
    owner = [{document_of[t] for t in contents(b)} for b in blocks]
    assert all(len(o) == 1 for o in owner)  # one document each
    per_doc = [sum(o == {k} for o in owner) for k in range(len(docs))]
    assert per_doc == EXPECTED_BLOCKS
    assert [min(o) for o in owner] == sorted(min(o) for o in owner)  # in corpus order


def test_pack_across_documents_fills_blocks(tmp_path, tok, words):
    docs = [[words[k][0]] * n for k, n in enumerate(WORDS)]
    corpus = write_documents(tmp_path / "docs.txt", docs, "blank_line")
    separate, _ = build_datasets(config(tmp_path, [corpus]), tok, seed=0)
    packed, _ = build_datasets(config(tmp_path, [corpus], pack_across_documents=True), tok, seed=0)
    packed = [packed[i] for i in range(len(packed))]
    assert len(packed) < len(separate)
    assert all(len(b) == LENGTH for b in packed[:-1])
    joined = [t for k, doc in enumerate(docs) for t in [words[k][1]] * len(doc) + [tok.sep_id]][:-1]
    flat = [t for b in packed for t in contents(b)]
    assert flat == joined[:len(flat)] and len(joined) - len(flat) < 8  # only a tail under 8 ids is dropped


def test_streaming_gives_the_same_blocks(tmp_path, tok):
    cfg = dict(documents="line", valid_fraction=0.05, max_seq_length=128)
    mapped, mapped_valid = build_datasets(config(tmp_path, [BUNDLED_VALID], **cfg), tok, seed=7)
    streamed, streamed_valid = build_datasets(config(tmp_path, [BUNDLED_VALID], streaming=True, **cfg), tok, seed=7)
    assert isinstance(streamed, BlockStream) and isinstance(streamed, torch.utils.data.IterableDataset)
    first = list(itertools.islice(iter(streamed), 100))
    assert first == [mapped[i] for i in range(100)]
    assert len(streamed_valid) == len(mapped_valid) > 0
    assert all(streamed_valid[i] == mapped_valid[i] for i in range(len(mapped_valid)))
    assert list(itertools.islice(iter(streamed), 3)) == first[:3]  # a new pass starts again from the first block


def test_held_out_documents(tmp_path, tok, words):
    docs = [[w] * 10 for w, _ in words[:300]]
    corpus = write_documents(tmp_path / "docs.txt", docs, "line")
    cfg = config(tmp_path, [corpus], documents="line", valid_fraction=0.2)

    def split(seed):
        train, valid = build_datasets(cfg, tok, seed)
        return ({contents(train[i])[0] for i in range(len(train))}, {contents(valid[i])[0] for i in range(len(valid))})

    train, valid = split(seed=1)
    assert not train & valid and len(train) + len(valid) == 300  # whole documents, each on one side
    assert 30 <= len(valid) <= 90  # 20% of 300
    assert split(seed=1) == (train, valid) and split(seed=2)[1] != valid
    cfg.max_valid_blocks = 5
    assert len(build_datasets(cfg, tok, 1)[1]) == 5


def test_bundled_corpus_by_default(tmp_path, tok):
    train, valid = build_datasets(DataConfig(cache_dir=str(tmp_path)), tok, seed=0)
    assert len(train) > 2000 and 100 < len(valid) <= 256  # the slice and its held-out books
    assert train[0][0] == tok.cls_id and len(train[0]) == 512


def test_formats_jsonl_parquet_gzip(tmp_path, tok, words):
    texts = [" ".join([w] * 30) for w, _ in words[:6]]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(texts[:2])))
    pq.write_table(pa.table({"body": texts[2:4]}), tmp_path / "b.parquet")
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(texts[4:]) + "\n")
    cfg = config(tmp_path, [tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "*.txt.gz"], text_field="body",
                 documents="line", num_proc=2)
    train, _ = build_datasets(cfg, tok, seed=0)
    assert [contents(train[i]) for i in range(len(train))] == [[i] * 30 for _, i in words[:6]]


def test_edited_file_is_read_again(tmp_path, tok, words):
    corpus = write_documents(tmp_path / "docs.txt", [[words[0][0]] * 20], "line")
    assert build_datasets(config(tmp_path, [corpus]), tok, 0)[0][0][1] == words[0][1]
    write_documents(corpus, [[words[1][0]] * 30], "line")
    assert build_datasets(config(tmp_path, [corpus]), tok, 0)[0][0][1] == words[1][1]


def test_undecodable_lines_are_skipped_and_counted(tmp_path, tok, words, caplog):
    good = " ".join([words[0][0]] * 20).encode()
    (tmp_path / "mixed.txt").write_bytes(good + b"\n" + b"caf\xe9 \xff\xfe latin-1\n" + good + b"\n\x80\n")
    with caplog.at_level(logging.WARNING, logger="debertav3.data.sources"):
        train, _ = build_datasets(config(tmp_path, [tmp_path / "mixed.txt"], documents="line"), tok, seed=0)
    assert len(train) == 2
    assert any("mixed.txt: skipped 2 line(s)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_input(tmp_path, tok, streaming):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "short.txt").write_text("Too short.\n")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"content": "no text field"}) + "\n")
    cases = {"file not found: .*missing.txt": [tmp_path / "missing.txt"],
             "'.*nothing-\\*.txt' matches no file": [tmp_path / "nothing-*.txt"],
             "data.train_files: no text in .*blank.txt": [tmp_path / "blank.txt"],
             "short.txt.*no training document gives a block": [tmp_path / "short.txt"],
             "binary.txt is binary": [tmp_path / "binary.txt"],
             "rows.jsonl does not start with a JSON object that has a 'text'": [tmp_path / "rows.jsonl"]}
    for message, files in cases.items():
        with pytest.raises(ValueError, match=message):
            build_datasets(config(tmp_path, files, streaming=streaming), tok, seed=0)
    with pytest.raises(ValueError, match="data.dataset_name or data.train_files"):
        build_datasets(config(tmp_path, [BUNDLED_VALID], dataset_name="some/corpus"), tok, seed=0)


def test_pad_blocks_and_collator_in_a_dataloader(tmp_path, tok):
    batch = pad_blocks([[1, 5, 6, 2], [1, 7, 2], torch.tensor([1, 2])], pad_id=tok.pad_id)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 0], [1, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    train, _ = build_datasets(config(tmp_path, [BUNDLED_VALID], streaming=True), tok, seed=0)
    loader = torch.utils.data.DataLoader(train, batch_size=4, collate_fn=MaskingCollator(tok, Masker(tok), seed=0))
    first = next(iter(loader))
    assert first["input_ids"].shape == first["labels"].shape == (4, LENGTH)
    assert (first["input_ids"] == tok.mask_id).sum() == (first["labels"] != -100).sum() > 0
