"""Replaced token detection (ELECTRA, DeBERTaV3): the whole objective in one file.

    generator (half depth, EMD + tied MLM head): logits at the masked positions -> L_MLM (cross-entropy)
    -> replacements drawn from softmax(logits / T), special tokens excluded (ELECTRA sec. 3.1); this vocabulary
       step is the `mlm_loss` implementation the generator's config selects (reference: objective/losses.py)
    -> discriminator labels every non-pad token original (0) or replaced (1) -> L_RTD (BCE, official code)
    L = L_MLM + rtd_weight * L_RTD                          (DeBERTaV3 paper, lambda = 50)

Token embeddings are shared in one of three ways (paper section 3), computed explicitly in `forward`:
    es    one table E for both; its gradient is dL_MLM/dE + lambda * dL_RTD/dE ("tug of war")
    nes   separate E_G and E_D; RTD never reaches E_G, MLM never reaches E_D
    gdes  E_D = sg(E_G) + E_Delta, E_Delta initialised to zeros: MLM updates E_G, RTD updates only E_Delta

`objective="mlm"` is the DeBERTa MLM baseline: one full-depth backbone with the EMD, no discriminator. `arlm` runs
that network causally and predicts the next token (objective/arlm.py, DeBERTa paper appendix A.4); `mt` trains it
on both (DeBERTa-MT), the task of each call chosen by `causal`.

Stages: `forward(..., stage="joint")` computes L above for one optimizer step (ELECTRA's schedule, the paper's
formula). The official trainer's decoupled schedule runs `stage="generator"` (L_MLM and the sampled replacements)
and steps the generator, then `stage="discriminator"` (rtd_weight * L_RTD on those replacements) and steps the
discriminator; in that stage the generator's table enters as a constant, as in the official code, where the
discriminator's forward hook reads the generator's table and the RTD gradient left on it is zeroed before the
generator's next step (so under es the shared table learns from L_MLM only).

Static shapes: the generator predicts at M positions per sequence, `mask_positions` [B, M] (ELECTRA's
`max_predictions_per_seq`): each row's masked positions in increasing order, then unmasked positions that pad the
row to M, whose targets are -100 and so carry no loss. With the positions and the loss denominators given, the
forward pass has no host sync and no data-dependent shape, and traces whole under torch.compile.
Shape legend: B batch, L length, M prediction slots per sequence, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_INDEX, OBJECTIVE_TASKS, OBJECTIVES, SHARING_MODES, STAGES
from ..errors import ConfigError
from ..model import MaskedLMModel, ReplacedTokenDetectionModel, implementations
from ..model.config import ModelConfig
from . import losses  # noqa: F401  (registers the reference vocabulary step)
from .arlm import next_token_loss
from .metrics import prior_relative_loss, roc_auc


def prediction_positions(labels_BL: torch.Tensor, slots: int | None = None) -> torch.Tensor:
    """[B, slots]: each row's masked positions (labels != -100) in increasing order, then its unmasked positions
    in increasing order, cut to `slots` per row.

    The padding slots point at distinct unmasked positions, so writing replacements back with a scatter never
    writes one position twice. `slots` must be at least the most masked positions of any row (the trainer takes
    the masker's cap, `Masker.max_predictions`); None counts them (one host sync, for calls outside a training
    step).
    """
    unmasked_BL = (labels_BL == IGNORE_INDEX).to(torch.uint8)
    if slots is None:
        slots = max(1, int((1 - unmasked_BL).sum(1).max()))
    # A stable sort of 0 (masked) before 1 (unmasked) keeps each group in position order.
    return torch.argsort(unmasked_BL, dim=1, stable=True)[:, :slots]


@dataclass
class RTDOutput:
    """Losses (with gradient) and detached metrics of one forward pass: RTD fields are None for objective mlm and
    in the generator stage, MLM fields in the discriminator stage. `loss` is what the stage's step minimises."""

    loss: torch.Tensor
    mlm_loss: Optional[torch.Tensor] = None  # None in the discriminator stage and for the causal task
    mlm_accuracy: Optional[torch.Tensor] = None
    arlm_loss: Optional[torch.Tensor] = None  # next-token cross-entropy (objectives arlm and mt, causal calls)
    arlm_accuracy: Optional[torch.Tensor] = None
    rtd_loss: Optional[torch.Tensor] = None
    rtd_accuracy: Optional[torch.Tensor] = None
    replaced_fraction: Optional[torch.Tensor] = None
    precision: Optional[torch.Tensor] = None  # of the "replaced" class
    recall: Optional[torch.Tensor] = None
    rtd_auc: Optional[torch.Tensor] = None  # ROC-AUC of the "replaced" scores (debertav3.objective.metrics.roc_auc)
    rtd_loss_vs_prior: Optional[torch.Tensor] = None  # BCE / H(replaced fraction); 1.0 = learned nothing
    discriminator_input_ids: Optional[torch.Tensor] = None  # [B, L]
    rtd_labels: Optional[torch.Tensor] = None  # [B, L] bool, True where replaced (never at padding)
    rtd_logits: Optional[torch.Tensor] = None  # [B, L] float32, detached

    def metric_tensors(self) -> dict[str, torch.Tensor]:
        """Detached scalar tensors, for accumulating without a host sync."""
        names = ("loss", "mlm_loss", "mlm_accuracy", "arlm_loss", "arlm_accuracy", "rtd_loss", "rtd_accuracy",
                 "replaced_fraction", "precision", "recall", "rtd_auc", "rtd_loss_vs_prior")
        return {n: getattr(self, n).detach().float() for n in names if getattr(self, n) is not None}


