"""Command line of tools/finetune.py: a preset (`--task sst2|cola`) or explicit files and columns.

Explicit options win over a preset's. A mistake (missing file or column, unseen dev label, a directory that is
not a model or has no tokenizer) prints one line `error: ...` on stderr and exits with status 2 before anything is
trained or written; Ctrl-C prints one line `interrupted: ...` and exits with 130 (debertav3/usage.py).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..errors import ConfigError
from ..usage import ArgumentParser, guarded
from .config import DATA_ENV, PRESETS, FinetuneConfig
from ..data.labelled import TASK_TYPES
from .loop import finetune

# Options that name the data; without --task all of them but --task-type are required.
DATA_OPTIONS = ("train", "dev", "text_columns", "label_column")


def parser() -> ArgumentParser:
    p = ArgumentParser(description="Fine-tune a DeBERTa-v2/v3 directory on a sentence(-pair) classification or "
                                   "regression task and report dev metrics (see docs/finetune.md).")
    p.add_argument("--model", required=True, help="a Hugging Face DebertaV2 directory, e.g. from tools/export.py")
    p.add_argument("--output", required=True, help="directory for metrics.json")
    p.add_argument("--task", choices=sorted(PRESETS), help="a GLUE preset: its files, columns and metric")
    p.add_argument("--data-dir", help=f"where the presets' files are (default: ${DATA_ENV}, else ../shared/data "
                                      "beside the repository)")
    p.add_argument("--train", help="training file (.tsv, .csv or .jsonl)")
    p.add_argument("--dev", help="evaluation file, same layout")
    p.add_argument("--text-columns", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                   help="one column, or two for sentence pairs: A[,B] (names, or 0-based indices with --no-header)")
    p.add_argument("--label-column", help="the label column (name, or index with --no-header)")
    p.add_argument("--no-header", dest="header", action="store_false", default=None,
                   help="TSV/CSV files have no header row: columns are 0-based indices")
    p.add_argument("--task-type", choices=TASK_TYPES, help="classification (default) or regression")
    p.add_argument("--epochs", type=int, help="passes over the training data (default 3)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=int, help="examples per step (default 32)")
    p.add_argument("--max-length", type=int, help="tokens per example, [CLS]/[SEP] included (default 128)")
    p.add_argument("--max-train-examples", type=int, help="train on this many examples drawn at random (seeded)")
    p.add_argument("--warmup-ratio", type=float, help="share of the steps spent warming up (default 0.1)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    p.add_argument("--seed", type=int, help="seed of the head, the sampling, the order and dropout (default 42)")
    p.add_argument("--sift", action="store_true", default=None,
                   help="scale-invariant fine-tuning: adversarial perturbation of the normalised embeddings")
    p.add_argument("--sift-weight", type=float, help="weight of the SiFT term (default 1.0)")
    p.add_argument("--random-init", action="store_true", default=None,
                   help="keep --model's architecture but re-initialise every weight (the no-pretraining baseline)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    return p


def build_config(args: argparse.Namespace) -> FinetuneConfig:
    options = {k: v for k, v in vars(args).items() if v is not None and k not in ("task", "data_dir")}
    if args.task:
        return FinetuneConfig.from_preset(args.task, args.data_dir, **options)
    missing = [name for name in DATA_OPTIONS if name not in options]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"give --task {{{','.join(sorted(PRESETS))}}} or all of --train, --dev, --text-columns, "
                          f"--label-column (missing: {flags})")
    return FinetuneConfig(**options)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    status, result = guarded(lambda: finetune(build_config(args)),
                             "nothing was written; rerun the same command to start again",
                             hint="free space or choose another --output")
    if status:
        return status
    dev, metric = result["dev"], result["metric"]
    baseline = f" (majority class: {result['majority_accuracy']:.4f})" if "majority_accuracy" in result else ""
    print(f"dev {metric} {dev[metric]:.4f}{baseline}; " + " ".join(f"{k} {v:.4f}" for k, v in dev.items()
                                                                   if k not in ("epoch", metric)))
    print(f"wrote {result['config']['output']}/metrics.json")
    return 0
