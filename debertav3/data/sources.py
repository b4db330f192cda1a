"""Corpus files: paths and globs resolved and checked up front, documents read with bad lines skipped.

Formats, by file name: `.jsonl` / `.json` (optionally `.gz`): one JSON object per line, the document is its
`text_field`; `.parquet`: each row's `text_field` column; anything else: UTF-8 text, gzip-compressed when the
name ends in `.gz`. In text files a document is a line (`documents="line"`) or a block of lines between blank
lines (`"blank_line"`). A line that is not UTF-8 (or not a JSON object with the text field) is skipped and
counted in one warning per file, so one bad byte does not stop a long job.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import zlib
from typing import IO, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from ..errors import DamagedFile, UserError

logger = logging.getLogger(__name__)

# A longer block of lines is cut at a line boundary, so that memory is bounded whatever the documents (a whole
# file without blank lines, say); the price is one shorter block per 256 Ki characters (~64k tokens).
MAX_DOCUMENT_CHARS = 1 << 18
_SNIFF_BYTES = 1 << 13
_GLOB_CHARS = "*?["
# What reading a damaged file raises: gzip's EOFError (truncated) and BadGzipFile (an OSError), zlib.error
# (corrupt data), I/O errors, and Arrow's ArrowInvalid (a ValueError) and ArrowIOError (an OSError).
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)



def corpus_format(path: str) -> str:
    """"parquet", "jsonl" or "text", from the file name."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".parquet"):
        return "parquet"
    return "jsonl" if name.endswith((".jsonl", ".json")) else "text"


def resolve_files(patterns: Sequence[str], setting: str, text_field: str) -> list[str]:
    """Paths and globs (`**` allowed) to a sorted-per-pattern file list, each checked to be a readable corpus file."""
    files = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in _GLOB_CHARS) else [pattern]
        if not matches:
            raise UserError(f"{setting}: {pattern!r} matches no file")
        for path in matches:
            if os.path.isdir(path):
                raise UserError(f"{setting}: {path} is a directory; name its files, e.g. {path}/*.txt.gz")
            if not os.path.isfile(path):
                raise UserError(f"{setting}: file not found: {path}")
            problem = _problem(path, text_field)
            if problem:
                raise UserError(f"{setting}: {path} {problem}")
            files.append(path)
    return files


def _open(path: str) -> IO[bytes]:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _problem(path: str, text_field: str) -> str | None:
    """Why `path` cannot be read as a corpus file (None if it can), from its first bytes or its Parquet schema."""
    kind = corpus_format(path)
    try:
        if kind == "parquet":
            return _parquet_problem(pq.read_schema(path), text_field)
        with _open(path) as f:
            head = f.readline() if kind == "jsonl" else f.read(_SNIFF_BYTES)
    except READ_ERRORS as error:
        return f"cannot be read ({type(error).__name__}: {error})"
    if b"\x00" in head:
        return "is binary, not text; give .txt, .txt.gz, .jsonl or .parquet files"
    if kind == "jsonl" and head.strip() and _json_text(head, text_field) is None:
        return f"does not start with a JSON object that has a {text_field!r} string"
    return None


def _parquet_problem(schema: pa.Schema, text_field: str) -> str | None:
    if text_field not in schema.names:
        return f"has no {text_field!r} column (it has {schema.names})"
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return f"has a {text_field!r} column of {kind}, not of text; name a text column (it has {schema.names})"
    return None


def _json_text(line: bytes, text_field: str) -> str | None:
    try:
        row = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    text = row.get(text_field) if isinstance(row, dict) else None
    return text if isinstance(text, str) else None


def iter_documents(path: str, documents: str, text_field: str) -> Iterator[str]:
    """The non-empty documents of one file, in order (see the module docstring for what a document is).

    A file that breaks off or is corrupt further on than `resolve_files` looked (a truncated .gz) raises a
    one-line `DamagedFile` naming it when the reading gets there.
    """
    try:
        yield from _documents(path, documents, text_field)
    except READ_ERRORS as error:
        raise DamagedFile(f"{path} cannot be read to its end ({type(error).__name__}: {error}); the file is "
                         "truncated or damaged: restore it or leave it out") from None


def _documents(path: str, documents: str, text_field: str) -> Iterator[str]:
    kind = corpus_format(path)
    if kind == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(columns=[text_field]):
            yield from (text for text in batch.column(0).to_pylist() if text and text.strip())
        return
    skipped, block, size = 0, [], 0
    with _open(path) as f:
        for raw in f:
            if kind == "jsonl":
                text = _json_text(raw, text_field) if raw.strip() else ""
            else:
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    text = None
            if text is None:
                skipped += 1
            elif kind == "jsonl" or documents == "line":
                if text.strip():
                    yield text
            elif text:
                block.append(text)
                size += len(text)
                if size >= MAX_DOCUMENT_CHARS:
                    yield "\n".join(block)
                    block, size = [], 0
            elif block:
                yield "\n".join(block)
                block, size = [], 0
    if block:
        yield "\n".join(block)
    if skipped:
        logger.warning("%s: skipped %d line(s) that are not valid UTF-8%s", path, skipped,
                       " JSON objects with a text field" if kind == "jsonl" else "")
