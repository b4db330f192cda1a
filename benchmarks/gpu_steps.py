"""Parts (b) and (c) of the GPU check: one RTD training step, ours against the transformers-assembled one
(benchmarks/common.py's `OurStep` and `TransformersStep`), timed under bf16 autocast, compiled and not, and ours
profiled for the attention core's share of the device time; and the bf16 GEMM peak utilisation is taken against.

Steps are built under `torch.device(...)`, so each module resolves its `auto` implementations for that device
(sdpa attention on CUDA) and the transformers step's tensors live there too. Only the forward pass runs under
autocast, as accelerate runs it: the parameters, their gradients and AdamW stay fp32. Each step is timed with CUDA
events around every step after a warm-up (in which torch.compile compiles); its FLOPs are counted once with
FlopCounterMode on the uncompiled step (common.flops_per_token; each step its own: the transformers step computes
the vocabulary logits at every position, ours at the masked ones), and utilisation (MFU) = tokens/s x FLOPs/token
/ the median rate of the `peak` part.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import statistics
import time
from functools import partial

import torch
from common import OurStep, TransformersStep, flops_per_token, make_batch

LABEL = "attention_core"  # the profiler label wrapped around every attention core (`DisentangledSelfAttention.core`)
BACKWARD = "autograd::engine::evaluate_function: "  # the profiler's name for a backward node's run
# (label, kind, our implementation choices): the uncompiled variants; the compiled part runs the first and last.
VARIANTS = (("ours", "ours", {}), ("ours_eager_attention", "ours", {"attention_impl": "eager"}),
            ("transformers", "transformers", None))
COMPILED = (("ours_compiled", "ours", {}), ("transformers_compiled", "transformers", None))


def timed(fn, n: int, device: torch.device) -> list[float]:
    """Seconds of each of `n` calls of `fn`: on a GPU the device's time between CUDA events recorded after each
    call (one synchronize at the end, none added between calls), elsewhere the host clock."""
    if device.type != "cuda":
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for event in events[1:]:
        fn()
        event.record()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(events)]


def gemm_peak(run) -> dict:
    """The bf16 matrix-product rate this device reaches: an n^3 product on random data (never zeros, which run
    faster), 3 warm-ups, then the median and best of 10."""
    n = run.sizes["gemm"]
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(run.device, torch.bfloat16) for _ in range(2))
    timed(lambda: torch.mm(a, b), 3, run.device)
    times = timed(lambda: torch.mm(a, b), 10, run.device)
    flops = 2 * n ** 3
    return {"size": n, "dtype": "bfloat16", "median_tflops": flops / statistics.median(times) / 1e12,
            "best_tflops": flops / min(times) / 1e12}


def build(kind: str, shape: dict, impl: dict | None, compile: bool, device: torch.device):
    """The step, built on `device`, with its loss (the forward pass) under bf16 autocast."""
    with torch.device(device):
        step = OurStep(shape, impl, compile) if kind == "ours" else TransformersStep(shape, compile)
    loss = step.loss

    def autocast_loss(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return loss(batch)

    step.loss = autocast_loss
    return step


def implementations_used(step) -> list[str]:
    """The attention cores our step's modules resolved at build (to show that `auto` picked the device's)."""
    model = getattr(step, "model", None)
    return sorted({m.impl for m in model.modules() if hasattr(m, "core")}) if model is not None else []


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_variant(run, shape: dict, kind: str, impl: dict | None, compile: bool, flops: float | None) -> dict:
    """Build, warm up and time one step; `flops` per token if already counted (else counted here, uncompiled)."""
    release(run.device)
    started = time.perf_counter()
    step = build(kind, shape, impl, compile, run.device)
    batch = {key: value.to(run.device) for key, value in make_batch(shape).items()}
    timed(partial(step, batch), run.sizes["warmup"], run.device)
    warmup_s = time.perf_counter() - started
    times = timed(partial(step, batch), run.sizes["steps"], run.device)
    tokens = shape["batch"] * shape["seq"]
    result = {"steps": len(times), "median_step_s": statistics.median(times), "mean_step_s": statistics.mean(times),
              "tokens_per_s": tokens / statistics.median(times), "build_and_warmup_s": warmup_s,
              "attention": implementations_used(step)}
    if run.device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(run.device) / 2 ** 30
    result["flops_per_token"] = flops if flops is not None else flops_per_token(step, batch, tokens)
    achieved = result["tokens_per_s"] * result["flops_per_token"]
    result["tflops"] = achieved / 1e12
    peak = run.results.get("peak", {}).get("median_tflops")
    result["mfu"] = achieved / (peak * 1e12) if peak else None
    del step, batch
    release(run.device)
    return result


@contextlib.contextmanager
def fresh_compiles():
    """Each compiled step from scratch, for its shape alone: dynamo's caches emptied before and after, and no
    automatic dynamic shapes (a second sequence length would otherwise compile a dynamic-shape graph)."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            yield
    finally:
        torch._dynamo.reset()


