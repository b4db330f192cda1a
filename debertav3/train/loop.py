"""The pretraining loop: accelerate setup, optimisation, logging, evaluation, checkpoints and exact resume."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .build import build_model
from ..data import Masker, Tokenizer, build_datasets
from ..errors import CollapseWarning, UserError
from ..model import implementations
from ..objective.rtd import RTDModel, average_pairwise_cosine
from .config import Config
from .allocator import keep_freed_memory
from .batches import BlockSource, make_causal_micro_batch, make_micro_batch, micro_batch_seed
from .checkpoint import save_checkpoint
from .config_io import to_yaml
from .lock import claim_output_dir
from .optim import build_optimizers, linear_schedule, resolve_lr, split_parameters
from .evaluation import HeldOutEvaluation, reduce_mean
from .probe import Probe
from .report import CollapseGuard, format_eval_line, format_summary, progress_postfix
from .resume import RunIdentity, refuse_foreign_checkpoints, restore
from .signals import StopRequests
from .runtime import TRACKER_PROJECT, exact_compiled_steps, make_accelerator
from .startup import RUN_CONFIG, format_header
from .step import NonFinite, Part, StepRunner
from ..io_utils import atomic_write_text

def embedding_statistics(model: RTDModel, vocab_size: int) -> dict[str, float]:
    """Average pairwise cosine similarity of E_G, E_D (and E_Delta): the paper's tug-of-war diagnostic (fig. 2)."""
    tables = {"embeddings/cosine_E_G": model.generator_embedding}
    if model.discriminator is not None:
        tables["embeddings/cosine_E_D"] = model.discriminator_embedding()
    if model.embedding_delta is not None:
        tables["embeddings/cosine_E_Delta"] = model.embedding_delta
    return {name: average_pairwise_cosine(table.detach()[:vocab_size]) for name, table in tables.items()}


