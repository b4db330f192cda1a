"""Command line of tools/sweep.py (see debertav3.ablation.sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..usage import ArgumentParser
from ..validation import check_writable
from .cli import guarded
from ..errors import AblationError
from .sweep import SweepSpec, parse_variant, run_sweep


def parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Pretrain named variants of one recipe x seeds and compare their eval curves (RTD ROC-AUC, "
                    "RTD loss / prior, MLM accuracy): results.json and curves.png in --output. Rerunning the same "
                    "command continues where it stopped.",
        epilog="key=value overrides apply to every run, before each variant's own")
    p.add_argument("--recipe", default="rtd_tiny", help="recipes/<name>.py or a path to a recipe file")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=OVERRIDES",
                   help='a named list of space-separated overrides, e.g. "lr2e3=optim.lr=2e-3"; "base=" for none')
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per variant (default 1)")
    p.add_argument("--output", required=True, help="the sweep directory (reused to continue)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def sweep() -> list[dict]:
        if args.seeds <= 0:
            raise AblationError(f"--seeds must be positive, got {args.seeds}")
        check_writable(args.output, "--output")
        variants = dict(parse_variant(v) for v in args.variant)
        if len(variants) != len(args.variant):
            raise AblationError("two --variant share a name; give each its own")
        return run_sweep(SweepSpec(args.recipe, variants, list(range(args.seeds)), str(Path(args.output).absolute()),
                                   list(args.overrides)))

    status, records = guarded(sweep, "the finished runs")
    if status == 0:
        print(f"{len(records)} runs in {Path(args.output) / 'results.json'} and curves.png")
    return status
