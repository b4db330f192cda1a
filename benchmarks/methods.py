"""The two ways the RTD step benchmark times our step against the transformers one.

fresh (as a user runs it): every process runs one step kind alone, ours or theirs, with no other model in memory:
`warmup` untimed steps, then the median of `rounds` timed steps gives that process's tokens/s; its peak RSS is
that step's alone. `repeats` processes per step kind, started in turn (each variant of ours, then theirs, then
again) so that drift of the machine's load spreads over all of them. The ratio is median(ours tokens/s over
processes) / median(theirs); the per-process ratios pair the i-th process of each. The memory ratio is the same
quotient of the median peak RSS.

alternating: each process builds one variant of ours and the transformers step, warms both up, then alternates
their timed steps; per process each side's median step time gives its tokens/s, and the ratio is the median of
the per-process ratios. Here our step can reuse heap memory the transformers step has just freed, and the
reverse, so it measures something a training run never sees; it is kept to compare with earlier results.

Both run once per allocator setting: glibc's defaults, or keep_freed_memory's mmap and trim thresholds set for
both steps through glibc's environment variables (common.allocator_environment).
"""

from __future__ import annotations

import statistics
import time

from common import SHAPE_KEYS, THEIRS, Variant, run_child, theirs_spec

GIB = 2 ** 30


def tokens_stats(processes: list[dict]) -> dict:
    rates = [p["tokens_per_second"] for p in processes]
    return {"tokens_per_second": statistics.median(rates), "min": min(rates), "max": max(rates),
            "processes": processes}


class Runner:
    """Runs jobs of one shape; counts each step's FLOPs in the first process that runs it; reports progress."""

    def __init__(self, args):
        self.shape = {key: getattr(args, key) for key in SHAPE_KEYS}
        self.tokens = args.seq * args.batch
        self.warmup, self.rounds = args.warmup, args.rounds
        self.flops_per_token: dict[str, float] = {}

    def run(self, specs: list[dict], setting: str) -> tuple[dict, dict]:
        """(per label: tokens/s and step seconds of this process, the process's facts) for one child process."""
        count = any(spec["label"] not in self.flops_per_token for spec in specs)
        job = {"shape": self.shape, "steps": specs, "warmup": self.warmup, "rounds": self.rounds,
               "count_flops": count}
        start = time.perf_counter()
        result = run_child(job, specs[0]["tree"], setting)
        wall = time.perf_counter() - start
        for label, flops in result.get("flops_per_token", {}).items():
            self.flops_per_token.setdefault(label, flops)
        per_step = {label: {"tokens_per_second": self.tokens / statistics.median(seconds), "step_seconds": seconds}
                    for label, seconds in result["seconds"].items()}
        return per_step, {"peak_rss_bytes": result["peak_rss_bytes"], "threads": result["threads"],
                          "process_seconds": wall}


def _progress(method: str, setting: str, label: str, repeat: int, repeats: int, text: str) -> None:
    print(f"  {method:<11} {setting:<10} {label:<30} process {repeat + 1}/{repeats}: {text}", flush=True)


def fresh(runner: Runner, variants: list[Variant], settings: list[str], repeats: int) -> dict:
    """Per allocator setting, per variant of ours: both sides' tokens/s and peak RSS, ratios (module docstring)."""
    specs = [variant.spec() for variant in variants] + [theirs_spec()]
    processes = {setting: {spec["label"]: [] for spec in specs} for setting in settings}
    for repeat in range(repeats):
        for setting in settings:
            for spec in specs:
                per_step, facts = runner.run([spec], setting)
                record = {**per_step[spec["label"]], **facts}
                processes[setting][spec["label"]].append(record)
                _progress("fresh", setting, spec["label"], repeat, repeats,
                          f"{record['tokens_per_second']:.0f} tokens/s, median step "
                          f"{statistics.median(record['step_seconds']):.3f} s, peak RSS "
                          f"{record['peak_rss_bytes'] / GIB:.2f} GiB, process {facts['process_seconds']:.1f} s")
    results = {}
    for setting, by_label in processes.items():
        theirs = _with_memory(tokens_stats(by_label[THEIRS]))
        results[setting] = {}
        for variant in variants:
            ours = _with_memory(tokens_stats(by_label[variant.label]))
            results[setting][variant.label] = {
                "ours": ours, "theirs": theirs,
                "ratio": ours["tokens_per_second"] / theirs["tokens_per_second"],
                "per_process_ratios": [o["tokens_per_second"] / t["tokens_per_second"]
                                       for o, t in zip(ours["processes"], theirs["processes"])],
                "memory_ratio": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]}
    return results


def _with_memory(stats: dict) -> dict:
    return {**stats, "peak_rss_bytes": statistics.median(p["peak_rss_bytes"] for p in stats["processes"])}


def alternating(runner: Runner, variants: list[Variant], settings: list[str], repeats: int) -> dict:
    """Per allocator setting, per variant of ours: both sides' tokens/s alternating in shared processes, ratio."""
    pairs = {setting: {variant.label: [] for variant in variants} for setting in settings}
    for repeat in range(repeats):
        for setting in settings:
            for variant in variants:
                per_step, facts = runner.run([variant.spec(), theirs_spec()], setting)
                pairs[setting][variant.label].append((per_step[variant.label], per_step[THEIRS], facts))
                ours, theirs = per_step[variant.label]["tokens_per_second"], per_step[THEIRS]["tokens_per_second"]
                _progress("alternating", setting, variant.label, repeat, repeats,
                          f"ours {ours:.0f}, theirs {theirs:.0f} tokens/s, ratio {ours / theirs:.2f}x, "
                          f"process {facts['process_seconds']:.1f} s")
    results = {}
    for setting, by_label in pairs.items():
        results[setting] = {}
        for label, runs in by_label.items():
            ratios = [o["tokens_per_second"] / t["tokens_per_second"] for o, t, _ in runs]
            results[setting][label] = {
                "ours": tokens_stats([o for o, _, _ in runs]), "theirs": tokens_stats([t for _, t, _ in runs]),
                "ratio": statistics.median(ratios), "per_process_ratios": ratios,
                "process_facts": [facts for _, _, facts in runs]}
    return results


METHODS = {"fresh": fresh, "alternating": alternating}
