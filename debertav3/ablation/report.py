"""The ablation's report: results.json, report.md and PNG plots in the ablation directory.

Written from whatever has finished (a stopped ablation gets a partial report), so it can be rewritten at any
time with `tools/ablate.py ... --report-only`. The claims checked are those of the DeBERTaV3 paper (section 5.1,
table 2 and the embedding-similarity analysis; docs/reference.md "Embedding sharing: ES, NES, GDES").
"""

from __future__ import annotations

import json
from pathlib import Path

from ..finetune.config import PRESETS
from ..io_utils import atomic_write_text
from .claims import check_claims
from .curves import read_scalars, run_metrics, summarise
from .plots import plot_curves, plot_downstream, plot_embeddings, plot_learning
from .runner import AblationSpec, plan

RESULTS_FILE, REPORT_FILE = "results.json", "report.md"
# Columns of the headline table: (metric, label, digits).
COLUMNS = (("mlm_loss@25%", "MLM loss @25%", 3), ("mlm_loss@50%", "MLM loss @50%", 3),
           ("mlm_loss@100%", "MLM loss @100%", 3), ("eval_mlm_loss", "eval MLM loss", 3),
           ("eval_mlm_accuracy", "eval MLM acc", 3), ("eval_mlm_accuracy_unigram", "(unigram)", 3),
           ("eval_rtd_auc", "eval RTD AUC", 3), ("eval_rtd_loss_vs_prior", "RTD loss / prior", 2),
           ("cosine_E_G", "cos E_G", 3), ("cosine_E_D", "cos E_D", 3),
           ("cosine_E_Delta", "cos E_Delta", 3))


def collect(spec: AblationSpec) -> tuple[list[dict], dict[str, dict]]:
    """(one record per planned run, with its stages, metrics and curves; per-mode summaries over seeds)."""
    records = []
    for run in plan(spec):
        scalars = read_scalars(run.directory / "pretrain" / "tensorboard")
        records.append({"mode": run.mode, "seed": run.seed, "stages_done": run.done(),
                        "complete": set(run.stages(spec.tasks)) <= set(run.done()),
                        "metrics": run_metrics(scalars, run.directory, spec.max_steps, spec.tasks),
                        "curves": scalars})
    summary = {mode: summarise([r["metrics"] for r in records if r["mode"] == mode]) for mode in spec.modes}
    return records, summary


def fmt(stats: dict, digits: int) -> str:
    if stats.get("mean") is None:
        return "-"
    spread = f" ± {stats['std']:.{digits}f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.{digits}f}{spread}"


def table(spec: AblationSpec, summary: dict[str, dict]) -> list[str]:
    columns = [*COLUMNS, *((t, f"{t} {PRESETS[t].metric}", 4) for t in spec.tasks)]
    lines = ["| mode | runs | " + " | ".join(label for _, label, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for mode, stats in summary.items():
        runs = max((s["n"] for s in stats.values()), default=0)
        cells = [fmt(stats.get(name, {}), digits) for name, _, digits in columns]
        lines.append(f"| {mode} | {runs} | " + " | ".join(cells) + " |")
    return lines


def markdown(spec: AblationSpec, records: list[dict], summary: dict, claims: list[dict], plots: list[Path]) -> str:
    complete = sum(r["complete"] for r in records)
    finetune = ", ".join(f"{k}={v}" for k, v in spec.finetune.as_options().items())
    lines = [
        "# Embedding-sharing ablation", "",
        f"Recipe `{spec.recipe}`, {spec.max_steps} pretraining steps per run, seeds {spec.seeds}, modes "
        f"{', '.join(spec.modes)}; overrides: `{' '.join(spec.overrides) or 'none'}`; fine-tuning on "
        f"{', '.join(spec.tasks) or 'no task'} ({finetune}). {complete} of {len(records)} runs complete.", "",
        "Means over seeds ± sample standard deviation (none with one seed). Training MLM loss @p: mean of the logged "
        "training values over the 10% of steps ending at p of the run. eval: held-out blocks at the last step; "
        "MLM acc beside its unigram baseline (always the most frequent target); RTD AUC: ROC-AUC of the replaced "
        "class (0.5: no detection); RTD loss / prior: over the entropy of the replaced fraction (1.0: no learning). "
        "cos: average pairwise cosine similarity of the word embeddings at the last measurement. Downstream: dev "
        "accuracy (SST-2) or Matthews correlation (CoLA) after fine-tuning.", "",
        *table(spec, summary), "",
        "## The paper's claims at this budget", "",
        "| claim | verdict | evidence |", "|---|---|---|",
        *(f"| {c['claim']} | {c['verdict']} | {c['evidence']} |" for c in claims), "",
        "## Plots", "",
        *(f"![{p.stem}]({p.name})" for p in plots), "",
        "## Runs", "",
        "| run | stages done |", "|---|---|",
        *(f"| {r['mode']}-seed{r['seed']} | {', '.join(r['stages_done']) or 'none'} |" for r in records), "",
    ]
    return "\n".join(lines)


def write_report(spec: AblationSpec) -> list[Path]:
    """Write results.json, report.md and the plots into `spec.output`; returns their paths."""
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    records, summary = collect(spec)
    claims = check_claims(summary, spec.tasks)
    plots = [plot_curves(records, out), plot_learning(records, out), plot_embeddings(records, out),
             plot_downstream(records, spec.tasks, out)]
    results = {"budget": spec.budget(), "modes": spec.modes, "seeds": spec.seeds, "tasks": spec.tasks,
               "summary": summary, "claims": claims,
               "runs": [{k: v for k, v in r.items() if k != "curves"} for r in records]}
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / REPORT_FILE, markdown(spec, records, summary, claims, plots))
    return [out / REPORT_FILE, out / RESULTS_FILE, *plots]

