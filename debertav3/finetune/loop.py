"""Sequence classification / regression fine-tuning of any DebertaV2 directory (ours or not), optionally with SiFT.

The model is transformers' `AutoModelForSequenceClassification` (pooler and classifier newly initialised on top of
the loaded backbone) and `AutoTokenizer`, both from `--model`; `random_init` keeps that config but draws fresh
weights, the baseline that shows what pretraining bought. A plain torch loop: AdamW without decay on biases and
LayerNorms (`debertav3.train.optim`), linear warmup then linear decay, gradient norm clipped to 1 (DeBERTa's GLUE
recipe), evaluation on the dev file after every epoch. Everything the run could trip over (files, columns, labels,
the model) is checked before the first step; metrics.json is written at the end, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from ..errors import CheckpointError, UserError
from ..io_utils import atomic_write_text
from ..train.optim import build_optimizer, linear_schedule
from ..train.config import OptimConfig
from ..validation import check_writable
from .config import FinetuneConfig
from ..data.labelled import Split, encode_labels, label_vocabulary, read_split
from .metrics import classification_metrics, regression_metrics
from .sift import SiFT

MAX_GRAD_NORM = 1.0
METRICS_FILE = "metrics.json"
# What a DebertaV2 directory's tokenizer is made of. Without one, transformers builds a tokenizer that knows only
# the special tokens of tokenizer_config.json, and fine-tuning would see nothing but [UNK].
TOKENIZER_FILES = ("spm.model", "tokenizer.json")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(cfg: FinetuneConfig, labels: list[str] | None):
    """(model, tokenizer) from `cfg.model`; a classification head sized for `labels` (one output for regression)."""
    try:
        import transformers
    except ImportError:
        raise UserError("fine-tuning needs transformers: pip install -e '.[dev]'") from None
    if not (Path(cfg.model) / "config.json").is_file():
        raise CheckpointError(f"--model {cfg.model} is not a model directory (no config.json); export one with "
                              "tools/export.py")
    if not any((Path(cfg.model) / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"--model {cfg.model} has no tokenizer (no {' or '.join(TOKENIZER_FILES)}); export "
                              "the checkpoint with tools/export.py, which copies its tokenizer, or copy the "
                              "tokenizer the model was trained with into it")
    head = (dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                 label2id={name: i for i, name in enumerate(labels)}, problem_type="single_label_classification")
            if labels is not None else dict(num_labels=1, problem_type="regression"))
    auto = transformers.AutoModelForSequenceClassification
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model)
        if cfg.random_init:
            model = auto.from_config(transformers.AutoConfig.from_pretrained(cfg.model, **head))
        else:
            model = auto.from_pretrained(cfg.model, **head)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"--model {cfg.model} cannot be loaded by transformers: {reason}") from None
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # a larger id would index past the embedding table in the first batch
        raise CheckpointError(f"--model {cfg.model}: its tokenizer has {len(tokenizer)} ids but the model's "
                              f"embedding table has {rows} rows; use the tokenizer the model was trained with")
    return model, tokenizer


def encode(tokenizer, split: Split, labels: list, max_length: int) -> list[dict]:
    """Token ids of each example (a sentence, or a pair joined as [CLS] A [SEP] B [SEP]), truncated, with its label."""
    columns = list(zip(*split.texts))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    return [{**{k: encoded[k][i] for k in encoded}, "labels": labels[i]} for i in range(len(split))]


def loader(tokenizer, features: list[dict], batch_size: int, shuffle: bool, seed: int, regression: bool):
    """Batches padded to their longest member (tokenizer.pad), labels as long (classes) or float (regression)."""
    dtype = torch.float if regression else torch.long

    def collate(batch: list[dict]) -> dict:
        padded = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in batch], return_tensors="pt")
        return {**padded, "labels": torch.tensor([f["labels"] for f in batch], dtype=dtype)}

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(features, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                                       generator=generator)


@torch.no_grad()
def evaluate(model, batches, regression: bool, num_classes: int, device) -> dict[str, float]:
    """Dev metrics: accuracy, F1, MCC of the argmax class, or Pearson, Spearman, MSE of the single output."""
    model.eval()
    predictions, references = [], []
    for batch in batches:
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.float().cpu()
        predictions.append(logits.squeeze(-1) if regression else logits.argmax(-1))
        references.append(batch["labels"])
    predicted, reference = torch.cat(predictions).numpy(), torch.cat(references).numpy()
    if regression:
        return regression_metrics(reference, predicted)
    return classification_metrics(reference, predicted, num_classes)


def embedding_layer_norm(model) -> torch.nn.LayerNorm:
    """The LayerNorm SiFT perturbs: `<backbone>.embeddings.LayerNorm` (DeBERTa, BERT and their kin)."""
    norm = getattr(getattr(model.base_model, "embeddings", None), "LayerNorm", None)
    if not isinstance(norm, torch.nn.LayerNorm):
        raise UserError(f"--sift needs a model with embeddings.LayerNorm; {type(model).__name__} has none")
    return norm


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(requested)


def majority_accuracy(train_labels: list[int], dev_labels: list[int]) -> float:
    """Dev accuracy of always predicting the most frequent training class: the chance level to beat."""
    majority = Counter(train_labels).most_common(1)[0][0]
    return sum(label == majority for label in dev_labels) / len(dev_labels)


def train_epoch(model, batches, optimizer, scheduler, sift: SiFT | None, sift_weight: float, device, bar) -> float:
    """One pass over the training batches; returns the mean training loss (task loss + SiFT term)."""
    model.train()
    losses = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        loss = out.loss
        if sift is not None:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = loss + sift_weight * sift(lambda: model(**inputs).logits, out.logits)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return float(np.mean(losses))


@dataclasses.dataclass
class TaskData:
    train: Split
    dev: Split
    labels: list[str] | None  # the class names, None for regression
    train_targets: list
    dev_targets: list


def read_task(cfg: FinetuneConfig) -> TaskData:
    """Both files read, the training slice drawn and every label checked, before any model is loaded."""
    train = read_split(cfg.train, cfg.text_columns, cfg.label_column, cfg.header)
    train = train.subset(cfg.max_train_examples, cfg.seed)
    dev = read_split(cfg.dev, cfg.text_columns, cfg.label_column, cfg.header)
    labels = label_vocabulary(train) if cfg.task_type == "classification" else None
    return TaskData(train, dev, labels, encode_labels(train, cfg.task_type, labels),
                    encode_labels(dev, cfg.task_type, labels, train_path=cfg.train))


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune, evaluate after every epoch, write `cfg.output`/metrics.json; returns what it wrote."""
    check_writable(cfg.output, "--output")  # now, not after training; metrics.json creates it at the end
    data = read_task(cfg)
    regression = data.labels is None
    device = resolve_device(cfg.device)
    set_seed(cfg.seed)  # before the model: the new head (or, with random_init, every weight) is drawn here
    model, tokenizer = load_model(cfg, data.labels)
    model.to(device)
    sift = SiFT(embedding_layer_norm(model), regression=regression) if cfg.sift else None
    train_batches = loader(tokenizer, encode(tokenizer, data.train, data.train_targets, cfg.max_length),
                           cfg.batch_size, True, cfg.seed, regression)
    dev_batches = loader(tokenizer, encode(tokenizer, data.dev, data.dev_targets, cfg.max_length), cfg.batch_size,
                         False, cfg.seed, regression)
    total_steps = cfg.epochs * len(train_batches)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, OptimConfig(lr=cfg.lr, beta2=0.999, eps=1e-6, weight_decay=cfg.weight_decay,
                                                   warmup_steps=warmup))
    scheduler = linear_schedule(optimizer, warmup, total_steps)
    history = []
    bar = tqdm(total=total_steps, disable=not cfg.progress, desc="fine-tuning", unit="step", dynamic_ncols=True)
    for epoch in range(1, cfg.epochs + 1):
        train_loss = train_epoch(model, train_batches, optimizer, scheduler, sift, cfg.sift_weight, device, bar)
        metrics = evaluate(model, dev_batches, regression, len(data.labels or [None]), device)
        history.append({"epoch": epoch, "train_loss": train_loss, **metrics})
        tqdm.write(f"epoch {epoch}/{cfg.epochs}: train_loss {train_loss:.4f} | "
                   + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    bar.close()
    result = {"task": cfg.task, "model": cfg.model, "random_init": cfg.random_init, "sift": cfg.sift,
              "metric": cfg.metric, "dev": history[-1], "history": history, "train_examples": len(data.train),
              "dev_examples": len(data.dev), "labels": data.labels, "config": dataclasses.asdict(cfg)}
    if not regression:
        result["majority_accuracy"] = majority_accuracy(data.train_targets, data.dev_targets)
    atomic_write_text(Path(cfg.output) / METRICS_FILE, json.dumps(result, indent=2) + "\n")
    return result
