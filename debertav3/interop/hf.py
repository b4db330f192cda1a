"""Conversion to and from Hugging Face DebertaV2 directories (config.json + model.safetensors or bin).

Our module and parameter names are transformers' names, so the key map is a matter of prefixes:

| ours (pretraining modules)          | transformers                                   |
|-------------------------------------|------------------------------------------------|
| `DebertaV3Model`: `embeddings.*`, `encoder.*` | `DebertaV2Model`: same; head models: `deberta.` + same |
| generator: `lm_predictions.lm_head.*` | `DebertaV2ForMaskedLM` with `legacy: false`: same |
| discriminator: `mask_predictions.*`   | exported to `rtd_head.safetensors` (debertav3.train.export): inside model.safetensors, transformers' base and sequence classes report them as unexpected |
| generator: `deberta.embeddings.position_embeddings.weight` (EMD only) | ignored by transformers on load |

The official checkpoints spell the RTD classifier `mask_predictions.classifer`; it is read as `classifier`.
This module does not import transformers: it reads and writes the files directly.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..model import DebertaV3Model
from ..model.config import ModelConfig
from ..io_utils import atomic_directory
from ..errors import CheckpointError

logger = logging.getLogger(__name__)
BACKBONE_PREFIX = "deberta."
RTD_HEAD_FILE = "rtd_head.safetensors"  # the RTD head of a discriminator exported by debertav3.train.export
RENAMED_KEYS = {"mask_predictions.classifer.weight": "mask_predictions.classifier.weight",
                "mask_predictions.classifer.bias": "mask_predictions.classifier.bias"}
# transformers' defaults for keys a config.json may omit (they differ from the v3 values we default to).
HF_DEFAULTS = dict(relative_attention=False, max_relative_positions=-1, position_buckets=-1, pos_att_type=[],
                   share_att_key=False, norm_rel_ebd="none", position_biased_input=True, type_vocab_size=0,
                   hidden_act="gelu", layer_norm_eps=1e-7, pad_token_id=0, initializer_range=0.02)



def config_from_hf(hf: dict) -> ModelConfig:
    """`ModelConfig` from a transformers config.json dict (missing keys take transformers' defaults)."""
    if hf.get("model_type") not in (None, "deberta-v2"):
        raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}; expected 'deberta-v2'")
    fields = ModelConfig.__dataclass_fields__
    values = {k: hf.get(k, HF_DEFAULTS.get(k)) for k in fields if k in hf or k in HF_DEFAULTS}
    if values.get("pos_att_type") is None:
        values["pos_att_type"] = []
    if values.get("pad_token_id") is None:
        values["pad_token_id"] = 0
    return ModelConfig(**values)


def config_to_hf(config: ModelConfig, architectures: list[str], **extra) -> dict:
    """A transformers config.json dict with every DeBERTa-specific key written out explicitly."""
    return {"model_type": "deberta-v2", "architectures": architectures, **config.to_dict(),
            "pooler_hidden_size": config.hidden_size, "pooler_dropout": 0.0, "pooler_hidden_act": "gelu",
            "legacy": False, **extra}


