"""One benchmark process: build the job's training steps, warm each up, time them round-robin, write JSON.

    python benchmarks/step_process.py JOB.json RESULT.json

Started by common.run_child in a fresh interpreter, with PYTHONPATH naming the source tree to import debertav3
from and the allocator's environment already set (glibc reads MALLOC_* when the process starts). The job lists
one step (timed alone: the fresh-process method) or several (alternated: the alternating method). Each step gets
`warmup` untimed iterations, then `rounds` timed ones; with several steps the timed iterations alternate between
them. The result holds every timed step's seconds, the process's peak RSS (VmHWM, read after the timed steps, so
it covers only what this process built and ran), the torch thread count, the debertav3 file imported (the parent
checks it lies in the tree it asked for) and, when asked, FLOPs per token counted after everything else.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import debertav3
from common import build_step, flops_per_token, make_batch, peak_rss_bytes


def run(job: dict) -> dict:
    torch.manual_seed(0)
    shape = job["shape"]
    batch, tokens = make_batch(shape), shape["batch"] * shape["seq"]
    steps = {spec["label"]: build_step(spec, shape) for spec in job["steps"]}
    for step in steps.values():
        for _ in range(job["warmup"]):
            step(batch)
    seconds = {label: [] for label in steps}
    for _ in range(job["rounds"]):
        for label, step in steps.items():
            start = time.perf_counter()
            step(batch)
            seconds[label].append(time.perf_counter() - start)
    result = {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "threads": torch.get_num_threads(),
              "debertav3_file": debertav3.__file__}
    if job["count_flops"]:
        result["flops_per_token"] = {label: flops_per_token(step, batch, tokens) for label, step in steps.items()}
    return result


if __name__ == "__main__":
    job_path, result_path = sys.argv[1:]
    Path(result_path).write_text(json.dumps(run(json.loads(Path(job_path).read_text()))))
