"""The GPU check: what a first session with a GPU measures, in one command of under ten minutes.

    sh benchmarks/gpu_wheels.sh      # here, once: the wheels the GPU machine lacks, into .whl/ (carried there)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py --output $OUT    # there: $OUT/gpu_h100.json
    python benchmarks/gpu_check.py --device cpu --smoke      # every part on tiny sizes (tests/test_gpu_check.py)

The exact device command is in docs/performance.md, "GPU check".

Parts, in the order they run (`--parts` picks some):
  peak      the bf16 GEMM rate of the device (an 8192^3 product timed with CUDA events), what utilisation is
            measured against (gpu_steps.py)
  parity    (a) our backbone against transformers' DebertaV2Model with the same weights, fp32 and bf16 against
            fp32, forward and gradients, for every attention implementation that runs on a GPU (gpu_parity.py)
  timing    (b) one RTD training step at deberta-v3-base sizes, ours (sdpa, and eager attention) against the
            transformers-assembled step, bf16 autocast: tokens/s, ratio, utilisation, peak memory (gpu_steps.py)
  profile   (c) one step of ours under torch.profiler: the attention core's share of the GPU time (gpu_steps.py)
  training  (d) recipes/rtd_small.py for 300 steps in bf16, and again stopped half-way and resumed: eval RTD AUC,
            RTD loss / prior, and how far the resumed run ends from the straight one (gpu_training.py)
  compiled  (b) again under torch.compile, last because compiling is the slowest part; each compile is skipped when
            less time is left than one takes (`--budget-s`)

Each part records its results, or its error as text, in one JSON file, rewritten atomically after every part, so a
run cut short keeps what it had measured; a short summary is printed at the end. The default output is
benchmarks/results/gpu_<device>.json on a GPU; a smoke run writes to a temporary file unless `--output` names one,
so tests never write into the repository.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from common import cpu_name, tree_commit

from debertav3.io_utils import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
PARTS = {"peak": ("gpu_steps", "gemm_peak"), "parity": ("gpu_parity", "check_parity"),  # name -> (module, function)
         "timing": ("gpu_steps", "time_steps"), "profile": ("gpu_steps", "profile_attention"),
         "training": ("gpu_training", "train_and_resume"), "compiled": ("gpu_steps", "time_compiled_steps")}
PACKAGES = ("transformers", "accelerate", "datasets", "omegaconf", "pyarrow", "fsspec", "huggingface_hub")
BASE = {"vocab": 128100, "hidden": 768, "layers": 12, "heads": 12}  # deberta-v3-base; generator: half the depth
TINY = {"vocab": 1000, "hidden": 64, "layers": 2, "heads": 2}
SIZES = {
    "full": {"parity": {**BASE, "batch": 4, "seqs": (128, 512)}, "step": {**BASE, "sharing": "es"},
             "shapes": ((128, 32), (512, 8)), "warmup": 3, "steps": 20, "gemm": 8192,
             # seconds the training part and each compile need at least: not started with less left
             "needs_s": {"training": 150, "compile": 90},
             "training": {"steps": 300, "batch": 8, "seq": 512,
                          "overrides": ["optim.lr=1e-4", "optim.warmup_steps=30", "train.eval_batches=8",
                                        "train.log_every=5", "data.num_proc=8"]}},
    "smoke": {"parity": {**TINY, "batch": 2, "seqs": (32,)}, "step": {**TINY, "sharing": "es"},
              "shapes": ((32, 4),), "warmup": 1, "steps": 3, "gemm": 256, "needs_s": {},
              "training": {"steps": 8, "batch": 4, "seq": 32,
                           "overrides": ["model.hidden_size=64", "model.num_hidden_layers=2",
                                         "model.num_attention_heads=2", "model.intermediate_size=128",
                                         "model.vocab_size=8064", "optim.lr=1e-3", "optim.warmup_steps=2",
                                         "train.eval_batches=1", "train.log_every=1", "data.num_proc=1"]}},
}


@dataclass
class Run:
    """What every part reads (device, sizes, the time left) and where it records its results."""

    device: torch.device
    smoke: bool
    output: Path
    deadline: float  # time.monotonic() by which the run should end
    results: dict = field(default_factory=dict)

    @property
    def sizes(self) -> dict:
        return SIZES["smoke" if self.smoke else "full"]

    def step_shapes(self) -> list[dict]:
        return [dict(self.sizes["step"], seq=seq, batch=batch) for seq, batch in self.sizes["shapes"]]

    def skip_reason(self, needed_s: float) -> str | None:
        """Why something that takes `needed_s` seconds should not start now, or None."""
        left = self.deadline - time.monotonic()
        return None if left > max(needed_s, 0) else f"time budget: {max(left, 0):.0f} s left, needs {needed_s:.0f} s"

    @staticmethod
    def describe(error: BaseException) -> str:
        return "".join(traceback.format_exception(error))[-4000:]

    def save(self) -> None:
        atomic_write_text(self.output, json.dumps(self.results, indent=1) + "\n")


def device_slug(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100": the first word with letters then digits, else the name made safe."""
    found = re.search(r"\b([A-Za-z]+\d+)\b", name)
    return found.group(1).lower() if found else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def output_path(output: Path | None, device: torch.device, smoke: bool) -> Path:
    """`output` as given, gpu_<device>.json inside it if it is a directory; by default benchmarks/results/ on a GPU,
    the temporary directory in smoke mode."""
    slug = device_slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else device.type
    name = f"gpu_{slug}{'_smoke' if smoke else ''}.json"
    if output is None:
        return Path(tempfile.gettempdir() if smoke else REPO / "benchmarks" / "results", name)
    return output / name if output.is_dir() else output


