"""Our RTD training step against one assembled from transformers parts: tokens/s, their ratio, peak RSS, FLOPs.

    python benchmarks/bench_rtd.py --seq 128 --batch 16 --method both --allocator both \\
        --ours auto --ours eager --ours eager+compile --ours auto@/work/exp/base19 --theirs-compiled \\
        --repeats 3 --output results.json

The steps are described in benchmarks/common.py, the two timing methods (`--method fresh`: each step alone in
processes of its own, as a user runs it; `--method alternating`: ours and theirs alternating inside shared
processes) in benchmarks/methods.py. Each runs under glibc's default allocator thresholds and under
keep_freed_memory's (`--allocator`). `--ours` (repeatable) names each variant of our step: `auto` or `eager`
(every reference implementation) or `key=value,...` of the ModelConfig *_impl keys, optionally `+compile`
(torch.compile of the whole step's model) and `@TREE` to import debertav3 from another source tree (an untouched
worktree of an older commit, say); results are labelled with the tree's commit. `--theirs-compiled` adds the
transformers step with each network compiled. All variants are timed in the same run against the same
transformers processes, side by side.

Also reported: the machine (CPU model, cores, torch threads, versions), model FLOPs per token of each step
(torch's FlopCounterMode over one forward + backward, in-place GEMMs included, counted in the first process of
each), the fp32 GEMM peak measured in this process before the runs, and utilisation = tokens/s * FLOPs/token /
peak, and the load average before and after (other processes on the machine skew every figure). Output: a
markdown table on stdout and, with `--output`, every process's figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import ALLOCATOR_SETTINGS, THEIRS, Variant, add_shape_arguments, gemm_peak, machine
from debertav3.io_utils import atomic_write_text
from methods import GIB, METHODS, Runner


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--method", choices=(*METHODS, "both"), default="both")
    parser.add_argument("--allocator", choices=(*ALLOCATOR_SETTINGS, "both"), default="both",
                        help="glibc: the C library's defaults; keep_freed: keep_freed_memory's thresholds, both steps")
    parser.add_argument("--ours", action="append", metavar="IMPL[+compile][@TREE]",
                        help="a variant of our step (repeatable; default: auto from this checkout)")
    parser.add_argument("--theirs-compiled", action="store_true",
                        help="also time the transformers step under torch.compile (each network compiled)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="processes per step kind (fresh) or per variant (alternating)")
    parser.add_argument("--rounds", type=int, default=9, help="timed steps per step kind and process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per step kind and process first")
    parser.add_argument("--gemm-seconds", type=float, default=3.0, help="how long to measure the GEMM peak")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--repeats and --rounds must be at least 1, --warmup at least 0")
    try:
        args.variants = [Variant.parse(spec) for spec in args.ours or ["auto"]]
    except ValueError as exc:
        parser.error(str(exc))
    if args.theirs_compiled:
        args.variants.append(Variant.theirs_compiled())
    if len({variant.label for variant in args.variants}) < len(args.variants):
        parser.error("--ours: two variants with the same implementations and commit")
    return args


def _rate(stats: dict) -> str:
    return f"{stats['tokens_per_second']:.0f} ({stats['min']:.0f}-{stats['max']:.0f})"


def markdown_table(results: dict) -> str:
    """One row per method, allocator setting and variant of ours."""
    lines = ["| method | allocator | ours | ours tokens/s (range) | transformers tokens/s (range) | ratio "
             "| per-process ratios | peak RSS ours / theirs |", "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for setting, rows in results.get(method, {}).items():
            for label, row in rows.items():
                memory = "-"
                if "memory_ratio" in row:
                    memory = (f"{row['ours']['peak_rss_bytes'] / GIB:.2f} / {row['theirs']['peak_rss_bytes'] / GIB:.2f}"
                              f" GiB ({row['memory_ratio']:.2f}x)")
                ratios = " ".join(f"{r:.2f}" for r in row["per_process_ratios"])
                lines.append(f"| {method} | {setting} | {label} | {_rate(row['ours'])} | {_rate(row['theirs'])} "
                             f"| **{row['ratio']:.2f}x** | {ratios} | {memory} |")
    return "\n".join(lines)


def flops_table(flops_per_token: dict, results: dict, peak: float) -> str:
    """Model FLOPs per token of each step and its utilisation of the GEMM peak in each fresh setting."""
    fresh = results.get("fresh", {})
    lines = ["| step | MFLOP/token | " + " | ".join(f"utilisation, fresh {s}" for s in fresh) + " |",
             "|---|---|" + "---|" * len(fresh)]
    for label, flops in flops_per_token.items():
        cells = []
        for rows in fresh.values():
            rates = {key: row["ours"]["tokens_per_second"] for key, row in rows.items()}
            rates[THEIRS] = next(iter(rows.values()))["theirs"]["tokens_per_second"]
            cells.append(f"{100 * rates[label] * flops / peak:.0f}%")
        lines.append(f"| {label} | {flops / 1e6:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = list(METHODS) if args.method == "both" else [args.method]
    settings = list(ALLOCATOR_SETTINGS) if args.allocator == "both" else [args.allocator]
    about = machine()
    print(f"{about['cpu']}, {about['cores']} cores, {about['torch_threads']} torch threads, torch {about['torch']}, "
          f"transformers {about['transformers']}; seq {args.seq} x batch {args.batch}", flush=True)
    peak = gemm_peak(args.gemm_seconds)
    print(f"fp32 GEMM peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    runner = Runner(args)
    results, wall, load = {}, {}, {"start": os.getloadavg()}
    for method in methods:
        start = time.perf_counter()
        results[method] = METHODS[method](runner, args.variants, settings, args.repeats)
        wall[method] = time.perf_counter() - start
    load["end"] = os.getloadavg()
    report = {"machine": about, "gemm_peak_flops": peak, "flops_per_token": runner.flops_per_token,
              "shape": runner.shape, "warmup": args.warmup, "rounds": args.rounds, "repeats": args.repeats,
              "variants": [{"label": v.label, "tree": str(v.tree), "commit": v.commit, "impl": v.impl,
                            "compile": v.compile} for v in args.variants],
              "wall_seconds": wall, "load_average": load, **results}
    print("\n" + markdown_table(results) + "\n")
    if "fresh" in results:
        print(flops_table(runner.flops_per_token, results, peak) + "\n")
    print(", ".join(f"{method}: {seconds:.0f} s" for method, seconds in wall.items())
          + f"; load average (1, 5, 15 min) {load['start']} at the start, {load['end']} at the end")
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
