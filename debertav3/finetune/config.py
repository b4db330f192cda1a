"""What one fine-tuning run needs (`FinetuneConfig`), and the GLUE task presets.

Presets name the files and columns of a task under a data directory: `--data-dir`, else the environment
variable DEBERTAV3_DATA, else `../shared/data` beside the repository. Defaults follow the DeBERTa GLUE recipes
scaled to small data (AdamW, eps 1e-6, weight decay 0.01, 10% linear warmup then linear decay).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..validation import check_number
from ..data.labelled import TASK_TYPES

REPOSITORY = Path(__file__).resolve().parents[2]
DATA_ENV = "DEBERTAV3_DATA"
METRICS = {"classification": ("accuracy", "f1", "mcc"), "regression": ("pearson", "spearman", "mse")}


@dataclass(frozen=True)
class TaskPreset:
    train: str  # relative to the data directory
    dev: str
    text_columns: tuple[str, ...]
    label_column: str
    header: bool
    task_type: str
    metric: str  # the one the GLUE leaderboard reports


PRESETS = {
    "sst2": TaskPreset("sst2/train.tsv", "sst2/dev.tsv", ("sentence",), "label", True, "classification", "accuracy"),
    # CoLA's files have no header: source, label, original mark, sentence.
    "cola": TaskPreset("cola/in_domain_train.tsv", "cola/in_domain_dev.tsv", ("3",), "1", False, "classification",
                       "mcc"),
}


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or REPOSITORY.parent / "shared" / "data")


@dataclass
class FinetuneConfig:
    """One run. Every check fails with a one-line ConfigError naming the option."""

    model: str
    train: str
    dev: str
    text_columns: list[str]
    label_column: str
    output: str
    task_type: str = "classification"
    header: bool = True
    task: Optional[str] = None  # a preset name, recorded in metrics.json
    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    max_train_examples: Optional[int] = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    sift: bool = False
    sift_weight: float = 1.0
    random_init: bool = False
    device: str = "auto"
    progress: bool = True
    metric: str = ""  # the headline metric; "" picks accuracy or pearson by task type

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ConfigError(f"--task-type {self.task_type!r} is unknown; use one of {list(TASK_TYPES)}")
        if not 1 <= len(self.text_columns) <= 2:
            raise ConfigError(f"--text-columns takes one column or two (a sentence pair), got {len(self.text_columns)}")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_train_examples is not None and self.max_train_examples <= 0:
            raise ConfigError(f"--max-train-examples must be positive, got {self.max_train_examples}")
        # [CLS] A [SEP], or [CLS] A [SEP] B [SEP]: with one token of each text at least.
        shortest = 3 if len(self.text_columns) == 1 else 5
        if self.max_length < shortest:
            raise ConfigError(f"--max-length {self.max_length} leaves no room for text: "
                              f"{'[CLS] A [SEP]' if shortest == 3 else '[CLS] A [SEP] B [SEP]'} needs {shortest} "
                              "tokens at least")
        for option, value, allowed in (("--lr", self.lr, "> 0"), ("--warmup-ratio", self.warmup_ratio, "[0, 1)"),
                                       ("--weight-decay", self.weight_decay, ">= 0"),
                                       ("--sift-weight", self.sift_weight, ">= 0")):
            check_number(option, value, allowed)
        if not 0 <= self.seed < 2 ** 32:  # numpy's seed range
            raise ConfigError(f"--seed must be in [0, 2^32), got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r} is unknown; use auto, cpu or cuda")
        if not self.metric:
            self.metric = METRICS[self.task_type][0]
        if self.metric not in METRICS[self.task_type]:
            raise ConfigError(f"metric {self.metric!r} is not reported for {self.task_type}; use one of "
                              f"{list(METRICS[self.task_type])}")

    @classmethod
    def from_preset(cls, task: str, data_dir: str | os.PathLike | None = None, **options) -> "FinetuneConfig":
        """A preset's files and columns, with `options` (any field) on top."""
        if task not in PRESETS:
            raise ConfigError(f"--task {task!r} is unknown; use one of {sorted(PRESETS)} or give --train/--dev/"
                              "--text-columns/--label-column")
        preset = PRESETS[task]
        root = Path(data_dir) if data_dir else default_data_dir()
        values = dict(train=str(root / preset.train), dev=str(root / preset.dev),
                      text_columns=list(preset.text_columns), label_column=preset.label_column, header=preset.header,
                      task_type=preset.task_type, task=task)
        if options.get("task_type", preset.task_type) == preset.task_type:  # else the task type's default metric
            values["metric"] = preset.metric
        values.update({k: v for k, v in options.items() if v is not None})
        for key in ("train", "dev"):
            if not Path(values[key]).is_file():
                raise ConfigError(f"{task} {key} file {values[key]} not found; point --data-dir (or {DATA_ENV}) at "
                                  "the directory holding sst2/ and cola/")
        return cls(**values)
