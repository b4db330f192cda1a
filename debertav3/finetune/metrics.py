"""GLUE metrics: accuracy, F1 and Matthews correlation (classification), Pearson and Spearman (regression).

Definitions follow scikit-learn / SciPy (tests compare against them where installed), written in numpy so that
fine-tuning needs neither. Degenerate inputs (one class only, constant predictions) give 0.0 where the
coefficient is undefined, as scikit-learn's `matthews_corrcoef` does, rather than NaN in metrics.json.
"""

from __future__ import annotations

import numpy as np


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = number of examples of true class i predicted as j."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(num_classes,
                                                                                               num_classes)


def f1_score(matrix: np.ndarray) -> float:
    """Binary: F1 of class 1 (GLUE's positive class). More classes: the unweighted mean of per-class F1 (macro)."""
    true_positive = np.diag(matrix).astype(float)
    denominator = matrix.sum(0) + matrix.sum(1)  # 2TP + FP + FN, per class
    per_class = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return float(per_class[1] if len(matrix) == 2 else per_class.mean())


def matthews(matrix: np.ndarray) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004): (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))."""
    matrix = matrix.astype(float)
    correct, total = np.trace(matrix), matrix.sum()
    predicted, true = matrix.sum(0), matrix.sum(1)
    denominator = np.sqrt((total ** 2 - predicted @ predicted) * (total ** 2 - true @ true))
    return float((correct * total - true @ predicted) / denominator) if denominator > 0 else 0.0


def classification_metrics(labels, predictions, num_classes: int) -> dict[str, float]:
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    matrix = confusion(labels, predictions, num_classes)
    return {"accuracy": float(np.trace(matrix) / max(1, len(labels))), "f1": f1_score(matrix),
            "mcc": matthews(matrix)}


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy.stats.rankdata's default)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Each run of equal values gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0
    result = np.empty(len(values))
    result[order] = np.repeat(average, ends - starts)
    return result


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator > 0 else 0.0


def regression_metrics(labels, predictions) -> dict[str, float]:
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    return {"pearson": pearson(labels, predictions), "spearman": pearson(ranks(labels), ranks(predictions)),
            "mse": float(np.mean((labels - predictions) ** 2)) if len(labels) else 0.0}
