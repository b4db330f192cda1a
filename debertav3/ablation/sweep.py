"""A recipe sweep: pretrain named variants of one recipe (each a list of `key=value` overrides) x seeds, then compare
how fast each one's discriminator learns.

    python tools/sweep.py --recipe rtd_tiny --output runs/sweep --seeds 2 \
        --variant "paper=" --variant "init05=model.initializer_range=0.05" [key=value ...]

Layout of the output directory:

    runs/<variant>-seed<S>/     train.output_dir of that run (checkpoints/, tensorboard/)
    results.json                every run's eval curves (step -> value) and wall time, rewritten after each run
    curves.png                  eval RTD AUC, RTD loss / prior and MLM accuracy against step, mean over seeds

Runs are continued, not redone, when the same command is run again: a finished run is skipped, an unfinished one
resumes from its last checkpoint (train.resume=auto). The curves are the trainer's own evaluation
(`eval/rtd_auc`, `eval/rtd_loss_vs_prior`, `eval/mlm_accuracy`, see debertav3/train/loop.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io_utils import atomic_write_text
from .curves import read_scalars
from ..errors import AblationError, Interrupted
from .runner import checkpointed_step, load_recipe

EVAL_TAGS = {"eval/rtd_auc": "eval RTD ROC-AUC", "eval/rtd_loss_vs_prior": "eval RTD loss / prior",
             "eval/mlm_accuracy": "eval MLM accuracy"}
RESULTS_FILE = "results.json"


@dataclass
class SweepSpec:
    recipe: str
    variants: dict[str, list[str]]  # name -> overrides of that variant
    seeds: list[int]
    output: str
    overrides: list[str] = field(default_factory=list)  # applied to every run, before the variant's own


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name=key=value key=value' (or 'name=' for the recipe as it is) -> (name, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or "/" in name:
        raise AblationError(f"--variant {text!r} is not NAME=OVERRIDES (e.g. \"init05=model.initializer_range=0.05\")")
    return name, rest.split()


def run_directory(spec: SweepSpec, name: str, seed: int) -> Path:
    return Path(spec.output) / "runs" / f"{name}-seed{seed}"


def run_config(spec: SweepSpec, name: str, seed: int):
    """The validated `Config` of one run: recipe < sweep overrides < variant < what the sweep fixes per run."""
    from ..errors import ConfigError
    from ..train.config_io import load_config

    fixed = [f"train.seed={seed}", f"train.output_dir={run_directory(spec, name, seed)}", "train.resume=auto",
             "train.progress=false"]
    try:
        return load_config(load_recipe(spec.recipe), None, [*spec.overrides, *spec.variants[name], *fixed])
    except ConfigError as exc:
        raise AblationError(f"variant {name}: {exc}") from None


def validate(spec: SweepSpec) -> None:
    """Every variant's config, checked before anything trains."""
    if not spec.variants or not spec.seeds:
        raise AblationError("give at least one --variant and a positive --seeds")
    for name in spec.variants:
        run_config(spec, name, spec.seeds[0])


def pretrain(spec: SweepSpec, name: str, seed: int) -> float:
    """Train one run to its max_steps (resuming if it was stopped); returns the wall time this call took."""
    from ..train.loop import train

    cfg = run_config(spec, name, seed)
    if checkpointed_step(cfg.train.output_dir) >= cfg.train.max_steps:
        return 0.0
    started = time.perf_counter()
    train(cfg)
    if checkpointed_step(cfg.train.output_dir) < cfg.train.max_steps:
        raise Interrupted(f"run {name}-seed{seed} stopped before train.max_steps; rerun the same command to continue")
    return time.perf_counter() - started


def collect(spec: SweepSpec, wall: dict[str, float]) -> list[dict]:
    """One record per run that has logged anything: variant, seed, overrides, eval curves, wall time."""
    records = []
    for name, overrides in spec.variants.items():
        for seed in spec.seeds:
            directory = run_directory(spec, name, seed)
            scalars = read_scalars(directory / "tensorboard") if directory.is_dir() else {}
            curves = {tag: scalars[tag] for tag in EVAL_TAGS if tag in scalars}
            if curves:
                records.append(dict(variant=name, seed=seed, overrides=overrides, curves=curves,
                                    wall_seconds=wall.get(f"{name}-seed{seed}")))
    return records


def write_results(spec: SweepSpec, records: list[dict]) -> Path:
    path = Path(spec.output) / RESULTS_FILE
    payload = dict(recipe=spec.recipe, overrides=spec.overrides, seeds=spec.seeds, runs=records)
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    return path


def previous_wall_times(spec: SweepSpec) -> dict[str, float]:
    """Wall times recorded by an earlier call (a skipped, finished run keeps the time it took then)."""
    path = Path(spec.output) / RESULTS_FILE
    if not path.is_file():
        return {}
    return {f"{r['variant']}-seed{r['seed']}": r["wall_seconds"] for r in json.loads(path.read_text())["runs"]
            if r.get("wall_seconds")}


def run_sweep(spec: SweepSpec) -> list[dict]:
    """Pretrain every variant x seed (seed-major, so a stopped sweep has every variant of its first seeds), writing
    results.json after each run and curves.png at the end."""
    from .plots import sweep_curves

    validate(spec)
    wall = previous_wall_times(spec)
    for seed in spec.seeds:
        for name in spec.variants:
            seconds = pretrain(spec, name, seed)
            if seconds:
                wall[f"{name}-seed{seed}"] = seconds
            write_results(spec, collect(spec, wall))
    records = collect(spec, wall)
    sweep_curves(records, EVAL_TAGS, Path(spec.output) / "curves.png", title=f"{spec.recipe}: eval curves")
    return records