def read_config(path: str | os.PathLike) -> ModelConfig:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file} not found; pass a Hugging Face DeBERTa-v2/v3 model directory")
    try:
        return config_from_hf(json.loads(file.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{file} is not a valid DeBERTa-v2 config.json: {exc}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights from model.safetensors, a sharded safetensors index, or pytorch_model.bin (official names fixed),
    plus the RTD head of an exported discriminator (rtd_head.safetensors) where present."""
    path = Path(path)
    try:
        if (path / "model.safetensors").is_file():
            state = load_file(path / "model.safetensors")
        elif (path / "model.safetensors.index.json").is_file():
            shards = set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
            state = {k: v for shard in sorted(shards) for k, v in load_file(path / shard).items()}
        elif (path / "pytorch_model.bin").is_file():
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"no model.safetensors or pytorch_model.bin in {path}; is it a model directory?")
        if (path / RTD_HEAD_FILE).is_file():
            state.update(load_file(path / RTD_HEAD_FILE))
    # A truncated or overwritten weights file: safetensors' and torch's readers raise these, not OSError.
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"the weights in {path} cannot be read ({reason}); the files are damaged or "
                              "incomplete: copy or export them again") from None
    return {RENAMED_KEYS.get(k, k): v for k, v in state.items()}


def load_weights(module: nn.Module, path: str | os.PathLike, required_prefix: str = "deberta.",
                 optional: tuple[str, ...] = ()) -> list[str]:
    """Copy a HF checkpoint's weights into a module named like a transformers head model (`deberta.*`, heads).

    Bare `DebertaV2Model` keys get the `deberta.` prefix. Every key of `module` under `required_prefix` but not
    in `optional` must be present with the right shape; the missing ones (a head or table the checkpoint lacks)
    keep their initialisation and are returned.
    """
    state = read_state_dict(path)
    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        state = {BACKBONE_PREFIX + k: v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    required = [k for k in missing if k.startswith(required_prefix) and k not in optional]
    if required:
        raise CheckpointError(f"{path} lacks {len(required)} weights the model needs (e.g. {required[0]}); "
                              "is it a DeBERTa-v2/v3 checkpoint of the same architecture?")
    for key, tensor in own.items():
        if key in state and state[key].shape != tensor.shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model expects "
                                  f"{tuple(tensor.shape)}; make the model config match the checkpoint's")
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    return missing


def write_hf_directory(path: str | os.PathLike, config_json: dict, state: dict[str, torch.Tensor],
                       extra_files: dict[str, str | os.PathLike] | None = None) -> None:
    """config.json + model.safetensors (+ extra files copied in), written atomically."""
    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        for name, src in (extra_files or {}).items():
            (tmp / name).write_bytes(Path(src).read_bytes())


def load_backbone(path: str | os.PathLike, **kwargs) -> DebertaV3Model:
    """A `DebertaV3Model` with the config and backbone weights of a HF DebertaV2 directory (`kwargs` go to the
    config, `attention_impl="eager"` say)."""
    model = DebertaV3Model(read_config(path).replace(**kwargs))
    wrapper = nn.Module()
    wrapper.deberta = model
    load_weights(wrapper, path)
    return model


def save_backbone(model: DebertaV3Model, path: str | os.PathLike) -> None:
    """Write a `DebertaV2Model` directory: no missing or unexpected keys for `AutoModel.from_pretrained`."""
    state = {k: v for k, v in model.state_dict().items()
             if not (k == "embeddings.position_embeddings.weight" and not model.config.position_biased_input)}
    write_hf_directory(path, config_to_hf(model.config, ["DebertaV2Model"]), state)


def _load_named(module: nn.Module, path: str, setting: str) -> None:
    # transformers drops the EMD's absolute position table when it saves a ForMaskedLM: start it afresh then.
    try:
        missing = load_weights(module, path, optional=("deberta.embeddings.position_embeddings.weight",))
    except CheckpointError as exc:
        raise CheckpointError(f"{setting}: {exc}") from None
    if missing:
        logger.warning("%s=%s: %d weights not in the checkpoint keep their initialisation: %s", setting, path,
                       len(missing), ", ".join(missing))


def load_rtd_weights(model, discriminator_dir: str | None, generator_dir: str | None,
                     generator_start: str = "random") -> None:
    """Initialise an `RTDModel` from released checkpoints (continued pretraining).

    The generator loads backbone, MLM head and EMD position table where present; the discriminator its backbone
    and RTD head. The discriminator's word embeddings E_D are handed to the objective, which maps them onto its
    sharing mode (`RTDModel.set_discriminator_embedding`), except under es with a generator checkpoint, whose
    E_G is the one shared table. Without a generator checkpoint (the released deberta-v3 models hold the
    discriminator only), `generator_start` release_embeddings first sets E_G := E_D, so that under gdes
    E_Delta = 0 and the discriminator keeps the release's table as the generator's moves; random leaves E_G at
    its random initialisation (E_Delta = E_D - E_G).
    """
    if generator_dir:
        _load_named(model.generator, generator_dir, "model.init_generator")
    if not discriminator_dir or model.discriminator is None:
        return
    _load_named(model.discriminator, discriminator_dir, "model.init_discriminator")
    if model.embedding_sharing == "es" and generator_dir:
        return
    state = read_state_dict(discriminator_dir)
    key = next((k for k in ("deberta.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight")
                if k in state), None)
    if key is None:
        raise CheckpointError(f"{discriminator_dir} has no word embeddings (embeddings.word_embeddings.weight)")
    if not generator_dir and generator_start == "release_embeddings":
        with torch.no_grad():
            model.generator_embedding.copy_(state[key])
    model.set_discriminator_embedding(state[key])