class RTDModel(nn.Module):
    """Generator + discriminator with switchable embedding sharing (or, for objectives mlm, arlm and mt, the
    generator's network alone at full depth).

    `forward(input_ids, attention_mask, labels)`: `input_ids` already masked, `labels` the original ids at masked
    positions and -100 elsewhere (transformers' convention); with `causal=True` (arlm, mt) `input_ids` unmasked
    and `labels` the next tokens (objective/arlm.py). `special_token_ids` are never sampled as replacements.
    `enhanced_mask_decoder=False`: the head reads the last layer (model/heads.py `MaskedLMModel`).
    """

    def __init__(self, generator_config: ModelConfig, discriminator_config: Optional[ModelConfig] = None,
                 embedding_sharing: str = "gdes", rtd_weight: float = 50.0, temperature: float = 1.0,
                 objective: str = "rtd", special_token_ids: Sequence[int] = (0, 1, 2, 3),
                 enhanced_mask_decoder: bool = True):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective {objective!r} is unknown; use one of {list(OBJECTIVES)}")
        if embedding_sharing not in SHARING_MODES:
            raise ConfigError(f"embedding_sharing {embedding_sharing!r} is unknown; use one of {list(SHARING_MODES)}")
        self.objective, self.embedding_sharing = objective, embedding_sharing
        self.rtd_weight, self.temperature = rtd_weight, temperature
        self.generator = MaskedLMModel(generator_config, enhanced_mask_decoder=enhanced_mask_decoder)
        # The vocabulary step (logits -> cross-entropy -> sampling), resolved once: objective/losses.py.
        self.vocabulary_loss = implementations.resolve("mlm_loss", implementations.resolve_name(
            "mlm_loss", generator_config.mlm_loss_impl, implementations.default_device_type()))
        self.discriminator = None
        self.embedding_delta = None
        if objective == "rtd":
            if discriminator_config is None:
                raise ConfigError("objective 'rtd' needs a discriminator_config")
            shared = embedding_sharing in ("es", "gdes")
            if shared and (generator_config.embedding_width, generator_config.vocab_size) != \
                    (discriminator_config.embedding_width, discriminator_config.vocab_size):
                raise ConfigError(f"embedding_sharing={embedding_sharing} needs the generator's and discriminator's "
                                  "word embeddings to have the same width and vocab_size (a narrower generator "
                                  "takes embedding_size = the discriminator's width); or use 'nes'")
            self.discriminator = ReplacedTokenDetectionModel(discriminator_config, own_word_embeddings=not shared)
            if embedding_sharing == "gdes":
                self.embedding_delta = nn.Parameter(torch.zeros_like(self.generator_embedding))
        self.register_buffer("special_token_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long),
                             persistent=False)

    @property
    def generator_embedding(self) -> nn.Parameter:
        """E_G, the generator's word embedding Parameter (under es, the one shared table)."""
        return self.generator.deberta.embeddings.word_embeddings.weight

    def discriminator_embedding(self, generator_table_constant: bool = False) -> torch.Tensor:
        """The effective E_D: E_G (es), the discriminator's own table (nes) or sg(E_G) + E_Delta (gdes).
        `generator_table_constant`: under es, E_G without its gradient (the decoupled discriminator stage)."""
        if self.embedding_sharing == "es":
            table = self.generator_embedding
            return table.detach() if generator_table_constant else table
        if self.embedding_sharing == "nes":
            return self.discriminator.deberta.embeddings.word_embeddings.weight
        # The stop-gradient is what keeps the RTD loss from pulling on E_G (the paper's "tug of war").
        return self.generator_embedding.detach() + self.embedding_delta

    @torch.no_grad()
    def set_discriminator_embedding(self, table: torch.Tensor) -> None:
        """Make the effective E_D equal `table` (a released discriminator's word embeddings), whatever the mode:
        nes copies it; gdes keeps E_G and sets E_Delta = table - E_G; es copies it into the one shared table."""
        if self.embedding_sharing == "gdes":
            self.embedding_delta.copy_(table - self.generator_embedding)
        elif self.embedding_sharing == "nes":
            self.discriminator.deberta.embeddings.word_embeddings.weight.copy_(table)
        else:
            self.generator_embedding.copy_(table)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                mask_positions: Optional[torch.Tensor] = None, uniforms: Optional[torch.Tensor] = None,
                denominators: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                stage: str = "joint", discriminator_input_ids: Optional[torch.Tensor] = None,
                causal: bool = False) -> RTDOutput:
        """`mask_positions` [B, M] the prediction slots (`prediction_positions`; default: computed from `labels`);
        `uniforms` [B, M] in (0, 1] drive the sampling (default: drawn from `generator`); `denominators` = float
        [2], (masked positions, non-pad tokens), what the summed losses are divided by (default: this batch's
        counts). The trainer passes all three from the global batch, so any number of processes gives the same
        step and the step compiles with static shapes.

        `stage` (module docstring): "joint", "generator", or "discriminator", which needs the generator stage's
        `discriminator_input_ids` for the same batch. `causal`: the auto-regressive task (objectives arlm and mt),
        L_ARLM over the labelled next tokens / denominators[0]."""
        if stage not in STAGES:
            raise ConfigError(f"stage {stage!r} is unknown; use one of {list(STAGES)}")
        real_BL = attention_mask.bool()
        if denominators is None:
            denominators = torch.stack([(labels != IGNORE_INDEX).sum(), real_BL.sum()]).float()
        if causal not in OBJECTIVE_TASKS[self.objective]:
            raise ValueError(f"objective {self.objective} {'has no' if causal else 'only has the'} causal task")
        if causal:
            arlm_loss, arlm_accuracy = next_token_loss(self.generator, self.generator_embedding, input_ids,
                                                       attention_mask, labels, denominators[0])
            return RTDOutput(loss=arlm_loss, arlm_loss=arlm_loss, arlm_accuracy=arlm_accuracy)
        generated = {}
        if stage != "discriminator":
            generated = self.generate(input_ids, attention_mask, labels, mask_positions, uniforms, denominators[0],
                                      generator)
            discriminator_input_ids = generated["discriminator_input_ids"]
            if self.objective != "rtd" or stage == "generator":
                return RTDOutput(loss=generated["mlm_loss"], **generated)
        elif discriminator_input_ids is None:
            raise ValueError("the discriminator stage needs the generator stage's discriminator_input_ids")
        original_BL = torch.where(labels != IGNORE_INDEX, labels, input_ids)
        rtd_labels = (discriminator_input_ids != original_BL) & real_BL
        table = self.discriminator_embedding(generator_table_constant=stage == "discriminator")
        rtd_logits = self.discriminator(discriminator_input_ids, attention_mask, table).float()
        # BCE summed over non-pad tokens ([CLS] and [SEP] included, as the official code averages).
        rtd_loss = F.binary_cross_entropy_with_logits(rtd_logits, rtd_labels.float(), weight=real_BL.float(),
                                                      reduction="sum") / denominators[1]
        loss = self.rtd_weight * rtd_loss + (generated["mlm_loss"] if generated else 0.0)
        return RTDOutput(loss=loss, rtd_loss=rtd_loss, rtd_labels=rtd_labels, rtd_logits=rtd_logits.detach(),
                         **{**generated, "discriminator_input_ids": discriminator_input_ids},
                         **detection_metrics(rtd_logits.detach(), rtd_labels, real_BL))

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 mask_positions: Optional[torch.Tensor], uniforms: Optional[torch.Tensor],
                 masked_count: torch.Tensor, generator: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
        """The generator's half of `forward`: L_MLM (summed over the masked positions / `masked_count`), its
        accuracy, and the input with the replacements sampled at the masked positions written in."""
        positions_BM = prediction_positions(labels) if mask_positions is None else mask_positions
        targets_BM = labels.gather(1, positions_BM)  # -100 at the slots that pad a row
        if uniforms is None:
            uniforms = 1.0 - torch.rand(positions_BM.shape, generator=generator, device=positions_BM.device)
        table = self.generator_embedding
        states_BMH = self.generator.head_states(input_ids, attention_mask, positions_BM, table)
        mlm_loss, mlm_accuracy, sampled_N = self.vocabulary_loss(
            states_BMH.flatten(0, 1), table, self.generator.lm_predictions["lm_head"].bias, targets_BM.flatten(),
            uniforms.flatten(), masked_count, self.temperature, self.special_token_ids)
        # The padding slots write back what is there; a sample equal to the original is labelled original.
        sampled_BM = torch.where(targets_BM != IGNORE_INDEX, sampled_N.view_as(positions_BM),
                                 input_ids.gather(1, positions_BM))
        return dict(mlm_loss=mlm_loss, mlm_accuracy=mlm_accuracy,
                    discriminator_input_ids=input_ids.scatter(1, positions_BM, sampled_BM))


