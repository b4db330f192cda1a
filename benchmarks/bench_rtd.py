"""Our RTD training step against one assembled from transformers parts, side by side in one run.

The baseline is what a user without debertav3 would write: generator `DebertaV2ForMaskedLM` at half depth,
discriminator `DebertaV2ForTokenClassification` (1 label), one shared word-embedding table, replacements sampled
from the generator's softmax, loss = MLM + 50 * BCE over non-pad tokens, AdamW. Ours is `RTDModel` with the same
shapes and, by default, the same sharing (ES; `--sharing gdes` adds E_Delta, a second vocabulary-sized table with
its gradient and optimizer state), one AdamW step per iteration. The two steps alternate after warm-up (median
step time of each) in each of `--repeats` fresh processes, and the ratio reported is the median of the processes'
ratios: a step's speed depends on the state of its process's heap, the transformers step's most (+-9% from one
process to the next at seq 512, where ours moves under 1%), so one process's ratio is partly luck.

    python benchmarks/bench_rtd.py --seq 128 --batch 16 --output results.json

Reports tokens/s of each and their ratio, model FLOPs per token (counted by torch's FlopCounterMode over one forward
+ backward, in-place GEMMs included), achieved FLOP/s, utilisation against a fp32 GEMM peak measured in the same
run, and the peak RSS of each step, each measured in a child process of its own (RSS only grows, so one process
cannot tell two). glibc keeps freed memory mapped, so RSS measures the allocator's caching as well as live tensors;
with `--mmap-threshold 131072` both children return large freed blocks at once (MALLOC_MMAP_THRESHOLD_), and peak
RSS tracks live memory. Both settings are reported when asked; neither favours one side.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from debertav3 import RTDModel, generator_config
from debertav3.config import ModelConfig
from debertav3.io_utils import atomic_write_text
from debertav3.train.optim import build_optimizer
from debertav3.train_config import OptimConfig

MASK_ID, SPECIALS = 4, (0, 1, 2, 3, 4)


def model_config(args) -> ModelConfig:
    """The issue's shapes: hidden 256, 6 layers, 4 heads, intermediate 1024, v3 attention, vocab 32000."""
    return ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, intermediate_size=4 * args.hidden)


