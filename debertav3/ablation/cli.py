"""Command line of tools/ablate.py: plan, run (resumably) and report an embedding-sharing ablation.

A mistake (unknown mode or recipe, bad override, missing data directory or task file) prints one line
`error: ...` on stderr and exits with status 2 before anything is trained or written. A pretraining stopped by
SIGTERM / SIGINT (it saved a checkpoint) prints `stopped: ...` and exits with 3; Ctrl-C anywhere else prints
`interrupted: ...` and exits with 130 (debertav3/usage.py). Either way the same command continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from .. import usage
from ..errors import AblationError, Interrupted, UserError
from ..validation import check_writable
from .runner import MODES, AblationSpec, FinetuneOptions, check_budget, execute, plan, \
    validate

EXIT_INTERRUPTED = 3
# The fine-tuning options' names in FinetuneConfig's messages, and the flags that set them here.
FINETUNE_FLAGS = {"--max-train-examples": "--finetune-examples", "--epochs": "--finetune-epochs",
                  "--lr": "--finetune-lr", "--batch-size": "--finetune-batch-size"}
T = TypeVar("T")


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parser() -> usage.ArgumentParser:
    p = usage.ArgumentParser(
        description="Compare embedding sharing (es, nes, gdes) with the MLM and no-pretraining baselines at equal "
                    "budget: pretrain, export and fine-tune every mode x seed, then write report.md, results.json "
                    "and plots (see docs/ablation.md). Rerunning the same command continues where it stopped.",
        epilog="key=value overrides apply to every pretraining run, e.g. model.hidden_size=64 "
               "data.train_files=[corpus.txt.gz]")
    p.add_argument("--recipe", default="rtd_tiny", help="recipes/<name>.py or a path to a recipe file (default rtd_tiny)")
    p.add_argument("--modes", type=comma_list, default=list(MODES), help=f"comma list of {','.join(MODES)} (default all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per mode: S..S+N-1 with S = --first-seed (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0); with --seeds 2 "
                                                             "--first-seed 1 an ablation run on seed 0 gains seeds 1, 2")
    p.add_argument("--max-steps", type=int, required=True, help="pretraining steps of every run")
    p.add_argument("--tasks", type=comma_list, default=["sst2", "cola"], help="fine-tuning presets (default sst2,cola)")
    p.add_argument("--output", required=True, help="the ablation directory (reused to resume)")
    p.add_argument("--data-dir", help="fine-tuning data holding sst2/ and cola/ (default: $DEBERTAV3_DATA, else "
                                      "../shared/data beside the repository)")
    p.add_argument("--finetune-examples", type=int, help="training examples per task, drawn at random (default all)")
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning peak learning rate (default 2e-5)")
    p.add_argument("--finetune-batch-size", type=int, help="fine-tuning batch size (default 32)")
    p.add_argument("--report-only", action="store_true", help="write the report from the runs finished so far")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def build_spec(args: argparse.Namespace) -> AblationSpec:
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise AblationError(f"--data-dir {args.data_dir} is not a directory; point it at the folder holding sst2/ "
                            "and cola/")
    if args.seeds <= 0:
        raise AblationError(f"--seeds must be positive, got {args.seeds}")
    if args.first_seed < 0:
        raise AblationError(f"--first-seed must be 0 or more, got {args.first_seed}")
    check_writable(args.output, "--output")
    options = FinetuneOptions(args.finetune_examples, args.finetune_epochs, args.finetune_lr, args.finetune_batch_size)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    spec = AblationSpec(recipe=args.recipe, modes=args.modes, seeds=seeds,
                        max_steps=args.max_steps, tasks=args.tasks, output=str(Path(args.output).absolute()),
                        data_dir=args.data_dir, overrides=list(args.overrides), finetune=options)
    try:
        validate(spec)
    except UserError as exc:
        flag, _, rest = str(exc).partition(" ")
        if flag not in FINETUNE_FLAGS:
            raise
        raise AblationError(f"{FINETUNE_FLAGS[flag]} {rest}") from None
    return spec


def guarded(action: Callable[[], T], kept: str) -> tuple[int, Optional[T]]:
    """`usage.guarded(action)` (user mistakes, Ctrl-C: `kept` says what survives), and a pretraining that stopped
    early: (3, None) after one line on stderr."""
    try:
        return usage.guarded(action, f"{kept} are kept; rerun the same command to continue",
                             hint="choose another --output")
    except Interrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED, None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .report import write_report

    def ablate() -> list[Path]:
        spec = build_spec(args)
        if not args.report_only:
            check_budget(spec)
            for run in plan(spec):
                execute(spec, run)
                write_report(spec)  # after every run: a stopped ablation still has an up-to-date report
        return write_report(spec)

    status, paths = guarded(ablate, "the finished stages")
    if status == 0:
        print("wrote " + ", ".join(str(p) for p in paths))
    return status
