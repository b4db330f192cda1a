"""Corpus pipeline on `datasets`: documents -> ids -> blocks "[CLS] ... [SEP]", with a held-out split.

- Map-style (default): the documents are read once into an Arrow cache (`cache_dir`), then tokenised and packed
  by `num_proc` processes; `datasets` memory-maps the result and reuses it on the next run (the cache keys
  cover each file's size and mtime, the tokenizer, the settings and the code of this package's data modules).
- Streaming (`streaming=true`): the same functions run lazily on an `IterableDataset`, so memory does not grow
  with the corpus; the blocks come in the same order as the map-style ones.
- Packing: a document is cut into blocks of `max_seq_length` ([CLS], up to max_seq_length - 2 ids, [SEP]); its
  last piece makes a shorter block, and pieces of fewer than MIN_BLOCK_TOKENS ids are dropped. Blocks never mix
  documents unless `pack_across_documents`: then the documents of each batch of ROWS_PER_BATCH are joined with
  [SEP] and cut into full blocks (RoBERTa's FULL-SENTENCES), only the batch's last block being shorter.
- Held-out split: the documents of `valid_files`; else each document is held out with probability
  `valid_fraction` by a hash of (seed, file, position), so both modes hold out the same documents without a
  first pass to count them. At most `max_valid_blocks` blocks are kept. The bundled corpus comes with its own
  held-out books.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import torch

from .config import DataConfig
from ..validation import check_writable
from . import sources, tokenizer as tokenizer_module
from ..errors import DamagedFile, UserError
from .sources import iter_documents, resolve_files
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[1] / "resources" / "corpus"
BUNDLED_TRAIN = RESOURCES / "gutenberg_slice.txt.gz"
BUNDLED_VALID = RESOURCES / "gutenberg_slice_valid.txt.gz"
MIN_BLOCK_TOKENS = 8
# Documents per Arrow write and per packing call: with documents of at most 256 Ki characters (sources.py), a
# batch holds at most 16 Mi characters, and their ids at ~4 bytes a token (see _encode).
ROWS_PER_BATCH = 64
ENCODE_CHARS = 1 << 20  # characters per SentencePiece call within a batch (see _encode)
DOC_FEATURES = datasets.Features({"text": datasets.Value("string"), "doc": datasets.Value("int64")})
BLOCK_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))})
# Part of every cache key: `datasets` hashes the functions it is given, not the module code they call.
CODE_VERSION = hashlib.sha256(b"".join(Path(m.__file__).read_bytes()
                                       for m in (sources, tokenizer_module))
                              + Path(__file__).read_bytes()).hexdigest()[:16]


class Blocks(torch.utils.data.Dataset):
    """Map-style blocks: item i is block i as a list of ids."""

    def __init__(self, table: datasets.Dataset):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> list[int]:
        return self.table[index]["input_ids"]


class BlockStream(torch.utils.data.IterableDataset):
    """Streamed blocks, each a list of ids; every iteration starts again from the first block."""

    def __init__(self, stream: datasets.IterableDataset):
        self.stream = stream

    def __iter__(self):
        # `datasets` splits its shards (files) between DataLoader workers when iterated inside one. Rows hold
        # the int32 arrays of `_pack_batch` as they are (no Arrow round trip when streaming).
        return (row["input_ids"].tolist() for row in self.stream)


def pad_blocks(blocks: list, pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """input_ids [B, L] padded on the right with `pad_id` to `length` (default: the longest block),
    attention_mask [B, L] of 1/0."""
    ids = [torch.as_tensor(block, dtype=torch.long) for block in blocks]
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
    if length is not None:
        input_ids = torch.nn.functional.pad(input_ids, (0, length - input_ids.shape[1]), value=pad_id)
    lengths = torch.tensor([len(block) for block in ids])
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def build_datasets(cfg: DataConfig, tokenizer: Tokenizer, seed: int) -> tuple[torch.utils.data.Dataset, Blocks]:
    """(train, valid): train is `Blocks` (or `BlockStream` when `cfg.streaming`), valid is `Blocks`."""
    if cfg.dataset_name and cfg.train_files:
        raise UserError("set data.dataset_name or data.train_files, not both")
    if cfg.cache_dir:
        check_writable(cfg.cache_dir, "data.cache_dir")
    bundled = not cfg.train_files and not cfg.dataset_name
    valid_files = cfg.valid_files or ([str(BUNDLED_VALID)] if bundled else [])
    if cfg.dataset_name:
        docs, where = _hub_documents(cfg), f"data.dataset_name {cfg.dataset_name!r}"
    else:
        docs, where = _file_documents(cfg, cfg.train_files or [str(BUNDLED_TRAIN)], "data.train_files")
    if valid_files:
        valid_docs, _ = _file_documents(cfg, valid_files, "data.valid_files")
        train, valid_blocks = _pack(docs, cfg, tokenizer), _pack(valid_docs, cfg, tokenizer)
    else:
        train = _pack(docs, cfg, tokenizer, (seed, cfg.valid_fraction, False))
        valid_blocks = _pack(docs, cfg, tokenizer, (seed, cfg.valid_fraction, True)) if cfg.valid_fraction else []
    if next(iter(train), None) is None:
        raise UserError(f"{where}: no training document gives a block of >= {MIN_BLOCK_TOKENS} tokens")
    valid_rows = [row["input_ids"] for row in itertools.islice(valid_blocks, cfg.max_valid_blocks)]
    if not valid_rows:
        logger.warning("no held-out block: data.valid_fraction=%s selected no document; set data.valid_files "
                       "(or a larger data.valid_fraction) to evaluate", cfg.valid_fraction)
    valid = Blocks(datasets.Dataset.from_dict({"input_ids": valid_rows}, features=BLOCK_FEATURES))
    return (BlockStream(train) if cfg.streaming else Blocks(train)), valid


def _generate_documents(files: list[tuple[int, str]], documents: str, text_field: str):
    """Rows {"text", "doc"}; doc = file index << 32 | position in the file, the key of the held-out split."""
    for index, path in files:
        for position, text in enumerate(iter_documents(path, documents, text_field)):
            yield {"text": text, "doc": index << 32 | position}


def _file_documents(cfg: DataConfig, patterns: list[str], setting: str):
    """(documents of the files matching `patterns`, a description of them for messages)."""
    files = resolve_files(patterns, setting, cfg.text_field)
    # Reads up to the first document (all of an empty file): `datasets` would fail on no rows, less clearly.
    if all(next(iter_documents(path, cfg.documents, cfg.text_field), None) is None for path in files):
        raise UserError(f"{setting}: no text in {files}")
    kwargs = dict(files=list(enumerate(os.path.abspath(p) for p in files)), documents=cfg.documents,
                  text_field=cfg.text_field)
    where = f"{setting} {files}"
    if cfg.streaming:  # no `features` when streaming: datasets would then cast every row, which slows streaming
        return datasets.IterableDataset.from_generator(_generate_documents, gen_kwargs=kwargs), where
    # The cache key covers each file's size and modification time, so an edited file is read again.
    stamps = [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
    num_proc = min(cfg.num_proc, len(files))  # `datasets` gives each process whole files
    try:
        with _without_progress_bars():
            docs = datasets.Dataset.from_generator(_generate_documents, features=DOC_FEATURES, gen_kwargs=kwargs,
                                                   cache_dir=cfg.cache_dir,
                                                   num_proc=num_proc if num_proc > 1 else None,
                                                   writer_batch_size=ROWS_PER_BATCH,
                                                   fingerprint=_fingerprint(kwargs, stamps))
    except datasets.exceptions.DatasetGenerationError as exc:
        damaged = _damaged_file(exc)
        if damaged is None:
            raise
        raise damaged from None
    return docs, where


@contextlib.contextmanager
def _without_progress_bars():
    """`datasets`' progress bars off for the block, unless the user asked for them (HF_DATASETS_DISABLE_PROGRESS_BARS=0)

    Reading the documents into the Arrow cache draws "Generating train split" bars that tell a user nothing to act
    on, before the run's header; tokenizing keeps its "tokenize and pack" bar, the step a large corpus waits on."""
    if datasets.are_progress_bars_disabled() or datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is False:
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _damaged_file(exc: datasets.exceptions.DatasetGenerationError) -> DamagedFile | None:
    """The `DamagedFile` behind `datasets`' DatasetGenerationError: its cause in this process; from a worker of
    `num_proc`, only the text of the worker's traceback comes back (multiprocess pickles no cause), so the
    error's line is read from it."""
    if isinstance(exc.__cause__, DamagedFile):
        return exc.__cause__
    marker = f"{DamagedFile.__module__}.{DamagedFile.__qualname__}: "
    lines = [line[len(marker):] for line in str(exc.__cause__).splitlines() if line.startswith(marker)]
    return DamagedFile(lines[0]) if lines else None


