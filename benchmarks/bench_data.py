"""Data pipeline throughput and memory: tokenise + pack speed (MB of text per second) and peak RSS.

    python benchmarks/bench_data.py [--data ../shared/data/gutenberg_en] [--output runs/bench_data.json]

Runs, each in a fresh subprocess so its peak RSS is its own, with the bundled tokenizer (8000 pieces) and
max_seq_length 512:
  - map-style, `num_proc` processes, fresh cache: read + tokenise + pack + write Arrow; then the cached reload;
  - streaming over a ~10 MB prefix of the corpus and over all of it (~100 MB): every block iterated.
Peak memory: the process tree's proportional set size (PSS: resident memory, shared pages split between the
processes sharing them) sampled from /proc every 20 ms, and getrusage's peak RSS of the main process and of its
largest child (workers are forked, so their RSS includes pages shared with the main process). The targets and
the measured figures are in docs/performance.md ("Data pipeline").
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree_pss_kb(pid: int) -> int:
    """Proportional set size (KiB) of `pid` and all its descendants: resident memory with each shared page
    divided among the processes that share it, so forked workers are not counted twice (from /proc; processes
    that vanish meanwhile count 0)."""
    total, stack = 0, [pid]
    while stack:
        proc = Path(f"/proc/{stack.pop()}")
        try:
            total += int(re.search(r"Pss:\s+(\d+)", (proc / "smaps_rollup").read_text()).group(1))
            for task in (proc / "task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak_kb, self.done = interval, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_kb = max(self.peak_kb, tree_pss_kb(os.getpid()))
            self.done.wait(self.interval)


def measure(spec: dict) -> dict:
    """One measurement (runs in its own subprocess): build the datasets and go through every training block."""
    from debertav3.data import Tokenizer, build_datasets
    from debertav3.data.config import DataConfig
    import pyarrow.compute as pc

    tokenizer = Tokenizer.load(None)
    cfg = DataConfig(train_files=[spec["train"]], valid_files=[spec["valid"]], streaming=spec["streaming"],
                     num_proc=spec["num_proc"], cache_dir=spec["cache_dir"], max_seq_length=512)
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    train, valid = build_datasets(cfg, tokenizer, seed=0)
    if spec["streaming"]:  # streaming tokenises while iterating: the pass over the blocks is the work measured
        blocks = tokens = 0
        for block in train:
            blocks, tokens = blocks + 1, tokens + len(block)
    seconds = time.perf_counter() - start
    if not spec["streaming"]:
        blocks = len(train)
        tokens = pc.sum(pc.list_value_length(train.table.data.column("input_ids"))).as_py()
    result = dict(blocks=blocks, tokens=tokens, valid_blocks=len(valid), seconds=round(seconds, 2))
    if not spec["streaming"]:
        start = time.perf_counter()
        build_datasets(cfg, tokenizer, seed=0)
        result["cached_reload_seconds"] = round(time.perf_counter() - start, 2)
    sampler.done.set()
    sampler.join()
    result.update(peak_pss_tree_mb=round(sampler.peak_kb / 1024),
                  peak_rss_main_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  peak_rss_largest_child_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
    return result


def text_prefix(source: Path, target: Path, megabytes: float) -> None:
    """Whole books from the start of `source` until at least `megabytes` MB of text, in the same format.

    Streamed line by line: a child's getrusage peak starts at its parent's, so this process must stay small.
    """
    size = 0
    with gzip.open(source, "rb") as f, gzip.open(target, "wb", compresslevel=1) as out:
        for line in f:
            if line == b"\n" and size >= megabytes * 1e6:  # a blank line ends a book
                break
            out.write(line)
            size += len(line)


def text_megabytes(*paths: str) -> float:
    total = 0
    for path in paths:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total / 1e6


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], check=True,
                         capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    megabytes = text_megabytes(spec["train"], spec["valid"])
    result.update(name=spec["name"], text_mb=round(megabytes, 1), mb_per_s=round(megabytes / result["seconds"], 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gutenberg_en"),
                        help="folder with train.txt.gz and valid.txt.gz")
    parser.add_argument("--output", default=str(REPO / "runs" / "bench_data.json"))
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    data = Path(args.data)
    if not (data / "train.txt.gz").is_file():
        sys.exit(f"bench_data: no train.txt.gz in {data}; pass --data")
    # The load average before we start says whether other jobs share the CPUs (the speed scales with what is left).
    machine = dict(cpus=os.cpu_count(), python=sys.version.split()[0], load_average=os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "first_10mb.txt.gz"
        text_prefix(data / "train.txt.gz", small, 10)
        base = dict(valid=str(data / "valid.txt.gz"), num_proc=args.num_proc)
        specs = [dict(base, name=f"map-style, num_proc={args.num_proc}", train=str(data / "train.txt.gz"),
                      streaming=False, cache_dir=str(Path(tmp) / "cache")),
                 dict(base, name="streaming, ~10 MB", train=str(small), streaming=True, cache_dir=None),
                 dict(base, name="streaming, ~100 MB", train=str(data / "train.txt.gz"), streaming=True,
                      cache_dir=None)]
        results = [run(spec) for spec in specs]
    header = f"{'run':<22} {'text MB':>8} {'s':>7} {'MB/s':>6} {'blocks':>8} {'tokens':>11} {'PSS tree MB':>12} " \
             f"{'RSS main':>9} {'child':>6}"
    print(header)
    for r in results:
        print(f"{r['name']:<22} {r['text_mb']:>8} {r['seconds']:>7} {r['mb_per_s']:>6} {r['blocks']:>8} "
              f"{r['tokens']:>11} {r['peak_pss_tree_mb']:>12} {r['peak_rss_main_mb']:>9} "
              f"{r['peak_rss_largest_child_mb']:>6}")
    print(f"map-style cached reload: {results[0]['cached_reload_seconds']} s; "
          f"load average before the runs: {machine['load_average'][0]:.1f} on {machine['cpus']} CPUs")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(dict(machine=machine, results=results), indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
