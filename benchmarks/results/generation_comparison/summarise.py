"""Summarise run.sh's runs: results.json (per run and mean ± std per variant) and the curves plot of
docs/generation.md.

    python benchmarks/results/generation_comparison/summarise.py OUT [--plot docs/generation/curves.png]
"""

import argparse
import json
import re
import statistics
from pathlib import Path

from debertav3.ablation.curves import read_scalars

# Run directory prefix -> label; the first four are the comparison (and the plot), the others the MT lr screen.
VARIANTS = {"deberta": "DeBERTa (relative + EMD)", "ap": "DeBERTa-AP (relative + absolute at the input)",
            "mt-lr2e-3": "DeBERTa-MT (MLM + ARLM, EMD; lr 2e-3)", "abs": "absolute positions only (RoBERTa analogue)",
            "mt": "DeBERTa-MT at the recipe's lr 4e-3", "mt-lr1e-3": "DeBERTa-MT at lr 1e-3",
            "mt2x-lr2e-3": "DeBERTa-MT, lr 2e-3, 2400 steps (as many ARLM steps as the others)"}
PLOTTED = ("deberta", "ap", "mt-lr2e-3", "abs")
TEST_SETS = ("gutenberg", "wikitext2")
PRINTED = re.compile(r": ([\d,]+) tokens in .* loss ([\d.]+) nats/token, perplexity ([\d.]+)")


def run_results(run: Path) -> dict:
    scalars = read_scalars(run / "tensorboard")
    curve = {int(step): value for step, value in scalars["eval/perplexity"].items()}
    result = {"curve": curve, "heldout": curve[max(curve)],
              "unigram": scalars["eval/perplexity_unigram"][max(curve)],
              "wall_seconds": wall_seconds(Path(f"{run}.log").read_text())}
    if "eval/mlm_accuracy" in scalars:
        result["mlm_accuracy"] = scalars["eval/mlm_accuracy"][max(curve)]
    for name in TEST_SETS:
        match = PRINTED.search(Path(f"{run}.{name}.txt").read_text())
        result[name] = float(match.group(3))
        result[f"{name}_tokens"] = int(match.group(1).replace(",", ""))
    return result


def wall_seconds(log: str) -> float:
    """The run's wall time from its summary line ("wall time 11 min 18 s")."""
    minutes, seconds = re.search(r"wall time (?:(\d+) min )?([\d.]+) s", log).groups()
    return 60 * int(minutes or 0) + float(seconds)


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--plot")
    args = parser.parse_args()
    runs = {}
    for variant in VARIANTS:
        for run in sorted(Path(args.out).glob(f"{variant}-s*")):
            if (run / "done").exists() and (run / "tensorboard").is_dir():
                runs.setdefault(variant, {})[run.name] = run_results(run)
    summary = {variant: {key: mean_std([r[key] for r in per_run.values()])
                         for key in ("heldout", "gutenberg", "wikitext2", "wall_seconds")}
               for variant, per_run in runs.items()}
    here = Path(__file__).parent
    (here / "results.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1, sort_keys=True))
    print("variant | held-out books | gutenberg test | wikitext-2 test | seeds")
    for variant, figures in summary.items():
        print(variant, " | ".join(f"{figures[k]['mean']:.1f} ± {figures[k]['std']:.1f}"
                                  for k in ("heldout", "gutenberg", "wikitext2")), figures["heldout"]["n"])
    if args.plot:
        plot(runs, Path(args.plot))


def plot(runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, per_run in ((v, runs[v]) for v in PLOTTED if v in runs):
        steps = sorted(next(iter(per_run.values()))["curve"])
        values = [[r["curve"][s] for s in steps] for r in per_run.values()]
        mean = [statistics.mean(v) for v in zip(*values)]
        low, high = [min(v) for v in zip(*values)], [max(v) for v in zip(*values)]
        line, = ax.plot(steps, mean, marker="o", label=f"{VARIANTS[variant]}, {len(values)} seeds")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    unigram = next(iter(next(iter(runs.values())).values()))["unigram"]
    ax.axhline(unigram, color="grey", linestyle="--", label=f"unigram baseline ({unigram:.0f})")
    ax.set_yscale("log")
    ax.set_xlabel("step (16 x 128 tokens each)")
    ax.set_ylabel("held-out perplexity (bundled valid books)")
    ax.set_title("arlm_tiny: mean over seeds, band = min..max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