def _fingerprint(*parts) -> str:
    return datasets.fingerprint.Hasher.hash((CODE_VERSION, *parts))


def _hub_documents(cfg: DataConfig):
    """A hub dataset's train split as rows {"text", "doc"} (for users who have one; needs the network or its cache)."""
    try:
        ds = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config, split="train", streaming=cfg.streaming,
                                   cache_dir=cfg.cache_dir)
    except (ConnectionError, FileNotFoundError) as exc:  # datasets' DatasetNotFoundError is a FileNotFoundError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"data.dataset_name {cfg.dataset_name!r} cannot be loaded ({reason}); check the name, "
                        "data.dataset_config and the network (or the datasets cache), or give data.train_files") \
            from None
    if ds.column_names is not None and cfg.text_field not in ds.column_names:
        raise UserError(f"data.text_field {cfg.text_field!r} is not a column of {cfg.dataset_name}: {ds.column_names}")
    return ds.map(_as_document, with_indices=True, batched=True, input_columns=cfg.text_field).select_columns(
        ["text", "doc"])


def _as_document(texts: list[str], indices: list[int]) -> dict:
    return {"text": texts, "doc": indices}


def _held_out(keys: list[int], seed: int, fraction: float) -> list[bool]:
    """Whether each document is held out: a splitmix64 hash of (seed, doc key) mapped to [0, 1) is < fraction."""
    with np.errstate(over="ignore"):
        x = np.asarray(keys, dtype=np.uint64) + np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction).tolist()


