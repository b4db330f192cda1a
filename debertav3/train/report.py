"""What a run tells its user as text: the progress bar's fields, one line per evaluation, the collapse warning and
the end-of-run summary. Pure formatting of the metrics the loop computes (debertav3.objective.metrics), so tests check it.

Every figure is shown next to what a model that learned nothing scores: AUC against 0.5, RTD loss against the
prior's (ratio 1.0), MLM accuracy against always predicting the most frequent target and perplexity against the
best constant distribution's (the unigram baselines).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Mapping, Optional

DYNAMICS_DOC = "docs/training-dynamics.md"
# What the collapse warning suggests, in the order to try them (measured in docs/training-dynamics.md).
COLLAPSE_REMEDIES = (
    "a lower optim.lr or a longer optim.warmup_steps (an AUC of 0.50 with RTD loss / prior 1.00 is a constant "
    "output, what too high a learning rate left)",
    "for a model narrower than 768, model.initializer_range=0.02*sqrt(768/hidden_size) (the paper's 0.02 leaves "
    "a narrow network near its start for hundreds of steps)",
    "more steps, if the generator's MLM accuracy is well above its unigram baseline (a good generator makes "
    "replacements hard to spot)",
)



def _number(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def eval_figures(evaluation: Mapping[str, float]) -> str:
    """'RTD AUC 0.912, RTD loss / prior 0.64, MLM accuracy 0.213 (unigram 0.061)'; the RTD part only for rtd,
    'perplexity 81.2 (unigram 402.5)' for arlm and mt (no MLM part for arlm), and ', probe accuracy 0.781
    (majority 0.509)' when a probe is configured."""
    parts = []
    if "eval/rtd_auc" in evaluation:
        parts += [f"RTD AUC {_number(evaluation['eval/rtd_auc'])}",
                  f"RTD loss / prior {_number(evaluation['eval/rtd_loss_vs_prior'], 2)}"]
    if "eval/perplexity" in evaluation:
        parts.append(f"perplexity {_number(evaluation['eval/perplexity'], 1)} "
                     f"(unigram {_number(evaluation.get('eval/perplexity_unigram'), 1)})")
    if "eval/mlm_accuracy" in evaluation or "eval/perplexity" not in evaluation:
        parts.append(f"MLM accuracy {_number(evaluation.get('eval/mlm_accuracy'))} "
                     f"(unigram {_number(evaluation.get('eval/mlm_accuracy_unigram'))})")
    if "eval/probe_accuracy" in evaluation:
        parts.append(f"probe accuracy {_number(evaluation['eval/probe_accuracy'])} "
                     f"(majority {_number(evaluation['eval/probe_majority'])})")
    return ", ".join(parts)


def format_eval_line(step: int, evaluation: Mapping[str, float]) -> str:
    """The line printed after every evaluation, so progress shows without TensorBoard."""
    return f"eval step {step}: {eval_figures(evaluation)}"


def progress_postfix(logged: Mapping[str, float], eval_auc: Optional[float]) -> dict[str, str]:
    """The progress bar's fields: loss, train AUC, RTD loss / prior, MLM (or next-token) accuracy, tokens/s,
    latest eval AUC."""
    fields = {"loss": f"{logged['loss']:.3f}"}
    if "rtd_auc" in logged:
        fields.update(auc=_number(logged["rtd_auc"], 2), rtd_prior=_number(logged["rtd_loss_vs_prior"], 2))
    if "mlm_accuracy" in logged:
        fields["mlm_acc"] = f"{logged['mlm_accuracy']:.2f}"
    if "arlm_accuracy" in logged:
        fields["next_acc"] = f"{logged['arlm_accuracy']:.2f}"
    fields["tok_s"] = f"{logged['tokens_per_second']:.0f}"
    if eval_auc is not None:
        fields["eval_auc"] = _number(eval_auc, 2)
    return fields


class CollapseGuard:
    """Checks each evaluation's RTD AUC from step `check_step` on (0: never) and returns a warning the first time
    it is below `threshold`; `fired` keeps (step, AUC) of that time for the summary. A NaN AUC (no replaced token
    in the evaluation) never fires."""

    def __init__(self, check_step: int, threshold: float):
        self.check_step, self.threshold = check_step, threshold
        self.fired: Optional[tuple[int, float]] = None

    def check(self, step: int, auc: float) -> Optional[str]:
        if self.fired or not self.check_step or step < self.check_step or not auc < self.threshold:
            return None
        self.fired = (step, auc)
        remedies = "; ".join(COLLAPSE_REMEDIES)
        return (f"step {step}: eval RTD AUC {auc:.3f} < train.collapse_auc={self.threshold}: the discriminator "
                "has not learned to detect replacements; it does no better than predicting the prior (the "
                "replaced fraction) for every token, and its accuracy only mirrors that fraction. Try, one at a "
                f"time: {remedies}; see {DYNAMICS_DOC}. (train.collapse_check_step=0 turns this check off.)")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_summary(*, step: int, max_steps: int, tokens_seen: int, wall_seconds: float, objective: str,
                   output_dir: Path, checkpoint: Optional[Path], evaluation: Mapping[str, float],
                   eval_step: Optional[int], collapse: Optional[tuple[int, float]] = None,
                   stopped_by: Optional[str] = None) -> str:
    """The summary the main process prints when `Trainer.run` ends: how far it got, the last evaluation against
    its baselines, whether the collapse guard fired, the last checkpoint and the command that exports it."""
    how = f"stopped ({stopped_by})" if stopped_by else "finished"
    lines = [f"pretraining {how} at step {step} of {max_steps}: {tokens_seen:,} tokens seen, "
             f"wall time {_duration(wall_seconds)} (this run)"]
    if eval_step is None:
        lines.append("  last eval: none yet (see train.eval_every)")
    else:
        lines.append(f"  last eval (step {eval_step}): {eval_figures(evaluation)}")
    if collapse:
        lines.append(f"  collapse guard: fired at step {collapse[0]} (eval RTD AUC {collapse[1]:.3f}); see the "
                     "warning above")
    lines.append(f"  last checkpoint: {checkpoint if checkpoint else 'none'}")
    if stopped_by:
        lines.append("  continue: run the same command again (train.resume=auto)")
    if checkpoint:
        part = " --part generator" if objective != "rtd" else ""  # only rtd has a discriminator to export
        lines.append(f"  next: python tools/export.py {shlex.quote(str(output_dir))} "
                     f"{shlex.quote(f'{output_dir}-hf')}{part}")
    return "\n".join(lines)