def machine(device: torch.device) -> dict:
    """The device, the commit measured, and the versions of what the run imports (the GPU image's own, or the
    wheels carried to it)."""
    info = {"device": cpu_name(), "torch": torch.__version__, "python": platform.python_version(),
            "commit": tree_commit(REPO)}
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, memory_gib=props.total_memory / 2 ** 30)
    return info


def run_part(run: Run, name: str) -> None:
    """One part into `run.results[name]`: its results, {"skipped": why} or {"error": traceback}."""
    module, function = PARTS[name]
    reason = run.skip_reason(run.sizes["needs_s"].get(name, 0))
    started = time.perf_counter()
    print(f"--- {name}", flush=True)
    if reason:
        run.results[name] = {"skipped": reason}
    else:
        try:
            run.results[name] = getattr(importlib.import_module(module), function)(run)
        except Exception as error:  # noqa: BLE001 - recorded; the other parts still run
            run.results[name] = {"error": run.describe(error)}
            print(run.results[name]["error"], file=sys.stderr)
    if isinstance(run.results[name], dict):
        run.results[name]["part_s"] = round(time.perf_counter() - started, 1)
    run.save()


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def part_lines(name: str, result: dict) -> list[str]:
    """The summary's lines for one part's results."""
    if "error" in result or "skipped" in result:
        outcome = (f"skipped ({result['skipped']})" if "skipped" in result else
                   "ERROR " + result["error"].strip().splitlines()[-1])
        return [f"{name}: {outcome}"]
    if name == "peak":
        return [f"bf16 GEMM {result['size']}^3: {result['median_tflops']:.1f} TFLOP/s "
                + f"(best {result['best_tflops']:.1f})"]
    if name == "parity":
        return [parity_line(impl, seq, row) for impl, rows in result["implementations"].items()
                for seq, row in rows.items()]
    if name in ("timing", "compiled"):
        return [f"{name} {shape}: " + " | ".join(step_text(label, v) for label, v in row.items() if isinstance(v, dict))
                + f"; ratio {number(row['ratio'], '.2f')}x" for shape, row in result.items() if isinstance(row, dict)]
    if name == "profile":
        shares = ", ".join(f"{shape} {number(row['share'], '.0%')}" for shape, row in result["shapes"].items())
        return [f"attention core share of the {result['measure']}: {shares}"]
    weights, losses = result["weights"], result["losses"]
    return [f"training {result['recipe']} {result['eval_step']} steps: eval RTD AUC {result['eval_rtd_auc']:.3f}, "
            + f"RTD loss / prior {result['eval_rtd_loss_vs_prior']:.2f}; resumed vs straight: "
            + f"{weights['equal']}/{weights['tensors']} tensors equal (max diff {weights['max_abs_diff']:.1e}), "
            + f"loss diff before the stop {number(losses['before_stop'], '.1e')}, "
            + f"after the resume {number(losses['after_resume'], '.1e')}"]


def parity_line(impl: str, seq: str, row: dict) -> str:
    return (f"parity {impl} {seq}: fp32 {row['fp32_forward']:.1e} / grad {row['fp32_grad']:.1e}; "
            f"bf16 {row['bf16_forward']:.1e} / grad {row['bf16_grad']:.1e} (transformers' bf16 "
            f"{row['bf16_transformers_forward']:.1e} / {row['bf16_transformers_grad']:.1e}): "
            + ("ok" if row["passed"] else "FAILED"))


def step_text(label: str, result: dict) -> str:
    if "tokens_per_s" not in result:
        return f"{label} " + ("skipped" if "skipped" in result else "ERROR")
    return (f"{label} {result['tokens_per_s']:.0f} tok/s, MFU {number(result['mfu'], '.0%')}, "
            f"{number(result.get('peak_memory_gib'), '.1f')} GiB")


def summary(results: dict, output: Path) -> str:
    device = results["machine"]
    lines = [f"GPU check ({results['mode']}) on {device['device']}, torch {device['torch']}: "
             + f"{results['elapsed_s']} s, results in {output}"]
    for name in PARTS:
        if name in results:
            lines += part_lines(name, results[name])
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the check; cpu: only with --smoke")
    parser.add_argument("--smoke", action="store_true", help="every part on tiny sizes (seconds, any device)")
    parser.add_argument("--output", type=Path, help="the JSON file, or a directory for gpu_<device>.json (default: "
                        "benchmarks/results/ on a GPU, the temporary directory in smoke mode)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds the whole check may take; parts and compiles that would not fit are skipped")
    args = parser.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown or not args.parts:
        parser.error(f"--parts: {unknown[0] if unknown else 'none given'}; use some of {', '.join(PARTS)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s:g}")
    if args.device == "cpu" and not args.smoke:
        parser.error("--device cpu needs --smoke: the full sizes are for a GPU")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; run on a GPU machine, or use --device cpu --smoke")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.monotonic()
    run = Run(device, args.smoke, output_path(args.output, device, args.smoke).resolve(), started + args.budget_s)
    run.results.update(mode="smoke" if args.smoke else "full", command=sys.argv, machine=machine(device),
                       sizes=run.sizes, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    for name in args.parts:
        run_part(run, name)
    run.results["elapsed_s"] = round(time.monotonic() - started, 1)
    run.save()
    print(summary(run.results, run.output))
    return run.output


if __name__ == "__main__":
    main()
