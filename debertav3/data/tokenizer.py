"""SentencePiece vocabulary with DeBERTa-v3's special ids, and how to train one.

Ids (docs/reference.md, "Special ids"): [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 are SentencePiece's pad/bos/eos/unk pieces,
and [MASK] is the first id after the SentencePiece vocabulary (128000 in the released models). A tokenizer
directory holds `spm.model` and a `tokenizer_config.json`, so `transformers.AutoTokenizer.from_pretrained(dir)`
builds a `DebertaV2Tokenizer` with the same ids, [MASK] included.

Normalisation: transformers 5's DebertaV2Tokenizer ignores the normaliser stored in spm.model; it applies NFC and
turns tabs and line breaks into spaces. So we train with SentencePiece's `identity` rule and apply that same
normalisation in Python (`normalize`) before encoding and training. SentencePiece's default (nmt_nfkc) would
give other ids than transformers for characters such as "…" or "ﬁ".
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm
import torch

from ..errors import UserError
from ..io_utils import apply_umask
from ..validation import check_number
from ..validation import check_writable
from .sources import iter_documents, resolve_files

SPECIAL_PIECES = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")  # ids 0, 1, 2, 3
MASK_PIECE = "[MASK]"
MODEL_FILE = "spm.model"
WORD_START = "\u2581"  # SentencePiece's whitespace marker: a piece that begins a word starts with it
BUNDLED_TOKENIZER = Path(__file__).resolve().parents[1] / "resources" / "tokenizer"
MODEL_TYPES = ("unigram", "bpe")
# Longer lines are skipped by the SentencePiece trainer; its default (4192 bytes) would drop long paragraphs.
MAX_SENTENCE_BYTES = 1 << 16
MIN_CHARACTER_COVERAGE = 0.98  # the trainer refuses less (trainer_interface.cc)


def normalize(text: str) -> str:
    """transformers' DebertaV2Tokenizer normalisation: NFC, tabs and line breaks as spaces.

    SentencePiece then collapses runs of spaces and strips the ends, as transformers does. (transformers also
    collapses runs of other Unicode spaces, such as two no-break spaces; those are rare and left as they are.)
    """
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text.replace("\n", " ").replace("\r", " ").replace("\t", " ")


class Tokenizer:
    """A SentencePiece model with DeBERTa-v3's special ids; `vocab_size` is the smallest model vocabulary that fits."""

    pad_id, cls_id, sep_id, unk_id = 0, 1, 2, 3

    def __init__(self, model_proto: bytes, directory: str):
        self.directory = directory
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        size = self.sp.get_piece_size()
        pieces = tuple(self.sp.id_to_piece(i) for i in range(min(size, len(SPECIAL_PIECES))))
        if pieces != SPECIAL_PIECES:
            raise UserError(f"{directory}/{MODEL_FILE} has {list(pieces)} at ids 0-3, not DeBERTa-v3's "
                            f"{list(SPECIAL_PIECES)}; train it with tools/train_tokenizer.py")
        self.mask_id = size
        self.vocab_size = size + 1
        self.special_ids = (self.pad_id, self.cls_id, self.sep_id, self.unk_id, self.mask_id)
        # For whole-word masking; the specials and [MASK] are not pieces that begin with the marker.
        starts = [self.sp.id_to_piece(i).startswith(WORD_START) for i in range(size)] + [False]
        self.word_start = torch.tensor(starts, dtype=torch.bool)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Tokenizer":
        """The tokenizer in `path` (a directory with spm.model, or the .model file); None: the bundled one."""
        directory = Path(path) if path is not None else BUNDLED_TOKENIZER
        model = directory if directory.is_file() else directory / MODEL_FILE
        if not model.is_file():
            raise UserError(f"data.tokenizer: no {MODEL_FILE} in {directory}; train one with tools/train_tokenizer.py")
        try:
            return cls(model.read_bytes(), str(model.parent))
        except RuntimeError:  # SentencePiece's protobuf parser: "INTERNAL: ...(109) [model_proto->ParseFromArray...]"
            raise UserError(f"data.tokenizer: {model} is not a SentencePiece model (damaged, or another kind of "
                            "file); train one with tools/train_tokenizer.py") from None

    # Pickled as the model bytes: `datasets` hashes this state to fingerprint its cache and ships it to workers.
    def __getstate__(self) -> dict:
        return {"model_proto": self.sp.serialized_model_proto(), "directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Ids of each text, no specials added; SentencePiece encodes the batch on `num_threads` (-1: all cores)."""
        return self.sp.encode([normalize(t) for t in texts], out_type=int, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: [PAD] dropped, [CLS]/[SEP]/[UNK] as SentencePiece renders them, [MASK] as "[MASK]"."""
        ids = [int(i) for i in ids if int(i) != self.pad_id]
        return self.sp.decode_pieces([MASK_PIECE if i == self.mask_id else self.sp.id_to_piece(i) for i in ids])

    def check_fits(self, model_vocab_size: int) -> None:
        """Fail when the model's embedding table has fewer rows than this tokenizer has ids."""
        if model_vocab_size < self.vocab_size:
            raise UserError(f"model.vocab_size ({model_vocab_size}) is smaller than the {self.vocab_size} ids of the "
                            f"tokenizer in {self.directory}; set model.vocab_size >= {self.vocab_size}")

    def save(self, directory: str | os.PathLike) -> None:
        """Write spm.model and the transformers files into `directory` (for export next to a checkpoint)."""
        _write_directory(Path(directory), self.sp.serialized_model_proto(), self.mask_id)


def _write_directory(directory: Path, model_proto: bytes, mask_id: int) -> None:
    """spm.model plus the tokenizer_config.json that makes transformers build a DebertaV2Tokenizer with our ids."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(model_proto)
    config = {
        "tokenizer_class": "DebertaV2Tokenizer",
        "vocab_type": "spm",
        "do_lower_case": False,
        "split_by_punct": False,
        "pad_token": SPECIAL_PIECES[0], "cls_token": SPECIAL_PIECES[1], "bos_token": SPECIAL_PIECES[1],
        "sep_token": SPECIAL_PIECES[2], "eos_token": SPECIAL_PIECES[2], "unk_token": SPECIAL_PIECES[3],
        "mask_token": MASK_PIECE,
        # Pins [MASK] right after the SentencePiece pieces, where DeBERTa-v3 has it.
        "added_tokens_decoder": {str(mask_id): {"content": MASK_PIECE, "lstrip": False, "normalized": False,
                                                "rstrip": False, "single_word": False, "special": True}},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _sentences(files: list[str], text_field: str) -> Iterator[str]:
    """Training sentences: every non-empty line of text files, every line of each JSON/Parquet row's text."""
    for path in files:
        for document in iter_documents(path, "line", text_field):
            for line in document.splitlines():
                line = normalize(line).strip()
                if line:
                    yield line


def _recorded(items: Iterator[str], failure: list[BaseException]) -> Iterator[str]:
    """`items`, keeping what stopped them in `failure`: SentencePiece turns an exception raised in its input
    iterator into a RuntimeError whose text holds the whole Python stack."""
    try:
        yield from items
    except BaseException as exc:
        failure.append(exc)
        raise


def train_tokenizer(inputs: Sequence[str], vocab_size: int, output: str | os.PathLike, model_type: str = "unigram",
                    character_coverage: float = 0.9995, input_sentence_size: int = 0, seed: int = 0,
                    text_field: str = "text") -> Tokenizer:
    """Train a SentencePiece model with DeBERTa-v3's special ids on text/JSON-lines/Parquet files.

    `vocab_size` counts SentencePiece pieces (the four specials included), so [MASK] = vocab_size and the model
    needs vocab_size + 1 rows. `input_sentence_size` > 0 trains on that many lines sampled from the input (seeded),
    so the trainer's memory stays bounded. The directory appears complete or not at all (written to a temporary
    sibling, then renamed).
    """
    output = Path(output)
    if output.exists():
        raise UserError(f"--output {output} already exists; remove it or choose a new directory")
    check_writable(output, "--output")  # before the training it would otherwise throw away
    if model_type not in MODEL_TYPES:
        raise UserError(f"--model-type {model_type!r} is unknown; use one of {list(MODEL_TYPES)}")
    if vocab_size <= len(SPECIAL_PIECES):
        raise UserError(f"--vocab-size must be > {len(SPECIAL_PIECES)} (the special pieces), got {vocab_size}")
    check_number("--character-coverage", character_coverage, f"[{MIN_CHARACTER_COVERAGE}, 1]")
    if input_sentence_size < 0:
        raise UserError(f"--input-sentence-size must be >= 0 (0: every line), got {input_sentence_size}")
    if not 0 <= seed < 2 ** 32:  # SentencePiece's seed is an unsigned 32-bit integer
        raise UserError(f"--seed must be in [0, 2^32), got {seed}")
    files = resolve_files(inputs, "--input", text_field)
    failure: list[BaseException] = []
    sentences = _recorded(_sentences(files, text_field), failure)
    first = next(sentences, None)
    if first is None:
        raise UserError(f"--input: no text in {', '.join(files)}")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True, max_sentence_length=MAX_SENTENCE_BYTES, normalization_rule_name="identity",
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece=SPECIAL_PIECES[0], bos_piece=SPECIAL_PIECES[1],
            eos_piece=SPECIAL_PIECES[2], unk_piece=SPECIAL_PIECES[3], num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as error:
        if failure:  # reading the input failed (a damaged file, Ctrl-C): that is the error to report
            raise failure[0] from None
        # Keep SentencePiece's sentence ("Vocabulary size too high (8000). Please set it to a value <= 15."),
        # not the source location and check in brackets before it.
        reason = str(error).strip().rsplit("] ", 1)[-1] or type(error).__name__
        raise UserError(f"sentencepiece could not train on {', '.join(files)}: {reason}") from None
    tokenizer = Tokenizer(model.getvalue(), str(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        tokenizer.save(staging)
        apply_umask(staging)  # mkdtemp made it private
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer
