"""Replaced token detection (ELECTRA, DeBERTaV3): the whole objective in one file.

    generator (half depth, EMD + tied MLM head) fills the masked positions by sampling
    -> discriminator labels every non-pad token original (0) or replaced (1)
    L = L_MLM + rtd_weight * L_RTD                          (DeBERTaV3 paper, lambda = 50)

Token embeddings are shared in one of three ways (paper section 3), computed explicitly in `forward`:
    es    one table E for both; its gradient is dL_MLM/dE + lambda * dL_RTD/dE ("tug of war")
    nes   separate E_G and E_D; RTD never reaches E_G, MLM never reaches E_D
    gdes  E_D = sg(E_G) + E_Delta, E_Delta initialised to zeros: MLM updates E_G, RTD updates only E_Delta

`objective="mlm"` is the DeBERTa MLM baseline: one full-depth backbone with the EMD, no discriminator.
The generator's vocabulary step (L_MLM, accuracy, sampling) is the `mlm_loss` implementation the generator's
`ModelConfig.mlm_loss_impl` selects (the reference is debertav3/objective/losses.py); L_RTD is `losses.rtd_loss`.
Shape legend: B batch, L length, N masked positions, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_INDEX, SHARING_MODES
from ..model import MaskedLMModel, ReplacedTokenDetectionModel, implementations
from ..model.config import ModelConfig
from .losses import rtd_loss, tied_lookup
from .metrics import prior_relative_loss, roc_auc
from .sampling import sample_tokens


@dataclass
class RTDOutput:
    """Losses (with gradient) and detached metrics of one forward pass. RTD fields are None for objective mlm."""

    loss: torch.Tensor
    mlm_loss: torch.Tensor
    mlm_accuracy: torch.Tensor
    rtd_loss: Optional[torch.Tensor] = None
    rtd_accuracy: Optional[torch.Tensor] = None
    replaced_fraction: Optional[torch.Tensor] = None
    precision: Optional[torch.Tensor] = None  # of the "replaced" class
    recall: Optional[torch.Tensor] = None
    rtd_auc: Optional[torch.Tensor] = None  # ROC-AUC of the "replaced" scores (debertav3.objective.metrics.roc_auc)
    rtd_loss_vs_prior: Optional[torch.Tensor] = None  # BCE / H(replaced fraction); 1.0 = learned nothing
    discriminator_input_ids: Optional[torch.Tensor] = None
    rtd_labels: Optional[torch.Tensor] = None
    rtd_logits: Optional[torch.Tensor] = None  # detached, float32 [non-pad tokens], in row-major order
    rtd_targets: Optional[torch.Tensor] = None  # 1.0 replaced, 0.0 original, aligned with rtd_logits

    def metric_tensors(self) -> dict[str, torch.Tensor]:
        """Detached scalar tensors, for accumulating without a host sync."""
        names = ("loss", "mlm_loss", "mlm_accuracy", "rtd_loss", "rtd_accuracy", "replaced_fraction", "precision",
                 "recall", "rtd_auc", "rtd_loss_vs_prior")
        return {n: getattr(self, n).detach().float() for n in names if getattr(self, n) is not None}

    def metrics(self) -> dict[str, float]:
        """Scalar values for logging (one host sync for all of them)."""
        return to_floats(self.metric_tensors())


class RTDModel(nn.Module):
    """Generator + discriminator with switchable embedding sharing.

    `forward(input_ids, attention_mask, labels)`: `input_ids` already masked, `labels` the original ids at masked
    positions and -100 elsewhere (transformers' convention). `special_token_ids` are never sampled as replacements.
    """

    def __init__(self, generator_config: ModelConfig, discriminator_config: Optional[ModelConfig] = None,
                 embedding_sharing: str = "gdes", rtd_weight: float = 50.0, temperature: float = 1.0,
                 objective: str = "rtd", special_token_ids: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if objective not in ("rtd", "mlm"):
            raise ValueError(f"objective {objective!r} is unknown; use 'rtd' or 'mlm'")
        if embedding_sharing not in SHARING_MODES:
            raise ValueError(f"embedding_sharing {embedding_sharing!r} is unknown; use one of {list(SHARING_MODES)}")
        self.objective, self.embedding_sharing = objective, embedding_sharing
        self.rtd_weight, self.temperature = rtd_weight, temperature
        self.generator = MaskedLMModel(generator_config)
        self.discriminator = None
        self.embedding_delta = None
        if objective == "rtd":
            if discriminator_config is None:
                raise ValueError("objective 'rtd' needs a discriminator_config")
            shared = embedding_sharing in ("es", "gdes")
            if shared and (generator_config.embedding_width, generator_config.vocab_size) != \
                    (discriminator_config.embedding_width, discriminator_config.vocab_size):
                raise ValueError(f"embedding_sharing={embedding_sharing} needs the generator's and discriminator's "
                                 "word embeddings to have the same width and vocab_size (a narrower generator "
                                 "takes embedding_size = the discriminator's width); or use 'nes'")
            self.discriminator = ReplacedTokenDetectionModel(discriminator_config, own_word_embeddings=not shared)
            if embedding_sharing == "gdes":
                self.embedding_delta = nn.Parameter(torch.zeros_like(self.generator_embedding))
            # Under es the discriminator's lookup gradient reaches the shared table first in backward; as rows only
            # (sparse), autograd adds them in place into the generator's dense gradient when that arrives, with no
            # [V, HD] zero fill of their own.
            self.discriminator.deberta.embeddings.sparse_gradient = embedding_sharing == "es"
            if embedding_sharing == "es":  # L_RTD backpropagated alone leaves rows only: the optimizer wants dense
                self.generator_embedding.register_post_accumulate_grad_hook(_densify_gradient)
        self.register_buffer("special_token_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long),
                             persistent=False)

    @property
    def generator_embedding(self) -> nn.Parameter:
        """E_G, the generator's word embedding Parameter (under es, the one shared table)."""
        return self.generator.deberta.embeddings.word_embeddings.weight

    def discriminator_embedding(self) -> torch.Tensor:
        """The effective E_D: E_G (es), the discriminator's own table (nes) or sg(E_G) + E_Delta (gdes)."""
        if self.embedding_sharing == "es":
            return self.generator_embedding
        if self.embedding_sharing == "nes":
            return self.discriminator.deberta.embeddings.word_embeddings.weight
        # The stop-gradient is what keeps the RTD loss from pulling on E_G (the paper's "tug of war").
        return self.generator_embedding.detach() + self.embedding_delta

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                generator: Optional[torch.Generator] = None, uniforms: Optional[torch.Tensor] = None,
                denominators: Optional[tuple[float, float]] = None) -> RTDOutput:
        """`uniforms` [N] in (0, 1] drive the sampling (default: drawn from `generator`); `denominators` =
        (masked positions, non-pad tokens) to divide the summed losses by (default: this batch's counts).
        The trainer passes both from the global batch so that any number of processes gives the same step."""
        masked_BL = labels != IGNORE_INDEX
        targets_N = labels[masked_BL]
        real_BL = attention_mask.bool()
        num_masked, num_tokens = denominators or (targets_N.numel(), real_BL.sum())
        if uniforms is None and self.objective == "rtd":
            uniforms = 1.0 - torch.rand(targets_N.shape, generator=generator, device=targets_N.device)
        vocabulary_loss = implementations.resolve("mlm_loss", self.generator.config.mlm_loss_impl,
                                                  input_ids.device.type)
        table = self.generator_embedding
        with tied_lookup(vocabulary_loss, self.generator.deberta.embeddings, table) as head_table:
            states_NH = self.generator.masked_states(input_ids, attention_mask, masked_BL, table)
            mlm_loss, mlm_accuracy, sampled_N = vocabulary_loss(
                states_NH, head_table, self.generator.lm_predictions["lm_head"].bias, targets_N, uniforms,
                num_masked, self.temperature, self.special_token_ids)
        if self.objective == "mlm":
            return RTDOutput(loss=mlm_loss, mlm_loss=mlm_loss, mlm_accuracy=mlm_accuracy)

        original_BL = torch.where(masked_BL, labels, input_ids)
        discriminator_input = input_ids.masked_scatter(masked_BL, sampled_N)
        # A sample equal to the original token is labelled original (ELECTRA, official code).
        rtd_labels = (discriminator_input != original_BL) & real_BL
        rtd_logits_BL = self.discriminator(discriminator_input, attention_mask, self.discriminator_embedding())
        rtd_logits, rtd_targets = rtd_logits_BL[real_BL].float(), rtd_labels[real_BL].float()
        detection_loss = rtd_loss(rtd_logits, rtd_targets, num_tokens)
        return RTDOutput(loss=mlm_loss + self.rtd_weight * detection_loss, mlm_loss=mlm_loss,
                         mlm_accuracy=mlm_accuracy, rtd_loss=detection_loss,
                         discriminator_input_ids=discriminator_input, rtd_labels=rtd_labels,
                         rtd_logits=rtd_logits.detach(), rtd_targets=rtd_targets,
                         **detection_metrics(rtd_logits.detach(), rtd_targets))

    @torch.no_grad()
    def sample(self, logits_NV: torch.Tensor, uniforms_N: torch.Tensor) -> torch.Tensor:
        """Replacements ~ softmax(logits / temperature), special tokens excluded, no gradient (`sample_tokens`,
        as every `mlm_loss` implementation draws in `forward`)."""
        return sample_tokens(torch.softmax(logits_NV.float() / self.temperature, -1), uniforms_N,
                             self.special_token_ids)


def _densify_gradient(param: torch.Tensor) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


def to_floats(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to floats with a single host sync."""
    return dict(zip(tensors, torch.stack(list(tensors.values())).tolist())) if tensors else {}


def detection_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy, replaced fraction, precision / recall of the "replaced" class (0 where undefined), and the two
    measures a constant answer cannot game: ROC-AUC (0.5) and BCE / H(replaced fraction) (1.0, debertav3.objective.metrics).
    One sort of the batch's scores, no host sync."""
    predicted = logits > 0
    actual = targets > 0.5
    true_positive = (predicted & actual).sum().float()
    return dict(rtd_accuracy=(predicted == actual).float().mean(),
                replaced_fraction=actual.float().mean(),
                precision=true_positive / predicted.sum().clamp(min=1),
                recall=true_positive / actual.sum().clamp(min=1),
                rtd_auc=roc_auc(logits, targets),
                rtd_loss_vs_prior=prior_relative_loss(logits, targets))


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
