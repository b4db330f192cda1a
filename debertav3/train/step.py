"""One optimizer step of pretraining, in the schedule `rtd.schedule` chooses (objective/rtd.py has the stages):

    joint       every micro-batch: forward (stage joint), backward of L_MLM + lambda L_RTD
                -> clip the gradient of every parameter to optim.max_grad_norm -> one AdamW step
    decoupled   every micro-batch: forward (stage generator), backward of L_MLM; keep the sampled inputs
                -> clip the generator's gradient -> the generator's AdamW step
                every micro-batch: forward (stage discriminator) on those inputs, backward of lambda L_RTD
                -> clip the discriminator's gradient -> the discriminator's AdamW step

The decoupled order is the official trainer's (DeBERTa apps/tasks/rtd_task.py and training/trainer.py): the
discriminator's pass runs after the generator's update, so under gdes it reads the updated E_G. For the first
`rtd.generator_warmup_steps` steps only the generator's part runs; in the joint schedule that is the stage
generator under the one optimizer, which leaves the parameters without a gradient as they are. Objective mlm has
only the joint step.

A step whose clipped gradient norm is not finite is not applied (`train.nonfinite` skip), or raises `NonFinite`
before anything else runs (stop); the norm comes from all-reduced gradients, so every process decides alike.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch


class NonFinite(Exception):
    """A stage's gradient norm was not finite under train.nonfinite=stop; nothing of the stage was applied."""


@dataclass
class Part:
    """What one optimizer step updates: its AdamW and lr schedule, and the parameters whose gradient is clipped."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list


class StepRunner:
    """Runs the optimizer steps of a run over its micro-batches (module docstring). `parts` maps "joint", or
    "generator" and "discriminator", to the `Part` each stage steps."""

    def __init__(self, accelerator, model, parts: dict[str, Part], max_grad_norm: float, nonfinite: str,
                 generator_warmup_steps: int = 0):
        self.accelerator, self.model, self.parts = accelerator, model, parts
        self.max_grad_norm, self.nonfinite = max_grad_norm, nonfinite
        self.generator_warmup_steps = generator_warmup_steps

    def stages(self, step: int) -> list[tuple[str, Part]]:
        """(stage, part) in the order step `step` (0-based) runs them."""
        warming_up = step < self.generator_warmup_steps
        if "joint" in self.parts:
            return [("generator" if warming_up else "joint", self.parts["joint"])]
        generator = [("generator", self.parts["generator"])]
        return generator if warming_up else generator + [("discriminator", self.parts["discriminator"])]

    def run(self, step: int, batches: list) -> tuple[dict[str, torch.Tensor], bool]:
        """(the step's metrics, averaged over micro-batches and summed over stages for `loss`, with each part's
        gradient norm; whether a part was skipped for a non-finite gradient). All parts' lr schedules advance."""
        acc, count = self.accelerator, len(batches)
        totals: dict[str, torch.Tensor] = {}
        sampled: list = [None] * count
        skipped = False
        for stage, part in self.stages(step):
            for i, batch in enumerate(batches):
                extra = {"discriminator_input_ids": sampled[i]} if stage == "discriminator" else {}
                with contextlib.nullcontext() if i == count - 1 else acc.no_sync(self.model):
                    out = self.model(**batch.inputs, stage=stage, **extra)
                    acc.backward(out.loss / count)
                if stage == "generator":
                    sampled[i] = out.discriminator_input_ids
                for name, value in out.metric_tensors().items():
                    totals[name] = totals.get(name, 0.0) + value / count
            norm = acc.clip_grad_norm_(part.params, self.max_grad_norm)
            totals["grad_norm" if "joint" in self.parts else f"grad_norm_{stage}"] = norm.detach().float()
            if bool(torch.isfinite(norm)):  # a host sync per part: a non-finite update would ruin the parameters
                part.optimizer.step()
            elif self.nonfinite == "stop":
                self.zero_grad()
                raise NonFinite(stage)
            else:
                skipped = True
            part.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A part that sat out the step (the discriminator during the warm-up) still follows the run's schedule;
            # torch takes a scheduler stepped before its optimizer ever was for a mistake, and says so.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before", UserWarning)
            for part in self.parts.values():
                part.scheduler.step()
        return totals, skipped

    def zero_grad(self) -> None:
        for part in self.parts.values():
            part.optimizer.zero_grad(set_to_none=True)
