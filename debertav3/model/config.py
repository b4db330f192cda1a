"""Typed configuration: the model schema (DebertaV2Config field names) and its presets.

`ModelConfig` mirrors the fields of transformers' `DebertaV2Config` that the DeBERTa-v3 network uses, so a
config.json moves between us and Hugging Face by copying keys (see `debertav3.interop.hf`). Every value is checked in
`__post_init__` and a bad one raises a one-line `ConfigError` that names the field and the fix.

The training schema (data, optimiser, trainer sections) lives in `debertav3.train.config` so that the model
package stays importable on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError
from ..validation import check_number, check_positive
from . import implementations

POSITION_TERMS = ("c2p", "p2c")
ACTIVATIONS = ("gelu", "relu", "gelu_new", "silu", "tanh")
NORM_REL_EBD = ("layer_norm", "none")


@dataclass
class ModelConfig:
    """One DeBERTa-v3 encoder. Defaults are the released deberta-v3-base values (docs/reference.md)."""

    vocab_size: int = 128100
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    relative_attention: bool = True
    max_relative_positions: int = -1
    position_buckets: int = 256
    pos_att_type: list[str] = field(default_factory=lambda: ["p2c", "c2p"])
    share_att_key: bool = True
    norm_rel_ebd: str = "layer_norm"
    position_biased_input: bool = False
    pad_token_id: int = 0
    # Width of the word embeddings when it differs from hidden_size (transformers' name): a linear map without bias,
    # `embed_proj`, takes them to hidden_size, and the MLM head maps back (ELECTRA's narrower generator reading the
    # discriminator-wide shared table). None: hidden_size, no projection.
    embedding_size: Optional[int] = None
    # Which function computes each swappable piece (debertav3/model/implementations.py): the same network either
    # way, so these are left out of config.json.
    attention_impl: str = "auto"
    mlm_loss_impl: str = "auto"
    dropout_impl: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.pos_att_type, str):  # HF also accepts "p2c|c2p"
            self.pos_att_type = [t.strip() for t in self.pos_att_type.lower().split("|") if t.strip()]
        self.pos_att_type = list(self.pos_att_type)
        self.validate()

    def validate(self) -> None:
        check_positive("model", self, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "intermediate_size", "max_position_embeddings"))
        if self.embedding_size is not None:
            check_positive("model", self, ("embedding_size",))
            if self.embedding_size != self.hidden_size and self.position_biased_input:
                raise ConfigError("model.embedding_size differs from model.hidden_size, which needs "
                                  "model.position_biased_input=false (the DeBERTa-v3 setting)")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.num_attention_heads ({self.num_attention_heads})")
        unknown = [t for t in self.pos_att_type if t not in POSITION_TERMS]
        if unknown:
            raise ConfigError(f"model.pos_att_type has unknown term(s) {unknown}; use a subset of {list(POSITION_TERMS)}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"model.hidden_act {self.hidden_act!r} is not supported; use one of {list(ACTIVATIONS)}")
        if self.norm_rel_ebd not in NORM_REL_EBD:
            raise ConfigError(f"model.norm_rel_ebd {self.norm_rel_ebd!r} is not supported; use one of {list(NORM_REL_EBD)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            check_number(f"model.{name}", getattr(self, name), "[0, 1)")
        if self.type_vocab_size < 0:
            raise ConfigError(f"model.type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model.pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")
        check_number("model.layer_norm_eps", self.layer_norm_eps, "> 0")
        check_number("model.initializer_range", self.initializer_range, "> 0")
        for kind, key in implementations.CONFIG_KEYS.items():
            implementations.check_name(kind, getattr(self, key))

    @property
    def embedding_width(self) -> int:
        """The word embeddings' width: `embedding_size`, or hidden_size when that is None."""
        return self.embedding_size if self.embedding_size is not None else self.hidden_size

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def relative_span(self) -> int:
        """Half the number of rows of the relative embedding table (256 for v3: a 512-row table)."""
        if self.position_buckets > 0:
            return self.position_buckets
        return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def for_device(self, device_type: str) -> "ModelConfig":
        """This config with every `auto` implementation resolved for a device type ("cpu", "cuda", ...): what a
        model built elsewhere (on the CPU, say) and moved to that device should run."""
        return self.replace(**{key: implementations.resolve_name(kind, getattr(self, key), device_type)
                               for kind, key in implementations.CONFIG_KEYS.items()})

    def to_dict(self) -> dict:
        """The architecture's fields (what config.json holds): every field but the implementation choice, and
        `embedding_size` only when set (transformers reads a missing one as hidden_size, a null one as an error)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in implementations.CONFIG_KEYS.values() and not (k == "embedding_size" and v is None)}


# Released deberta-v3 sizes (docs/reference.md, table "size"); everything else takes the defaults above.
PRESETS: dict[str, dict] = {
    "xsmall": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "small": dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # CPU-sized for tests and the quick start: v3 attention settings, tiny width and vocabulary.
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256),
}


def preset(name: str, **overrides) -> ModelConfig:
    """`ModelConfig` for a named size (xsmall, small, base, large, tiny), with field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def generator_config(discriminator: ModelConfig, num_hidden_layers: int | None = None,
                     hidden_size: int | None = None) -> ModelConfig:
    """The generator's config: the discriminator's width and half its depth (DeBERTaV3 paper, official rtd_*.json).

    A narrower `hidden_size` gives ELECTRA's smaller generator (ELECTRA section 3.2: a quarter to a half of the
    discriminator's width works best): its word embeddings keep the discriminator's width, so that ES and GDES
    still share one table, and `embed_proj` / the MLM head map between the two widths. Intermediate size and
    heads scale with the width.
    """
    layers = num_hidden_layers if num_hidden_layers is not None else max(1, discriminator.num_hidden_layers // 2)
    if layers < 1:
        raise ConfigError(f"generator num_hidden_layers must be >= 1, got {layers}")
    width = hidden_size if hidden_size is not None else discriminator.hidden_size
    ratio = width / discriminator.hidden_size
    heads = max(1, round(discriminator.num_attention_heads * ratio))
    embedding = discriminator.embedding_width
    return discriminator.replace(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
                                 intermediate_size=int(discriminator.intermediate_size * ratio),
                                 embedding_size=None if embedding == width else embedding)