def time_shapes(run, variants, compiled: bool) -> dict:
    """Every shape of the run x every variant; ratios of ours to the transformers step. A variant that fails
    (out of memory, say) is recorded as its error and the others go on."""
    results = {}
    for shape in run.step_shapes():
        key = f"seq{shape['seq']}x{shape['batch']}"
        uncompiled = run.results.get("timing", {}).get(key, {})
        row = results[key] = {"seq": shape["seq"], "batch": shape["batch"]}
        for label, kind, impl in variants:
            reason = run.skip_reason(run.sizes["needs_s"].get("compile", 0) if compiled else 0)
            if reason:
                row[label] = {"skipped": reason}
                continue
            flops = uncompiled.get("ours" if kind == "ours" else "transformers", {}).get("flops_per_token")
            try:
                with fresh_compiles() if compiled else contextlib.nullcontext():
                    row[label] = time_variant(run, shape, kind, impl, compiled, flops)
            except Exception as error:  # noqa: BLE001 - recorded; the other variants still run
                row[label] = {"error": run.describe(error)}
        ours, theirs = (row.get(label, {}).get("tokens_per_s") for label, _, _ in (variants[0], variants[-1]))
        row["ratio"] = ours / theirs if ours and theirs else None
        if compiled and ours and uncompiled.get("ours", {}).get("tokens_per_s"):
            row["compile_gain_ours"] = ours / uncompiled["ours"]["tokens_per_s"]
    return results


def time_steps(run) -> dict:
    """Part (b), uncompiled: ours (auto, and eager attention) and the transformers step at every shape."""
    return time_shapes(run, VARIANTS, compiled=False)


def time_compiled_steps(run) -> dict:
    """Part (b), compiled: ours and the transformers step under torch.compile (inductor), each shape from scratch."""
    if run.smoke:
        reason = "smoke mode: inductor compiles for minutes on a CPU; the GPU run measures it"
        print(f"compiled steps skipped: {reason}")
        return {"skipped": reason}
    return time_shapes(run, COMPILED, compiled=True)


def labelled(core):
    """`core` inside a profiler range named LABEL (wrapped from here: the package is not edited for profiling)."""
    def run_core(*args, **kwargs):
        with torch.profiler.record_function(LABEL):
            return core(*args, **kwargs)
    return run_core


def descendants(event):
    for child in event.cpu_children:
        yield child
        yield from descendants(child)


def attention_time(events, on_device: bool) -> dict:
    """Time in the attention cores, forward and backward, and in the whole step (microseconds).

    Forward: everything under the LABEL ranges. Backward: the backward nodes that the ops under those ranges
    created, found by the autograd sequence number (and thread) the profiler records on both. On a GPU the time is
    that of the kernels these ops launched; on the CPU their host time."""
    def launched(event):
        """The kernel time of what `event` itself launched; a user range's own span on the GPU timeline is
        attached to it as a "kernel" of the same name, and is left out (it would count its kernels twice)."""
        return sum(kernel.duration for kernel in event.kernels if kernel.name != event.name)

    def spent(event):
        return launched(event) + sum(map(launched, descendants(event))) if on_device else event.cpu_time_total

    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    cores = [e for e in host if e.name == LABEL]
    created = {(d.thread, d.sequence_nr) for e in cores for d in descendants(e) if d.sequence_nr >= 0}
    backward = [e for e in host if e.name.startswith(BACKWARD) and (e.fwd_thread, e.sequence_nr) in created]
    total = sum(map(launched, host)) if on_device else sum(e.cpu_time_total for e in host if e.cpu_parent is None)
    forward_us, backward_us = sum(map(spent, cores)), sum(map(spent, backward))
    return {"calls": len(cores), "forward_us": forward_us, "backward_us": backward_us, "step_us": total,
            "share": (forward_us + backward_us) / total if total else None}


def profile_attention(run) -> dict:
    """Part (c): one step of ours (uncompiled, auto implementations, bf16 autocast) under torch.profiler at each
    shape: the attention core's share of the device time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if run.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    results = {}
    for shape in run.step_shapes():
        release(run.device)
        step = build("ours", shape, {}, False, run.device)
        for module in step.model.modules():
            if hasattr(module, "core"):
                module.core = labelled(module.core)
        batch = {key: value.to(run.device) for key, value in make_batch(shape).items()}
        timed(partial(step, batch), 2, run.device)
        with torch.profiler.profile(activities=activities) as profiler:
            timed(partial(step, batch), 1, run.device)
        row = attention_time(profiler.events(), run.device.type == "cuda")
        row["attention"] = implementations_used(step)
        results[f"seq{shape['seq']}x{shape['batch']}"] = row
        del step, batch, profiler
    release(run.device)
    return {"measure": "device (kernel) time" if run.device.type == "cuda" else "host time",
            "core": "scores, position terms, softmax, dropout, context; the projections are outside it",
            "shapes": results}
