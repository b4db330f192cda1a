"""Part (d) of the GPU check: recipes/rtd_small.py trained in bf16 on the bundled corpus through the trainer, once
straight through and once stopped after its half-way checkpoint and resumed, with the two compared.

A GPU run need not be bit-deterministic (eager CUDA kernels may add in a different order on each run), so besides
the final weights the losses logged before the stop are compared too: their difference is the run-to-run noise
of the device, the floor that the difference after the resume is read against. On the CPU both are exactly 0.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "rtd_small.py"


def load_recipe(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RECIPE


def weight_differences(a: dict, b: dict) -> dict:
    """How far two state dicts are apart: tensors equal bit for bit, and the largest absolute difference."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    equal = sum(torch.equal(a[k], b[k]) for k in a)
    largest = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    return {"tensors": len(a), "equal": equal, "max_abs_diff": largest}


def loss_differences(a: dict[int, float], b: dict[int, float], half: int) -> dict:
    """The largest difference between two runs' logged losses, up to the stop (noise) and after the resume."""
    def largest(steps):
        return max((abs(a[s] - b[s]) for s in steps), default=None)

    common = sorted(set(a) & set(b))
    return {"logged_steps": len(common), "before_stop": largest(s for s in common if s <= half),
            "after_resume": largest(s for s in common if s > half)}


def last(curve: dict[int, float]):
    step = max(curve)
    return step, curve[step]


def train_and_resume(run) -> dict:
    """Part (d): the straight run and the stopped-and-resumed one, their eval figures and their differences."""
    from safetensors.torch import load_file

    from debertav3.ablation.curves import read_scalars
    from debertav3.train import load_config
    from debertav3.train.checkpoint import complete_checkpoints
    from debertav3.train.loop import train

    size = run.sizes["training"]
    steps, half = size["steps"], size["steps"] // 2
    overrides = [f"train.max_steps={steps}", f"train.save_every={half}", f"train.eval_every={half}",
                 f"train.batch_size={size['batch']}", f"data.max_seq_length={size['seq']}",
                 "train.mixed_precision=bf16", "train.progress=false", *size["overrides"]]
    recipe = load_recipe(RECIPE)
    results = {"recipe": RECIPE.name, "overrides": overrides, "wall_s": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        def config(name):
            return load_config(recipe, None, [*overrides, f"train.output_dir={Path(scratch, name)}"])

        # (what is timed, its output directory, where it stops): the second run stops after its half-way
        # checkpoint, the third resumes from it in the same directory.
        for name, directory, stop in (("straight", "straight", None), ("stopped", "resumed", half),
                                      ("resumed", "resumed", None)):
            started = time.perf_counter()
            train(config(directory), stop_after_steps=stop)
            results["wall_s"][name] = time.perf_counter() - started
        weights, logged = {}, {}
        for name in ("straight", "resumed"):
            out = Path(scratch, name)
            weights[name] = load_file(complete_checkpoints(out)[-1] / "model.safetensors")
            logged[name] = read_scalars(out / "tensorboard")
    straight = logged["straight"]
    eval_step, auc = last(straight["eval/rtd_auc"])
    results.update({
        "eval_step": eval_step, "eval_rtd_auc": auc,
        "eval_rtd_loss_vs_prior": last(straight["eval/rtd_loss_vs_prior"])[1],
        "eval_rtd_auc_resumed": last(logged["resumed"]["eval/rtd_auc"])[1],
        "train_loss_last": last(straight["train/loss"])[1],
        "tokens_per_s_median": statistics.median(straight["train/tokens_per_second"].values()),
        "weights": weight_differences(weights["straight"], weights["resumed"]),
        "losses": loss_differences(straight["train/loss"], logged["resumed"]["train/loss"], half)})
    results["weights_equal"] = results["weights"]["equal"] == results["weights"]["tensors"]
    return results
