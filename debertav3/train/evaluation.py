"""Held-out evaluation of a pretraining run, and the reductions across processes it and the loop's logging share.

Every evaluation sees the same blocks with the same masks (micro-batch -1 - i for held-out batch i), so its
figures move only with the model. Each objective's task: the masked one for rtd and mlm, the causal one for arlm,
both for mt. Per-batch metrics are averaged over batches; pooled over all batches and processes instead: the
discriminator's `rtd_auc` and `rtd_loss_vs_prior`, the unigram baselines (the best constant predictor's scores on
the pooled targets: `mlm_accuracy_unigram` / `mlm_loss_unigram`, or `arlm_accuracy_unigram` /
`perplexity_unigram`) and `perplexity`, exp of the next-token cross-entropy over every held-out target token.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..constants import IGNORE_INDEX, OBJECTIVE_TASKS
from ..objective.metrics import prior_relative_loss, roc_auc, target_counts, unigram_baselines
from ..objective.rtd import RTDModel
from .config import Config
from .probe import kept_encoder


def reduce_mean(accelerator, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over processes as floats (every process calls this at the same steps): one sync for all."""
    if not metrics:
        return {}
    values = torch.stack([torch.as_tensor(v, device=accelerator.device) for v in metrics.values()])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")
    return dict(zip(metrics, values.tolist()))


def gather_rows(accelerator, values: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor of every process concatenated (each padded with -1 to the longest): this process's alone when
    there is only one."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.gather(accelerator.pad_across_processes(values, dim=0, pad_index=-1))


class HeldOutEvaluation:
    """`evaluation(model)` -> {"eval/...": value} on the run's held-out blocks (module docstring); with a probe,
    `probe_accuracy` and `probe_majority` from train/probe.py too. `micro_batch(position, blocks, causal)` builds
    this process's inputs as the trainer does."""

    def __init__(self, cfg: Config, accelerator, valid_set, micro_batch: Callable, probe=None):
        self.cfg, self.accelerator, self.valid_set = cfg, accelerator, valid_set
        self.micro_batch, self.probe = micro_batch, probe

    @torch.no_grad()
    def __call__(self, model: RTDModel) -> dict[str, float]:
        model.eval()
        result = {}
        for causal in OBJECTIVE_TASKS[self.cfg.objective]:
            result.update(self.task(model, causal))
        if result and self.probe is not None:  # every process fits the same probe on the same weights
            probed = self.probe.evaluate(kept_encoder(model), self.accelerator.device)
            result.update({f"eval/{k}": v for k, v in probed.items()})
        return result

    def task(self, model: RTDModel, causal: bool) -> dict[str, float]:
        """One task's held-out metrics (module docstring)."""
        cfg, acc = self.cfg.train, self.accelerator
        global_batch = cfg.batch_size * acc.num_processes
        totals, count, scores, targets = {}, 0, [], []
        counts = torch.zeros(self.cfg.model.vocab_size, dtype=torch.long, device=acc.device)
        for i, start in enumerate(range(0, len(self.valid_set) - global_batch + 1, global_batch)):
            if i == cfg.eval_batches:
                break
            blocks = [self.valid_set[j] for j in range(start, start + global_batch)]
            batch = self.micro_batch(-1 - i, blocks, causal)
            out = model(**batch.inputs)
            labels = batch.inputs["labels"]
            metrics = out.metric_tensors()
            if causal:
                # Summed cross-entropy and targets of this process: their ratio, pooled, is the held-out token CE.
                metrics.update(arlm_nll=out.arlm_loss * batch.inputs["denominators"][0],
                               arlm_targets=(labels != IGNORE_INDEX).sum().float())
                if self.cfg.objective == "mt":
                    metrics.pop("loss")  # the masked task's loss is the run's eval/loss
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value
            counts += target_counts(labels[labels != IGNORE_INDEX], counts.numel())
            if out.rtd_logits is not None:
                real = batch.inputs["attention_mask"].bool()
                scores.append(out.rtd_logits[real])
                targets.append(out.rtd_labels[real].float())
            count += 1
        if not count:
            return {}
        result = {f"eval/{k}": v / count for k, v in reduce_mean(acc, totals).items()}
        if acc.num_processes > 1:
            counts = acc.reduce(counts, "sum")
        accuracy, entropy = unigram_baselines(counts)
        if causal:
            cross_entropy = result.pop("eval/arlm_nll") / result.pop("eval/arlm_targets")
            result.update({"eval/perplexity": math.exp(cross_entropy), "eval/arlm_accuracy_unigram": accuracy.item(),
                           "eval/perplexity_unigram": math.exp(entropy.item())})
            return result
        pooled = dict(mlm_accuracy_unigram=accuracy, mlm_loss_unigram=entropy)
        if scores:
            scores, targets = gather_rows(acc, torch.cat(scores)), gather_rows(acc, torch.cat(targets))
            # Processes hold different numbers of tokens: gather_rows pads with target -1, dropped here.
            real = targets >= 0
            scores, targets = scores[real], targets[real]
            pooled.update(rtd_auc=roc_auc(scores, targets), rtd_loss_vs_prior=prior_relative_loss(scores, targets))
        result.update({f"eval/{k}": v for k, v in zip(pooled, torch.stack(list(pooled.values())).tolist())})
        return result
