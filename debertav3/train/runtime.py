"""The run's accelerate setup: precision, trackers, DDP options, and what a compiled run needs to repeat exactly."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from ..errors import UserError
from .config import Config

TRACKER_PROJECT = "debertav3"  # W&B's project, MLflow's experiment, TensorBoard's directory in output_dir/tensorboard


def resolve_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that supports it (fp32 accumulation in attention, see model/attention.py), else fp32."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator, with the trackers of `train.log_with` (TensorBoard's logs in output_dir/tensorboard).

    A tracker that is not installed is refused here, before anything is built: accelerate would leave it out
    without a word, and the run would log nothing where its user looks."""
    installed = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in cfg.train.log_with if name not in installed]
    if missing:
        raise UserError(f"train.log_with names {missing[0]}, which is not installed; pip install {missing[0]}, or "
                        f"leave it out of train.log_with")
    out = Path(cfg.train.output_dir)
    # Each stage of the decoupled schedule leaves the other network's parameters without a gradient.
    decoupled = cfg.objective == "rtd" and (cfg.rtd.schedule == "decoupled" or cfg.rtd.generator_warmup_steps > 0)
    return Accelerator(mixed_precision=resolve_precision(cfg.train.mixed_precision),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=decoupled)],
                       log_with=list(cfg.train.log_with) or None,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))



@contextlib.contextmanager
def exact_compiled_steps(compiling: bool, device_type: str):
    """While compiling, what an exact resume needs: inductor draws dropout masks from torch's generator
    (`fallback_random`), as eager does, and on the CPU uses deterministic kernels (its scatter-adds otherwise
    accumulate in thread order, and two compiled runs differ in the last bits). Restored on exit."""
    if not compiling:
        yield
        return
    from torch._inductor import config as inductor  # imported only by a run that compiles

    saved = (inductor.fallback_random, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    inductor.fallback_random = True
    if device_type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        inductor.fallback_random = saved[0]
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
