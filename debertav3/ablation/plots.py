"""The ablation's PNG plots (matplotlib, Agg backend: no display needed), one line or bar group per mode, and a
recipe sweep's eval curves, one line per variant (`sweep_curves`).

curves.png       training MLM loss, RTD loss and RTD ROC-AUC against step (mean over seeds, band: ± 1 std)
learning.png     the evaluations: RTD ROC-AUC, RTD loss / prior entropy, generator MLM accuracy against step
embeddings.png   average pairwise cosine similarity of E_G, E_D and E_Delta over training (paper's tug of war)
downstream.png   each task's dev metric per mode: mean ± std over seeds, one dot per seed, majority-class level
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from ..finetune.config import PRESETS  # noqa: E402
from .curves import band, mean_std  # noqa: E402

COLORS = {"es": "tab:red", "nes": "tab:blue", "gdes": "tab:green", "mlm": "tab:purple", "random": "tab:gray"}
SMOOTH = 5  # training scalars are single batches: a trailing mean over 5 logged points


def modes_of(records: list[dict], key: str = "mode") -> list[str]:
    return list(dict.fromkeys(r[key] for r in records))


def draw_bands(ax, records: list[dict], tag: str, smooth: int, key: str = "mode") -> None:
    """One line per value of `key` (the ablation's mode, a sweep's variant): the mean over seeds, band ±1 std."""
    for group in modes_of(records, key):
        steps, mean, std = band([r["curves"].get(tag, {}) for r in records if r[key] == group], smooth)
        if not steps:
            continue
        ax.plot(steps, mean, label=group, color=COLORS.get(group))
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=COLORS.get(group), alpha=0.2)
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def panels(records: list[dict], tags: dict[str, str], smooth: int, title: str, path: Path,
           key: str = "mode") -> Path:
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 4), squeeze=False)
    for ax, (tag, label) in zip(axes[0], tags.items()):
        draw_bands(ax, records, tag, smooth, key)
        ax.set_title(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_curves(records: list[dict], out: Path) -> Path:
    tags = {"train/mlm_loss": "generator MLM loss", "train/rtd_loss": "RTD loss", "train/rtd_auc": "RTD ROC-AUC"}
    return panels(records, tags, SMOOTH, f"pretraining (trailing mean of {SMOOTH} logs; band ±1 std over seeds)",
                  out / "curves.png")


def plot_learning(records: list[dict], out: Path) -> Path:
    """The held-out evaluations, unsmoothed: whether each discriminator detects (AUC above 0.5, loss under the
    prior's 1.0) and how far its generator is above the unigram baseline."""
    tags = {"eval/rtd_auc": "eval RTD ROC-AUC", "eval/rtd_loss_vs_prior": "eval RTD loss / prior entropy",
            "eval/mlm_accuracy": "eval generator MLM accuracy"}
    return panels(records, tags, 1, "held-out evaluations (band ±1 std over seeds)", out / "learning.png")


def plot_embeddings(records: list[dict], out: Path) -> Path:
    tags = {f"embeddings/cosine_{t}": f"avg pairwise cosine of {t}" for t in ("E_G", "E_D", "E_Delta")}
    return panels(records, tags, 1, "word-embedding coherence over training (band ±1 std over seeds)",
                  out / "embeddings.png")


def sweep_curves(records: list[dict], tags: dict[str, str], path: Path, title: str) -> Path:
    """A sweep's eval curves, one line per variant (debertav3.ablation.sweep)."""
    return panels(records, tags, 1, f"{title} (mean over seeds, band ±1 std)", path, key="variant")


def plot_downstream(records: list[dict], tasks: list[str], out: Path) -> Path:
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5 * max(len(tasks), 1), 4), squeeze=False)
    modes = modes_of(records)
    for ax, task in zip(axes[0], tasks):
        metric = PRESETS[task].metric
        for i, mode in enumerate(modes):
            values = [r["metrics"][task] for r in records if r["mode"] == mode and r["metrics"][task] is not None]
            stats = mean_std(values)
            if stats["mean"] is None:
                continue
            ax.bar(i, stats["mean"], yerr=stats["std"] or 0.0, color=COLORS.get(mode), alpha=0.7, capsize=4)
            ax.plot([i] * len(values), values, "k.")
        majority = [r["metrics"][f"{task}_majority"] for r in records if r["metrics"][f"{task}_majority"] is not None]
        if majority and metric == "accuracy":  # MCC's chance level is 0, not the majority-class accuracy
            ax.axhline(majority[0], color="black", linestyle="--", linewidth=1, label="majority class")
            ax.legend()
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(modes)), modes)
        ax.set_title(f"{task} dev {metric} (mean ± std, dots: seeds)")
    fig.tight_layout()
    path = out / "downstream.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