def _pack(docs, cfg: DataConfig, tokenizer: Tokenizer, split: tuple[int, float, bool] | None = None):
    """Tokenise and pack `docs` (those of one side of the held-out `split`, if given) into rows {"input_ids"}.

    The same function gives the same blocks in both modes. Selecting documents here rather than with a
    `filter` spares the tokenisation of the other side and a second pass over the rows.
    """
    settings = dict(tokenizer=tokenizer, length=cfg.max_seq_length, across=cfg.pack_across_documents, split=split)
    kwargs = dict(batched=True, batch_size=ROWS_PER_BATCH, remove_columns=["text", "doc"], fn_kwargs=settings)
    if isinstance(docs, datasets.IterableDataset):
        return docs.map(_pack_batch, **kwargs)
    num_proc = min(cfg.num_proc, len(docs))
    return docs.map(_pack_batch, num_proc=num_proc if num_proc > 1 else None, features=BLOCK_FEATURES,
                    new_fingerprint=_fingerprint(docs._fingerprint, settings), desc="tokenize and pack", **kwargs)


def _pack_batch(batch: dict, tokenizer: Tokenizer, length: int, across: bool, split: tuple | None) -> dict:
    texts = batch["text"]
    if split is not None:
        seed, fraction, held_out = split
        texts = [text for text, held in zip(texts, _held_out(batch["doc"], seed, fraction)) if held == held_out]
    docs = _encode(tokenizer, texts)
    cls, sep = np.array([tokenizer.cls_id], dtype=np.int32), np.array([tokenizer.sep_id], dtype=np.int32)
    if across:
        docs = [np.concatenate([part for doc in docs for part in (doc, sep)][:-1])] if docs else []
    payload = length - 2
    shortest = min(MIN_BLOCK_TOKENS, payload)
    blocks = [np.concatenate((cls, doc[i:i + payload], sep))
              for doc in docs for i in range(0, len(doc), payload) if len(doc) - i >= shortest]
    return {"input_ids": blocks}


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Ids of each text as int32, encoded ENCODE_CHARS at a time: Python's lists of ints take ~40 bytes a token,
    so converting each group at once keeps a batch's memory at ~4 bytes a token."""
    group = np.cumsum([len(text) for text in texts]) // ENCODE_CHARS
    arrays = []
    for _, members in itertools.groupby(range(len(texts)), key=group.__getitem__):
        members = list(members)
        arrays += [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(texts[members[0]:members[-1] + 1])]
    return arrays