class Trainer:
    """One pretraining run in `cfg.train.output_dir`; use it through `train()`, which holds the directory."""

    def __init__(self, cfg: Config, accelerator: Accelerator, lr_rule: str = "optim.lr"):
        self.cfg, self.lr_rule = cfg, lr_rule  # lr_rule: how cfg.optim.lr was chosen (optim.resolve_lr)
        self.out = Path(cfg.train.output_dir)
        self.accelerator = accelerator
        set_seed(cfg.train.seed)
        if cfg.train.keep_freed_memory and self.accelerator.device.type == "cpu":
            keep_freed_memory()
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        self.tokenizer.check_fits(cfg.model.vocab_size)
        model = build_model(cfg, self.tokenizer.special_ids, self.accelerator.device.type)
        with self.accelerator.main_process_first():  # one process tokenizes; the others read its cache
            self.train_set, self.valid_set = build_datasets(cfg.data, self.tokenizer, cfg.train.seed)
        self.identity = RunIdentity.of(cfg, self.tokenizer, self.accelerator.num_processes)
        probe = Probe(cfg.probe, self.tokenizer, cfg.train.seed) if cfg.probe.train_file else None
        self.evaluate = HeldOutEvaluation(cfg, self.accelerator, self.valid_set, self.micro_batch, probe)
        self.masker = Masker(self.tokenizer, cfg.data.mask_prob, cfg.mask_mode, cfg.data.whole_word_mask)
        self.special_ids = torch.tensor(sorted(set(self.tokenizer.special_ids)))  # never next-token targets
        self.source = BlockSource(self.train_set, cfg.train.seed, cfg.data.streaming)
        schedule = cfg.rtd.schedule if cfg.objective == "rtd" else "joint"
        optimizers = build_optimizers(model, cfg.optim, schedule)
        self.model, *prepared = self.accelerator.prepare(model, *optimizers.values())
        if cfg.train.compile:
            self.model = self.compiled(self.model)
        params = {"joint": [p for p in model.parameters() if p.requires_grad], **split_parameters(model)}
        parts = {name: Part(optimizer, linear_schedule(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps),
                            params[name]) for name, optimizer in zip(optimizers, prepared)}
        for part in parts.values():  # not prepared: accelerate would step a prepared scheduler once per process
            self.accelerator.register_for_checkpointing(part.scheduler)
        self.steps = StepRunner(self.accelerator, self.model, parts, cfg.optim.max_grad_norm, cfg.train.nonfinite,
                                cfg.rtd.generator_warmup_steps if cfg.objective == "rtd" else 0)
        self.step, self.tokens_seen, self.skipped_steps = 0, 0, 0
        self.latest_metrics: dict[str, torch.Tensor] = {}
        self.last_checkpoint: Path | None = None
        self.collapse_guard = CollapseGuard(cfg.train.collapse_check_step, cfg.train.collapse_auc)

    def compiled(self, model):
        """torch.compile of the prepared model: accelerate keeps (and checkpoints) the module itself, under its own
        parameter names (`exact_compiled_steps` makes the compiled steps repeat exactly)."""
        resolved = self.cfg.model.for_device(self.accelerator.device.type)
        for kind, key in implementations.CONFIG_KEYS.items():
            name = getattr(resolved, key)
            if name not in implementations.COMPILES[kind]:
                self.accelerator.print(f"train.compile: model.{key} {name!r} is not traced by torch.compile; the "
                                       "compiled step runs the eager reference in its place")
        return torch.compile(model)

    @property
    def raw_model(self) -> RTDModel:
        """The model without accelerate's wrappers and without torch.compile's: evaluation runs it eagerly."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def micro_batch(self, position: int, blocks: list, causal: bool = False):
        """Global micro-batch `position` (negative: held-out batch -1 - position) as this process's inputs:
        masked, or unmasked with next-token labels when `causal`."""
        acc, length = self.accelerator, self.cfg.data.max_seq_length
        if causal:
            batch = make_causal_micro_batch(blocks, self.special_ids, self.tokenizer.pad_id, length,
                                            acc.process_index, acc.num_processes)
        else:
            batch = make_micro_batch(blocks, self.masker, self.tokenizer.pad_id, length,
                                     micro_batch_seed(self.cfg.train.seed, position), acc.process_index,
                                     acc.num_processes)
        return batch.to(acc.device)

    def resume(self) -> None:
        restored = restore(self.accelerator, self.out, self.cfg.train.resume, self.cfg, self.identity)
        if restored is None:
            return
        checkpoint, state = restored
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.last_checkpoint = checkpoint
        self.accelerator.print(f"resumed from {checkpoint} at step {self.step}")

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step over `gradient_accumulation_steps` global micro-batches (train/step.py; metrics stay
        on device)."""
        cfg, acc = self.cfg.train, self.accelerator
        global_batch = cfg.batch_size * acc.num_processes
        self.model.train()
        positions = [self.step * cfg.gradient_accumulation_steps + micro
                     for micro in range(cfg.gradient_accumulation_steps)]
        causal = self.cfg.causal_step(self.step)
        batches = [self.micro_batch(p, self.source.blocks(p * global_batch, global_batch), causal)
                   for p in positions]
        try:
            totals, skipped = self.steps.run(self.step, batches)
        except NonFinite as exc:
            self.save()  # the state before this step's non-finite part: the last good one
            raise UserError(f"non-finite gradients at step {self.step + 1} (train.nonfinite=stop{self.part_named(exc)}"
                            f"); saved the last good state in {self.out / 'checkpoints'}; lower optim.lr or use "
                            "mixed_precision=no") from None
        self.tokens_seen += sum(batch.global_tokens for batch in batches)
        self.skipped_steps += skipped
        self.step += 1
        totals["skipped_steps"] = torch.tensor(float(self.skipped_steps))
        return totals

    def part_named(self, exc: NonFinite) -> str:
        """', in the generator's step' etc. under the decoupled schedule, where the other part may have stepped."""
        return "" if "joint" in self.steps.parts else f", in the {exc.args[0]}'s step"

    def reduce(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        return reduce_mean(self.accelerator, metrics)

    def save(self) -> None:
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped_steps,
                 "data_position": self.step * self.cfg.train.gradient_accumulation_steps, **self.identity.as_state()}
        self.last_checkpoint = save_checkpoint(self.accelerator, self.out, self.step, state, to_yaml(self.cfg),
                                               self.tokenizer, self.cfg.train.keep_last)

    def stop_requested(self, stops: StopRequests) -> bool:
        """Whether any process received SIGTERM / SIGINT (all processes must stop at the same step)."""
        flag = stops.received is not None
        if self.accelerator.num_processes > 1:
            flag = bool(self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum"))
        return flag

    def log_step(self, metrics: dict[str, torch.Tensor], window: list) -> dict[str, float]:
        """Reduce, log and show this step's metrics with tokens/s over the window since the last log."""
        elapsed = time.perf_counter() - window[0]
        logged = self.reduce(metrics)
        logged.update(self.learning_rates(), tokens_seen=float(self.tokens_seen),
                      tokens_per_second=(self.tokens_seen - window[1]) / max(elapsed, 1e-9))
        window[:] = [time.perf_counter(), self.tokens_seen]
        self.accelerator.log({f"train/{k}": v for k, v in logged.items()}, step=self.step)
        return logged

    def learning_rates(self) -> dict[str, float]:
        """{"lr": the base lr now} and, under the decoupled schedule, {"lr_discriminator": ...} (group 0's)."""
        parts = self.steps.parts
        if "joint" in parts:
            return {"lr": parts["joint"].scheduler.get_last_lr()[0]}
        return {"lr": parts["generator"].scheduler.get_last_lr()[0],
                "lr_discriminator": parts["discriminator"].scheduler.get_last_lr()[0]}

    def after_evaluation(self, evaluation: dict[str, float]) -> None:
        """Show the evaluation as one line, and warn once per run if the discriminator has not left the prior."""
        if not self.accelerator.is_main_process:  # every process holds the same pooled figures
            return
        tqdm.write(format_eval_line(self.step, evaluation))
        if "eval/rtd_auc" in evaluation:
            message = self.collapse_guard.check(self.step, evaluation["eval/rtd_auc"])
            if message:
                with tqdm.external_write_mode(file=sys.stderr):  # lift the progress bar off the warning's lines
                    warnings.warn(message, CollapseWarning)

    def summary(self, started: float, evaluated: tuple[int, dict] | None, stopped_by: str | None) -> str:
        step, evaluation = evaluated or (None, {})
        return format_summary(step=self.step, max_steps=self.cfg.train.max_steps, tokens_seen=self.tokens_seen,
                              wall_seconds=time.perf_counter() - started, objective=self.cfg.objective,
                              output_dir=self.out, checkpoint=self.last_checkpoint, evaluation=evaluation,
                              eval_step=step, collapse=self.collapse_guard.fired, stopped_by=stopped_by)

    def run(self, stop_after_steps: int | None = None) -> dict[str, float]:
        """Train to `train.max_steps` (or `stop_after_steps` more, or a stop signal), then print the summary."""
        cfg, acc = self.cfg.train, self.accelerator
        started, evaluated, stopped_by = time.perf_counter(), None, None
        self.resume()
        if acc.is_main_process:
            atomic_write_text(self.out / RUN_CONFIG, to_yaml(self.cfg))
        acc.print(format_header(self.cfg, self.raw_model, self.lr_rule, acc.mixed_precision, str(acc.device),
                                acc.num_processes, self.out / RUN_CONFIG))
        acc.init_trackers(TRACKER_PROJECT, config={"objective": self.cfg.objective,
                                                   "embedding_sharing": self.cfg.rtd.embedding_sharing,
                                                   "rtd_weight": self.cfg.rtd.rtd_weight, "lr": self.cfg.optim.lr},
                          init_kwargs={"wandb": {"name": self.out.name}})
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (acc.is_main_process and cfg.progress),
                   desc="pretraining", unit="step", dynamic_ncols=True)
        window, logged = [time.perf_counter(), self.tokens_seen], {}
        stop_at = cfg.max_steps if stop_after_steps is None else min(cfg.max_steps, self.step + stop_after_steps)
        with StopRequests() as stops:
            while self.step < stop_at:
                # Under mt each step trains one task: the logs carry each task's latest figures.
                self.latest_metrics.update(self.train_step())
                metrics = dict(self.latest_metrics)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    logged = self.log_step(metrics, window)
                    eval_auc = evaluated[1].get("eval/rtd_auc") if evaluated else None
                    bar.set_postfix(progress_postfix(logged, eval_auc))
                if self.step % cfg.embedding_stats_every == 0 and acc.is_main_process:
                    acc.log(embedding_statistics(self.raw_model, self.tokenizer.vocab_size), step=self.step)
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    evaluation = self.evaluate(self.raw_model)
                    acc.log(evaluation, step=self.step)
                    logged.update(evaluation)
                    evaluated = (self.step, evaluation)
                    self.after_evaluation(evaluation)
                    if "loss" in logged:  # the new AUC in the bar now, not one log step later
                        bar.set_postfix(progress_postfix(logged, evaluation.get("eval/rtd_auc")))
                stopping = self.stop_requested(stops)
                if self.step % cfg.save_every == 0 or self.step == stop_at or stopping:
                    self.save()
                if stopping:
                    stopped_by = stops.received or "a stop request"  # another process may have received it
                    acc.print(f"received {stopped_by}: saved step {self.step} in "
                              f"{self.out / 'checkpoints'}; continue with train.resume=auto")
                    break
        bar.close()
        acc.end_training()
        if stopped_by is None and self.step < cfg.max_steps:
            stopped_by = f"stop_after_steps={stop_after_steps}"
        acc.print(self.summary(started, evaluated, stopped_by))
        return logged


def train(cfg: Config, stop_after_steps: int | None = None) -> dict[str, float]:
    """Train as configured (resuming per `train.resume`); returns the last logged metrics.

    `stop_after_steps` ends this run early, right after a checkpoint, as a preempted job would (tests use it).
    The output directory is held for the whole run (lock.py), and a run that would overwrite another run's
    checkpoints is refused before anything is built or written (resume.py). The learning rate is chosen for the
    global batch first (`optim.resolve_lr`): the run trains, saves and reports the resolved config.
    """
    accelerator = make_accelerator(cfg)  # first: it sets up the processes of a launch, which the claim needs
    cfg, lr_rule = resolve_lr(cfg, accelerator.num_processes)
    with claim_output_dir(cfg.train.output_dir, accelerator), \
            exact_compiled_steps(cfg.train.compile, accelerator.device.type):
        refuse_foreign_checkpoints(cfg.train.output_dir, cfg.train.resume)
        return Trainer(cfg, accelerator, lr_rule).run(stop_after_steps)
