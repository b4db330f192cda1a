"""The training schema: one typed tree merged by OmegaConf from defaults, a recipe, a YAML file and `key=value`.

Unknown keys and values of the wrong type fail at load with the key named (OmegaConf structured configs);
values that are well-typed but wrong fail in `__post_init__` the same way: every number is checked against its
physical range (finite; a learning rate > 0, a probability in [0, 1), ...), modes against their names, and keys
that depend on each other against each other.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

from ..model.config import ModelConfig
from ..validation import check_number, check_positive
from ..constants import GENERATOR_STARTS, OBJECTIVES, SCHEDULES, SHARING_MODES, TRACKERS
from ..data.config import DataConfig
from ..errors import ConfigError, ScheduleWarning

LR_SCALINGS = ("none", "sqrt")



@dataclass
class PretrainModelConfig(ModelConfig):
    """The discriminator's `ModelConfig` plus how the generator and initial weights are derived from it."""

    generator_layers: Optional[int] = None  # default: half the discriminator's depth (DeBERTaV3 paper)
    # default: the discriminator's width (DeBERTaV3); narrower is ELECTRA's smaller generator (model.config)
    generator_hidden_size: Optional[int] = None
    init_discriminator: Optional[str] = None  # Hugging Face DebertaV2 directory to continue from
    init_generator: Optional[str] = None
    # A generator for a discriminator-only release (init_discriminator without init_generator; interop/hf.py):
    # random, E_G random (E_Delta = E_D - E_G); release_embeddings, E_G := the release's E_D (E_Delta = 0 under
    # gdes). random by measurement: docs/training-dynamics.md §17
    generator_start: str = "random"
    # The MLM head reads the enhanced mask decoder (DeBERTa paper section 3.3), or, false, the last layer directly:
    # DeBERTa-AP and the absolute-position baseline of the paper's generation comparison (docs/generation.md)
    enhanced_mask_decoder: bool = True

    def validate(self) -> None:
        super().validate()
        if self.generator_layers is not None and self.generator_layers <= 0:
            raise ConfigError(f"model.generator_layers must be positive (or null: half the discriminator's depth), "
                              f"got {self.generator_layers}")
        if self.generator_hidden_size is not None and not 0 < self.generator_hidden_size <= self.hidden_size:
            raise ConfigError(f"model.generator_hidden_size must be in [1, model.hidden_size = {self.hidden_size}] "
                              f"(or null: the discriminator's width), got {self.generator_hidden_size}")
        if self.generator_start not in GENERATOR_STARTS:
            raise ConfigError(f"model.generator_start {self.generator_start!r} is unknown; use one of "
                              f"{list(GENERATOR_STARTS)}")

    def backbone(self) -> ModelConfig:
        """The plain `ModelConfig` (without the pretraining-only fields)."""
        fields = ModelConfig.__dataclass_fields__
        return ModelConfig(**{k: getattr(self, k) for k in fields})