def detection_metrics(logits: torch.Tensor, replaced: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy, replaced fraction, precision / recall of the "replaced" class (0 where undefined), and the two
    measures a constant answer cannot game: ROC-AUC (0.5) and BCE / H(replaced fraction) (1.0,
    debertav3.objective.metrics), all over the `valid` tokens. Fixed shapes, no host sync."""
    predicted = (logits > 0) & valid
    actual = replaced & valid
    true_positive = (predicted & actual).sum().float()
    count = valid.sum().clamp(min=1)
    return dict(rtd_accuracy=((predicted == actual) & valid).sum() / count,
                replaced_fraction=actual.sum() / count,
                precision=true_positive / predicted.sum().clamp(min=1),
                recall=true_positive / actual.sum().clamp(min=1),
                rtd_auc=roc_auc(logits, actual, valid),
                rtd_loss_vs_prior=prior_relative_loss(logits, actual, valid))


@torch.no_grad()
def average_pairwise_cosine(table: torch.Tensor) -> float:
    """Mean cos(e_i, e_j) over pairs i != j of non-zero rows (paper fig. 2's embedding-coherence measure).

    With unit rows u_i: sum_{i != j} u_i . u_j = |sum_i u_i|^2 - n, so this is O(V * H), not O(V^2 * H).
    """
    rows = table.float()
    rows = rows[rows.norm(dim=-1) > 0]
    n = rows.shape[0]
    if n < 2:
        return 0.0
    total = F.normalize(rows, dim=-1).sum(0)
    return ((total.dot(total) - n) / (n * (n - 1))).item()
