"""What one ablation run measured: its TensorBoard scalars and fine-tuning metrics, reduced to comparable numbers.

Curves come from the pretraining's TensorBoard event files (`train/*`, `eval/*`, `embeddings/cosine_E_*`, see
debertav3/train/loop.py); a resumed run adds event files and logs the steps after its checkpoint again, so the
latest write of a step wins. Summaries are means over seeds with the sample standard deviation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

Curve = dict[int, float]  # step -> value
# The fractions of the run at which the training MLM loss is compared (the paper's convergence claim).
CHECKPOINTS = (0.25, 0.5, 1.0)
WINDOW = 0.1  # training values are averaged over the 10% of steps ending at each checkpoint (single batches are noisy)


def read_scalars(logdir: Path) -> dict[str, Curve]:
    """tag -> {step: value} over every event file under `logdir` (empty when there is none yet)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    latest: dict[str, dict[int, tuple[float, float]]] = {}  # tag -> step -> (wall time, value)
    for directory in sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every point
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            steps = latest.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if event.step not in steps or event.wall_time >= steps[event.step][0]:
                    steps[event.step] = (event.wall_time, event.value)
    return {tag: {step: value for step, (_, value) in sorted(steps.items())} for tag, steps in latest.items()}


def window_mean(curve: Curve, end: float, max_steps: int) -> Optional[float]:
    """Mean of the values logged in (end - WINDOW, end] x max_steps; None if nothing was logged there."""
    low, high = (end - WINDOW) * max_steps, end * max_steps
    values = [v for step, v in curve.items() if low < step <= high]
    return sum(values) / len(values) if values else None


def last(curve: Optional[Curve]) -> Optional[float]:
    return curve[max(curve)] if curve else None


def run_metrics(scalars: dict[str, Curve], directory: Path, max_steps: int,
                tasks: list[str]) -> dict[str, Optional[float]]:
    """Flat numbers of one run (its `read_scalars` and fine-tuning results): losses, accuracies, the last eval's
    RTD ROC-AUC and RTD loss / prior entropy and MLM accuracy beside its unigram baseline, final cosines,
    each task's headline dev metric and majority-class accuracy (None where absent)."""
    metrics: dict[str, Optional[float]] = {}
    for fraction in CHECKPOINTS:
        metrics[f"mlm_loss@{fraction:.0%}"] = window_mean(scalars.get("train/mlm_loss", {}), fraction, max_steps)
    metrics["rtd_accuracy@100%"] = window_mean(scalars.get("train/rtd_accuracy", {}), 1.0, max_steps)
    for name in ("mlm_loss", "mlm_accuracy", "mlm_accuracy_unigram", "rtd_loss", "rtd_accuracy", "rtd_auc",
                 "rtd_loss_vs_prior"):
        metrics[f"eval_{name}"] = last(scalars.get(f"eval/{name}"))
    for table in ("E_G", "E_D", "E_Delta"):
        metrics[f"cosine_{table}"] = last(scalars.get(f"embeddings/cosine_{table}"))
    for task in tasks:
        result = finetune_result(directory, task)
        metrics[task] = result["dev"][result["metric"]] if result else None
        metrics[f"{task}_majority"] = result.get("majority_accuracy") if result else None
    return metrics


def finetune_result(directory: Path, task: str) -> Optional[dict]:
    path = directory / "finetune" / task / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mean_std(values: list[float]) -> dict:
    """{mean, std, n}: std is the sample standard deviation, None with fewer than two values."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def summarise(per_run: list[dict[str, Optional[float]]]) -> dict[str, dict]:
    """metric -> {mean, std, n} over the runs (seeds) that have it."""
    names = dict.fromkeys(name for metrics in per_run for name in metrics)
    return {name: mean_std([m[name] for m in per_run if m.get(name) is not None]) for name in names}


def band(curves: list[Curve], smooth: int = 1) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) over the seeds' curves at the steps all of them logged, each curve first smoothed by a
    trailing moving average of `smooth` points; std is 0 for a single seed."""
    curves = [c for c in curves if c]
    if not curves:
        return [], [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    smoothed = [moving_average([c[s] for s in steps], smooth) for c in curves]
    columns = [mean_std(list(values)) for values in zip(*smoothed)]
    return steps, [c["mean"] for c in columns], [c["std"] or 0.0 for c in columns]


def moving_average(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out
