"""Each fast path against the reference, eager and compiled: our RTD step's variants alternating in one process.

    python benchmarks/bench_fast_paths.py --seq 128 --batch 16 --rounds 8 --output results.json

Every variant of our step (benchmarks/common.py `OurStep`) is built in this one process: the reference (`eager`,
every `*_impl` the plain PyTorch one), the reference under torch.compile, each fast path alone beside the reference
for the rest, and `auto`. After 2 warm-up steps each (compilation included), the variants take one step each in
turn, `--rounds` times, so a change in the machine's speed reaches all of them alike; each variant's figure is its
median step. This is the comparison for deciding whether a hand-written op earns its place (docs/performance.md);
benchmarks/bench_rtd.py times the whole step against transformers' in fresh processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import OurStep, add_shape_arguments, gemm_peak, machine, make_batch, parse_impl
from debertav3.io_utils import atomic_write_text
from debertav3.train.allocator import keep_freed_memory

VARIANTS = ("eager", "eager+compile", "attention_impl=cpu_fused,mlm_loss_impl=eager,dropout_impl=eager",
            "attention_impl=eager,mlm_loss_impl=eager,dropout_impl=cpu_bits", "auto")


def main(argv=None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=8, help="timed steps of each variant")
    parser.add_argument("--gemm-seconds", type=float, default=3.0, help="how long to measure the GEMM peak")
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="';'-separated variants, as bench_rtd.py's --ours without @TREE (default: all above)")
    parser.add_argument("--keep-freed", action="store_true",
                        help="keep_freed_memory's allocator thresholds, as the trainer sets them on CPU")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    shape = {key: getattr(args, key) for key in ("seq", "batch", "hidden", "layers", "heads", "vocab", "sharing")}
    if args.keep_freed:
        keep_freed_memory()
    peak = gemm_peak(args.gemm_seconds)
    steps = {}
    for label in args.variants.split(";"):
        torch.manual_seed(0)
        compiled = label.endswith("+compile")
        steps[label] = OurStep(shape, parse_impl(label.removesuffix("+compile")), compiled)
    batch = make_batch(shape)
    for step in steps.values():
        for _ in range(2):
            step(batch)
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.rounds):
        for label, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[label].append(time.perf_counter() - start)
    tokens = args.seq * args.batch
    reference = statistics.median(times.get("eager+compile", times[next(iter(times))]))
    print(f"{machine()['cpu']}, {torch.get_num_threads()} threads, fp32 GEMM peak {peak / 1e9:.0f} GFLOP/s; "
          f"seq {args.seq} x batch {args.batch}, {args.rounds} rounds, "
          f"{'keep_freed' if args.keep_freed else 'glibc'} allocator")
    print("| variant | median step (s) | range | tokens/s | vs the compiled reference |\n|---|---|---|---|---|")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| {label} | {median:.3f} | {min(values):.3f}–{max(values):.3f} | {tokens / median:.0f} | "
              f"{reference / median:.3f}x |")
    if args.output:
        atomic_write_text(args.output, json.dumps({"machine": machine(), "gemm_peak_flops": peak, "shape": shape,
                                                   "rounds": args.rounds, "keep_freed": args.keep_freed, "seconds": times}, indent=1))
    return times


if __name__ == "__main__":
    main()