def make_batch(args, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    original = torch.randint(10, args.vocab, (args.batch, args.seq), generator=gen)
    original[:, 0], original[:, -1] = 1, 2
    selected = (torch.rand(original.shape, generator=gen) < 0.15)
    selected[:, 0] = selected[:, -1] = False
    return dict(input_ids=original.masked_fill(selected, MASK_ID), attention_mask=torch.ones_like(original),
                labels=original.masked_fill(~selected, -100))


class OurStep:
    def __init__(self, args):
        disc = model_config(args)
        self.model = RTDModel(generator_config(disc), disc, args.sharing, special_token_ids=SPECIALS)
        self.optimizer = build_optimizer(self.model, OptimConfig(lr=1e-4, warmup_steps=0))

    def loss(self, batch):
        return self.model(**batch).loss

    def __call__(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.optimizer.step()


class TransformersStep:
    def __init__(self, args):
        import transformers

        from debertav3.hf import config_to_hf

        disc = model_config(args)
        as_hf = lambda cfg, **kw: transformers.DebertaV2Config(**config_to_hf(cfg, [], **kw))  # noqa: E731
        self.generator = transformers.DebertaV2ForMaskedLM(as_hf(generator_config(disc)))
        self.discriminator = transformers.DebertaV2ForTokenClassification(as_hf(disc, num_labels=1))
        self.discriminator.deberta.embeddings.word_embeddings = self.generator.deberta.embeddings.word_embeddings
        params = {id(p): p for m in (self.generator, self.discriminator) for p in m.parameters()}
        self.optimizer = torch.optim.AdamW(params.values(), lr=1e-4)
        self.special = torch.tensor(SPECIALS)

    def loss(self, batch):
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        gen_out = self.generator(input_ids=ids, attention_mask=mask, labels=labels)
        masked = labels != -100
        with torch.no_grad():
            logits = gen_out.logits[masked].float()
            logits[:, self.special] = float("-inf")
            sampled = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
            disc_ids = ids.clone()
            disc_ids[masked] = sampled
            original = torch.where(masked, labels, ids)
            rtd_labels = (disc_ids != original).float()
        rtd_logits = self.discriminator(input_ids=disc_ids, attention_mask=mask).logits.squeeze(-1)
        rtd = torch.nn.functional.binary_cross_entropy_with_logits(rtd_logits[mask.bool()], rtd_labels[mask.bool()])
        return gen_out.loss + 50.0 * rtd

    def __call__(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.optimizer.step()


STEPS = {"ours": OurStep, "transformers": TransformersStep}


def gemm_peak(seconds: float = 3.0, size: int = 2048) -> float:
    """Best fp32 matrix-multiply rate (FLOP/s) over repeated 2048^3 products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is empty on most Linux systems)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _inplace_gemm_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """2 * M * K * N (times the batch) for addmm_ and baddbmm_, which FlopCounterMode's registry leaves out."""
    return 2 * math.prod(a_shape) * b_shape[-1]


# In-place GEMMs do the same work as their out-of-place forms; without these entries they would count as zero.
INPLACE_GEMMS = {torch.ops.aten.addmm_: _inplace_gemm_flops, torch.ops.aten.baddbmm_: _inplace_gemm_flops}


def flops_per_token(step, batch, tokens: int) -> float:
    with FlopCounterMode(display=False, custom_mapping=INPLACE_GEMMS) as counter:
        step.loss(batch).backward()
    return counter.get_total_flops() / tokens


def _timing_child(args, queue):
    """One repeat, in a fresh interpreter: the GEMM peak, then warm-up and alternating timed steps of both."""
    torch.manual_seed(0)
    batch = make_batch(args)
    steps = {name: cls(args) for name, cls in STEPS.items()}
    peak = gemm_peak()
    for step in steps.values():
        for _ in range(args.warmup):
            step(batch)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - start)
    queue.put((peak, {name: statistics.median(seconds) for name, seconds in times.items()}))


def _peak_rss_child(args, queue):
    torch.manual_seed(0)
    step, batch = STEPS[args.step](args), make_batch(args)
    for _ in range(3):
        step(batch)
    # VmHWM belongs to this address space; ru_maxrss would start from the parent's peak (kept across fork+exec).
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    queue.put(peak_kib * 1024)


def in_child(target, args, env: dict[str, str] | None = None):
    """The one result of target(args, queue) run in a fresh interpreter (spawn), `env` set while it starts (glibc
    reads MALLOC_* when a process starts)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    previous = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        child = ctx.Process(target=target, args=(args, queue))
        child.start()
    finally:
        for key, value in previous.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    value = queue.get()
    child.join()
    return value


def peak_rss(name: str, args, mmap_threshold: int | None = None) -> int:
    """Peak RSS of one step's process (a fresh interpreter: its RSS is this step's alone)."""
    env = {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else None
    return in_child(_peak_rss_child, argparse.Namespace(**vars(args), step=name), env)


def time_in_processes(args, tokens: int) -> list[dict]:
    """Per fresh process: the GEMM peak, tokens/s of each step and their ratio."""
    runs = []
    for repeat in range(args.repeats):
        peak, seconds = in_child(_timing_child, args)
        run = {"gemm_peak_flops": peak, **{name: tokens / seconds[name] for name in STEPS}}
        run["speedup"] = run["ours"] / run["transformers"]
        runs.append(run)
        print(f"  process {repeat + 1}/{args.repeats}: " + ", ".join(f"{name} {run[name]:.0f}" for name in STEPS)
              + f" tokens/s, ratio {run['speedup']:.2f}x", flush=True)
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--sharing", choices=("es", "nes", "gdes"), default="es",
                        help="our embedding sharing (the baseline shares one table, as es)")
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="also measure peak RSS with MALLOC_MMAP_THRESHOLD_ set to this (bytes)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes to time in (the ratio is their median)")
    parser.add_argument("--rounds", type=int, default=9, help="timed steps of each per process, alternating")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")

    torch.manual_seed(0)
    batch, tokens = make_batch(args), args.batch * args.seq
    flops = {name: flops_per_token(cls(args), batch, tokens) for name, cls in STEPS.items()}
    print(f"seq {args.seq} x batch {args.batch}, {args.repeats} processes:", flush=True)
    runs = time_in_processes(args, tokens)
    peak = statistics.median(run["gemm_peak_flops"] for run in runs)
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "shape": vars(args), "gemm_peak_flops": peak, "processes": runs}
    for name in STEPS:
        rate = statistics.median(run[name] for run in runs)
        result[name] = {"tokens_per_second": rate, "flops_per_token": flops[name],
                        "achieved_flops": rate * flops[name], "utilisation": rate * flops[name] / peak}
        if not args.no_memory:
            result[name]["peak_rss_bytes"] = peak_rss(name, args)
            if args.mmap_threshold:
                result[name]["peak_rss_bytes_mmap_threshold"] = peak_rss(name, args, args.mmap_threshold)
    result["speedup"] = statistics.median(run["speedup"] for run in runs)
    for key in ("peak_rss_bytes", "peak_rss_bytes_mmap_threshold"):
        if key in result["ours"]:
            result[key.replace("peak_rss_bytes", "memory_ratio")] = result["ours"][key] / result["transformers"][key]
    print(f"medians, GEMM peak {peak / 1e9:.0f} GFLOP/s:")
    for name in STEPS:
        r = result[name]
        memory = f", peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in r else ""
        if "peak_rss_bytes_mmap_threshold" in r:
            memory += f" ({r['peak_rss_bytes_mmap_threshold'] / 2**30:.2f} GiB with the mmap threshold)"
        print(f"  {name:>12}: {r['tokens_per_second']:8.0f} tokens/s, {r['flops_per_token'] / 1e6:6.1f} MFLOP/token, "
              f"{r['achieved_flops'] / 1e9:6.1f} GFLOP/s ({100 * r['utilisation']:.0f}% of peak){memory}")
    ratios = [f"{result[k]:.2f}x peak RSS{label}" for k, label in (("memory_ratio", ""), (
        "memory_ratio_mmap_threshold", " with the mmap threshold")) if k in result]
    print(f"  ours / transformers: {result['speedup']:.2f}x tokens/s (median of the processes' ratios)"
          + "".join(f", {r}" for r in ratios))
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
