"""Labelled examples from TSV, CSV or JSON-lines files, and the label vocabulary.

- `.tsv`, and `.txt` whose first line holds a tab (GLUE's MRPC files, msr_paraphrase_*.txt): tab-separated, no
  quoting (GLUE's files contain bare `"` characters); `.csv`: comma-separated with standard quoting;
  `.jsonl` / `.json`: one JSON object per line. All are UTF-8; a byte-order mark at the start is dropped.
- TSV/CSV files have a header row naming the columns, unless `header=False` (CoLA's files): columns are then
  0-based indices. JSON-lines columns are keys.
- Classification labels are kept as strings; their vocabulary is the sorted set of training labels (numerically
  when they are all integers, so "0", "1" become class ids 0, 1). It needs two labels at least, and a
  development label outside it is an error: the classifier could never predict it. Regression labels must be
  finite numbers.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UserError

TASK_TYPES = ("classification", "regression")
FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
ENCODING = "utf-8-sig"  # UTF-8 without the byte-order mark some editors (and MRPC's files) put first


@dataclass
class Split:
    """The examples of one file: `texts[i]` holds one string per text column; `lines[i]` its line in the file."""

    path: str
    texts: list[tuple[str, ...]]
    labels: list[str]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int | None, seed: int) -> "Split":
        """`count` examples drawn without replacement (seeded), in file order; all of them when `count` is None."""
        if count is None or count >= len(self):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), count))
        return Split(self.path, [self.texts[i] for i in keep], [self.labels[i] for i in keep],
                     [self.lines[i] for i in keep])


def labelled_format(path: str) -> str:
    """"tsv", "csv" or "jsonl" from the name; a .txt file is TSV only if its first line has a tab."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown file type {suffix!r}; use .tsv, .txt (tab-separated), .csv or .jsonl")
    if suffix == ".txt":
        with open(path, encoding=ENCODING, errors="replace") as handle:
            if "\t" not in handle.readline():
                raise UserError(f"{path}: a .txt file is read as tab-separated columns, but its first line has no "
                                "tab; give a .tsv, .csv or .jsonl file")
    return FORMATS[suffix]


def _delimited_rows(path: str, kind: str) -> Iterator[tuple[int, list[str]]]:
    options = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else dict(delimiter=",")
    with open(path, newline="", encoding=ENCODING) as handle:
        reader = csv.reader(handle, **options)
        for row in reader:
            if any(field.strip() for field in row):  # blank lines carry no example
                yield reader.line_num, row


def _column_positions(path: str, header: list[str] | None, columns: Sequence[str]) -> list[int]:
    """Where each requested column is in a delimited row: by name (header) or by 0-based index (no header)."""
    positions = []
    for column in columns:
        if header is not None:
            if column not in header:
                hint = "; with a header-less file pass --no-header" if column.isdigit() else ""
                raise UserError(f"{path} has no column {column!r} (its header: {', '.join(header)}){hint}")
            positions.append(header.index(column))
        elif not column.isdigit():
            raise UserError(f"{path}: column {column!r} is not an index; without a header name columns by 0-based "
                            "index (e.g. --text-columns 3 --label-column 1)")
        else:
            positions.append(int(column))
    return positions


def _read_delimited(path: str, kind: str, columns: Sequence[str], header: bool) -> Iterator[tuple[int, list[str]]]:
    rows = _delimited_rows(path, kind)
    names = next(rows, (0, None))[1] if header else None
    if header and names is None:
        raise UserError(f"{path} is empty")
    positions = _column_positions(path, [n.strip() for n in names] if names else None, columns)
    for line, row in rows:
        if max(positions) >= len(row):
            raise UserError(f"{path} line {line} has {len(row)} fields, fewer than the {max(positions) + 1} that the "
                            "requested columns need; check the file's delimiter and --text-columns/--label-column")
        yield line, [row[p] for p in positions]


def _read_jsonl(path: str, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding=ENCODING) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {line} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {line} is not a JSON object; each line must map column names to values")
            missing = [c for c in columns if c not in row]
            if missing:
                raise UserError(f"{path} line {line} has no column {missing[0]!r} (its keys: {', '.join(row)})")
            yield line, ["" if row[c] is None else str(row[c]) for c in columns]


def read_split(path: str | os.PathLike, text_columns: Sequence[str], label_column: str,
               header: bool = True) -> Split:
    """Read `text_columns` (one or two: a sentence or a sentence pair) and `label_column` of every row."""
    path = str(path)
    if os.path.isdir(path):
        raise UserError(f"data file {path} is a directory; give a .tsv, .txt, .csv or .jsonl file")
    if not os.path.isfile(path):
        raise UserError(f"data file {path} not found")
    try:
        kind = labelled_format(path)
        columns = [*text_columns, label_column]
        if kind == "jsonl":
            if not header:
                raise UserError(f"{path}: --no-header applies to TSV/CSV files; JSON-lines columns are keys")
            rows = _read_jsonl(path, columns)
        else:
            rows = _read_delimited(path, kind, columns, header)
        texts, labels, lines = [], [], []
        for line, values in rows:
            label = values[-1].strip()
            if not label:
                raise UserError(f"{path} line {line} has an empty label (column {label_column!r})")
            texts.append(tuple(values[:-1]))
            labels.append(label)
            lines.append(line)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                        f"{exc.start}); convert it to UTF-8") from None
    if not labels:
        raise UserError(f"{path} has no examples")
    return Split(path, texts, labels, lines)


def label_vocabulary(train: Split) -> list[str]:
    """Sorted training labels: numerically when all are integers, else as strings; at least two of them."""
    names = set(train.labels)
    if len(names) < 2:
        raise UserError(f"every training example of {train.path} has the label {train.labels[0]!r}; a classifier "
                        "needs two labels at least: check --label-column (or --max-train-examples, or use "
                        "--task-type regression)")
    integers = all(name.lstrip("-").isdigit() for name in names)
    return sorted(names, key=int) if integers else sorted(names)


def encode_labels(split: Split, task_type: str, vocabulary: list[str] | None, train_path: str = "") -> list:
    """Class ids (classification, against the training `vocabulary`) or floats (regression)."""
    if task_type == "regression":
        values = []
        for label, line in zip(split.labels, split.lines):
            try:
                value = float(label)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):  # float() also reads "nan" and "inf", which no metric survives
                raise UserError(f"{split.path} line {line}: label {label!r} is not a finite number; regression "
                                "needs numeric labels (or use --task-type classification)")
            values.append(value)
        return values
    index = {name: i for i, name in enumerate(vocabulary)}
    for label, line in zip(split.labels, split.lines):
        if label not in index:
            raise UserError(f"{split.path} line {line}: label {label!r} never occurs in {train_path or 'train'} "
                            f"(labels: {', '.join(vocabulary)}); use a dev file with the training labels")
    return [index[label] for label in split.labels]