@dataclass
class RTDConfig:
    """The objective (debertav3.objective.rtd): sharing mode and loss weight, L = L_MLM + rtd_weight * L_RTD, and
    how it is stepped: `schedule` joint (one optimizer step on L) or decoupled (the official code: a generator step
    on L_MLM, then a discriminator step on rtd_weight * L_RTD, separate optimizers and clipping). For the first
    `generator_warmup_steps` steps only the generator trains (L_MLM), the discriminator is left as it is."""

    embedding_sharing: str = "gdes"
    rtd_weight: float = 50.0
    temperature: float = 1.0
    schedule: str = "joint"
    generator_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.embedding_sharing not in SHARING_MODES:
            raise ConfigError(f"rtd.embedding_sharing {self.embedding_sharing!r} is unknown; "
                              f"use one of {list(SHARING_MODES)}")
        check_number("rtd.rtd_weight", self.rtd_weight, ">= 0")
        check_number("rtd.temperature", self.temperature, "> 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"rtd.schedule {self.schedule!r} is unknown; use one of {list(SCHEDULES)}")
        if self.generator_warmup_steps < 0:
            raise ConfigError(f"rtd.generator_warmup_steps must be >= 0, got {self.generator_warmup_steps}")


@dataclass
class MTConfig:
    """DeBERTa-MT (objective mt): one network trained on MLM and on ARLM, "as in UniLM" (DeBERTa paper A.4).

    Each optimizer step trains one task, all its micro-batches alike; `arlm_fraction` of the steps are ARLM,
    spread evenly (step s is ARLM when floor((s + 1) f) > floor(s f)), so the mix needs no random state to resume.
    0.5 by default: UniLM gives its bidirectional and its left-to-right objectives equal shares (a third each, the
    last third going to sequence-to-sequence, which has no counterpart here); the DeBERTa paper gives no other.
    """

    arlm_fraction: float = 0.5

    def __post_init__(self) -> None:
        check_number("mt.arlm_fraction", self.arlm_fraction, "(0, 1)")

    def causal_step(self, step: int) -> bool:
        """Whether step `step` (0-based) trains the ARLM task."""
        return math.floor((step + 1) * self.arlm_fraction) > math.floor(step * self.arlm_fraction)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then linear decay (DeBERTaV3 paper; no decay on biases and LayerNorm)."""

    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 10000
    max_grad_norm: float = 1.0
    # The discriminator's (and GDES's E_Delta's) lr as a multiple of `lr`; 1: one lr for both (the papers)
    discriminator_lr_scale: float = 1.0
    # How the lr follows the global batch (train/optim.py, `scaled_lr`): none, `lr` as it is; sqrt, `lr` is the lr at
    # `lr_reference_tokens` tokens per optimizer step, times sqrt(tokens per step / lr_reference_tokens), at most
    # `lr`. An `optim.lr` the user sets turns a recipe's sqrt off (config_io.py).
    lr_scaling: str = "none"
    lr_reference_tokens: int = 8192 * 512  # the DeBERTaV3 paper's global batch: 8192 sequences of 512 tokens

    def __post_init__(self) -> None:
        for name, allowed in (("lr", "> 0"), ("beta1", "[0, 1)"), ("beta2", "[0, 1)"), ("eps", "> 0"),
                              ("weight_decay", ">= 0"), ("max_grad_norm", "> 0"), ("discriminator_lr_scale", "> 0")):
            check_number(f"optim.{name}", getattr(self, name), allowed)
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"optim.lr_scaling {self.lr_scaling!r} is unknown; use one of {list(LR_SCALINGS)}")
        check_positive("optim", self, ("lr_reference_tokens",))


@dataclass
class TrainSection:
    """The loop: sizes, precision, logging, evaluation and checkpoints (debertav3.train)."""

    output_dir: str = "runs/rtd"
    max_steps: int = 1000
    batch_size: int = 8  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, else no
    seed: int = 42
    log_every: int = 10
    # Experiment trackers (accelerate's names); a single name is a one-element list; []: none
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    eval_every: int = 200
    eval_batches: int = 20
    embedding_stats_every: int = 100
    save_every: int = 500
    keep_last: int = 3
    resume: str = "auto"  # auto | never | a checkpoint directory
    compile: bool = False
    keep_freed_memory: bool = True  # CPU: glibc keeps freed activations for the next step (train/allocator.py)
    progress: bool = True
    nonfinite: str = "skip"  # non-finite gradients: skip the update and count it, or stop after saving
    collapse_check_step: int = 2000  # from this step on, warn once if eval RTD AUC < collapse_auc; 0: never
    collapse_auc: float = 0.6

    def __post_init__(self) -> None:
        check_positive("train", self, ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every",
                                       "eval_every", "eval_batches", "embedding_stats_every", "save_every",
                                       "keep_last"))
        if not 0 <= self.seed < 2 ** 32:  # numpy's and accelerate's set_seed range
            raise ConfigError(f"train.seed must be in [0, 2^32), got {self.seed}")
        if self.nonfinite not in ("skip", "stop"):
            raise ConfigError(f"train.nonfinite {self.nonfinite!r} is unknown; use skip or stop")
        unknown = [name for name in self.log_with if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"train.log_with: {unknown[0]!r} is not a tracker; use any of {list(TRACKERS)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision {self.mixed_precision!r} is unknown; use auto, no, bf16 or fp16")
        if self.collapse_check_step < 0:
            raise ConfigError(f"train.collapse_check_step must be >= 0 (0 disables the check), got "
                              f"{self.collapse_check_step}")
        check_number("train.collapse_auc", self.collapse_auc, "(0.5, 1)")


@dataclass
class ProbeConfig:
    """A linear probe at every evaluation (train/probe.py): off unless `train_file` and `dev_file` are set."""

    train_file: Optional[str] = None  # labelled sentences (.tsv, .txt with tabs, .csv, .jsonl), as fine-tuning reads
    dev_file: Optional[str] = None
    text_column: str = "sentence"  # SST-2's names; a 0-based index with header=false (CoLA: 3 and 1)
    label_column: str = "label"
    header: bool = True
    examples: int = 2000  # a seeded slice of the training file; the dev file is read up to this many too
    max_length: int = 64  # tokens per sentence, [CLS] and [SEP] included
    l2: float = 1e-3  # the logistic regression's weight penalty, on standardised features

    def __post_init__(self) -> None:
        if (self.train_file is None) != (self.dev_file is None):
            raise ConfigError("probe.train_file and probe.dev_file go together: set both, or neither")
        check_positive("probe", self, ("examples",))
        if self.max_length < 3:
            raise ConfigError(f"probe.max_length {self.max_length} leaves no room for text: [CLS] text [SEP] "
                              "needs 3 tokens at least")
        check_number("probe.l2", self.l2, ">= 0")


@dataclass
class Config:
    """Everything one pretraining run needs."""

    objective: str = "rtd"
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rtd: RTDConfig = field(default_factory=RTDConfig)
    mt: MTConfig = field(default_factory=MTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r} is unknown; use one of {list(OBJECTIVES)}")
        if self.data.max_seq_length > self.model.max_position_embeddings:
            raise ConfigError(f"data.max_seq_length ({self.data.max_seq_length}) exceeds "
                              f"model.max_position_embeddings ({self.model.max_position_embeddings})")
        if self.optim.warmup_steps > self.train.max_steps:
            # A warning, not an error: the schema's defaults (10000 > 1000) and every short test or smoke run
            # rely on the cut.
            warnings.warn(f"optim.warmup_steps ({self.optim.warmup_steps}) is longer than train.max_steps "
                          f"({self.train.max_steps}): the warm-up is cut to {self.train.max_steps} steps and the "
                          "learning rate never decays; set optim.warmup_steps <= train.max_steps to choose the "
                          "schedule", ScheduleWarning)

    def causal_step(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) trains the auto-regressive task: always for arlm, by
        `mt.arlm_fraction` for mt, never for rtd and mlm."""
        return self.objective == "arlm" or (self.objective == "mt" and self.mt.causal_step(step))

    @property
    def mask_mode(self) -> str:
        """The masking actually used: `data.mask_mode`, with `auto` resolved from the objective."""
        if self.data.mask_mode != "auto":
            return self.data.mask_mode
        return "all_mask" if self.objective == "rtd" else "bert"
