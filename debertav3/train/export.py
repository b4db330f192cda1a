"""Export a pretraining checkpoint as a Hugging Face DebertaV2 directory (`python tools/export.py CKPT OUT`).

What is written (see docs/finetune.md, "What export writes"):

- `--part discriminator` (default): the network users keep. `model.safetensors` holds only backbone keys
  (`deberta.*`), so `AutoModel` and `AutoModelForSequenceClassification` load it with nothing missing or
  unexpected. Its word embeddings are the table the discriminator actually used in pretraining:
  E_D = E_G + E_Delta under gdes (the fold), E_G under es, its own table under nes. The RTD head goes to
  `rtd_head.safetensors` under its own names (`mask_predictions.*`): transformers' sequence-level classes do not
  ignore those keys and would report them as unexpected, while a second file is never read by them.
  `load_discriminator(dir)` reads both back into a `ReplacedTokenDetectionModel`.
- `--part generator`: a `DebertaV2ForMaskedLM` directory (`legacy: false`, keys `deberta.*` and
  `lm_predictions.lm_head.*`) that `pipeline("fill-mask")` runs. The absolute position table that only the
  enhanced mask decoder uses is kept (transformers ignores it; our continued pretraining reads it), but
  transformers runs the plain last layer, not the EMD.
- Both get `config.json` with every DeBERTa-specific key (`debertav3.interop.hf.config_to_hf`) and the checkpoint's
  tokenizer files, so `AutoTokenizer` loads the directory too.

A checkpoint of `objective: mlm` has no discriminator: its only network is the full-depth MLM model, which
`--part generator` exports (and which `AutoModelForSequenceClassification` fine-tunes like any DeBERTa-v2 MLM).
So do those of `arlm` and `mt`, whose config.json also records what `debertav3.lm.load_causal_lm` needs to run
the network causally as trained (objective, enhanced_mask_decoder, max_seq_length; docs/finetune.md).
Every problem is found before anything is written; the directory appears complete, via a rename, or not at all.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .build import build_model
from ..data import Tokenizer
from ..interop.hf import (BACKBONE_PREFIX, RTD_HEAD_FILE, config_to_hf, load_weights, read_config,
                          write_hf_directory)
from ..model import ReplacedTokenDetectionModel
from ..objective.rtd import RTDModel
from .checkpoint import CONFIG_FILE, STATE_FILE, complete_checkpoints, read_state, verify_checkpoint
from .manifest import MANIFEST_FILE
from .config_io import load_config, read_yaml
from ..errors import CheckpointError, ConfigError, ScheduleWarning, UserError
from .config import Config
from ..usage import ArgumentParser, guarded
from ..validation import check_writable

PARTS = ("discriminator", "generator")
MODEL_FILE = "model.safetensors"
HEAD_FILE = RTD_HEAD_FILE
HEAD_PREFIX = "mask_predictions."
WORD_EMBEDDINGS = "deberta.embeddings.word_embeddings.weight"
TOKENIZER_DIR = "tokenizer"


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A whole `step-XXXXXXXX` directory: `source` itself, or the latest whole one of a training output_dir."""
    path = Path(source)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} not found; pass a checkpoints/step-XXXXXXXX directory or the "
                              "training output_dir")
    if not (path / STATE_FILE).is_file() and (path / "checkpoints").is_dir():
        # The newest checkpoint that still matches its manifest: a damaged one is passed over, as resume does.
        path = next((c for c in reversed(complete_checkpoints(path)) if verify_checkpoint(c) is None), None)
        if path is None:
            raise CheckpointError(f"{Path(source)}/checkpoints holds no whole checkpoint (none has a manifest its "
                                  "files match); train until the first save, or pass a checkpoint directory")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE}: saving was interrupted or it "
                              "is not a checkpoint); pass an earlier complete step-XXXXXXXX directory")
    # A checkpoint saved before manifests existed has none and is taken as it is.
    problem = verify_checkpoint(path) if (path / MANIFEST_FILE).is_file() else None
    if problem:
        raise CheckpointError(f"{path} is damaged ({problem}); pass an earlier step-XXXXXXXX directory")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} has no {name}; pass a checkpoint written by debertav3's trainer")
    return path


def read_checkpoint_config(checkpoint: Path) -> Config:
    """The config the checkpoint was trained with, taken as a recipe (complete, and nobody's command line: the checks
    of what a user sets, config_io.py `_apply_explicit`, are not for it)."""
    try:
        with warnings.catch_warnings():  # the schedule warning is for whoever sets a run up, not for its reader
            warnings.simplefilter("ignore", ScheduleWarning)
            return load_config(OmegaConf.to_container(read_yaml(str(checkpoint / CONFIG_FILE))))
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint / CONFIG_FILE} is not a valid training config: {exc}") from None


def read_tokenizer(checkpoint: Path, vocab_size: int) -> Tokenizer:
    """The checkpoint's tokenizer, checked against the embedding table it must index."""
    directory = checkpoint / TOKENIZER_DIR
    try:
        tokenizer = Tokenizer.load(directory)
    except UserError:
        raise CheckpointError(f"{checkpoint} has no usable {TOKENIZER_DIR}/spm.model, so the export would have no "
                              "tokenizer; export a complete checkpoint written by debertav3's trainer") from None
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(f"vocabulary mismatch: {directory} has {tokenizer.vocab_size} ids but the model's "
                              f"embedding table has {vocab_size} rows; the checkpoint's tokenizer is not the one "
                              "it was trained with")
    return tokenizer


def load_rtd_model(checkpoint: Path, cfg: Config, tokenizer: Tokenizer) -> RTDModel:
    """The checkpoint's `RTDModel`, every weight loaded strictly (a mismatch is reported, not half-loaded)."""
    cfg.model.init_discriminator = cfg.model.init_generator = None  # the checkpoint supplies every weight
    model = build_model(cfg, tokenizer.special_ids).eval()
    try:
        state = load_file(checkpoint / MODEL_FILE)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{checkpoint / MODEL_FILE} cannot be read ({exc}); pass an intact checkpoint") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{checkpoint / MODEL_FILE} does not match its {CONFIG_FILE}: {detail}") from None
    return model


def discriminator_state(model: RTDModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone with the effective E_D folded in, RTD head): E_G + E_Delta (gdes), E_G (es), own table (nes)."""
    state = model.discriminator.state_dict()
    backbone = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    backbone[WORD_EMBEDDINGS] = model.discriminator_embedding().detach()
    head = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    return backbone, head


def provenance(checkpoint: Path, cfg: Config, part: str) -> dict:
    """Where an export came from, kept in config.json (transformers keeps unknown keys and saves them back)."""
    try:
        state = read_state(checkpoint)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{checkpoint / STATE_FILE} is not valid JSON; pass an intact checkpoint") from None
    # The directory's name only: a local path has no business in a model that may be published.
    return {"checkpoint": checkpoint.name, "step": state.get("step"), "tokens_seen": state.get("tokens_seen"),
            "part": part, "objective": cfg.objective, "embedding_sharing": cfg.rtd.embedding_sharing,
            # what debertav3.lm.load_causal_lm needs to rebuild the network as trained
            "enhanced_mask_decoder": cfg.model.enhanced_mask_decoder, "max_seq_length": cfg.data.max_seq_length}


def check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        check_writable(out, "output directory")
        return
    if not overwrite:
        raise CheckpointError(f"{out} already exists; choose a new output directory or pass --overwrite")
    if not (out / "config.json").is_file():
        raise CheckpointError(f"{out} exists and is not a model directory (no config.json); refusing to replace it")


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, part: str = "discriminator",
           overwrite: bool = False) -> Path:
    """Write `part` of a checkpoint (or of a training output_dir's latest complete one) to `out`; returns `out`."""
    if part not in PARTS:
        raise CheckpointError(f"--part {part!r} is unknown; use one of {list(PARTS)}")
    out = Path(out)
    check_output(out, overwrite)
    checkpoint = resolve_checkpoint(checkpoint)
    cfg = read_checkpoint_config(checkpoint)
    if part == "discriminator" and cfg.objective != "rtd":
        raise CheckpointError(f"{checkpoint} was pretrained with objective {cfg.objective} and has no discriminator; "
                              "export its network with --part generator")
    tokenizer = read_tokenizer(checkpoint, cfg.model.vocab_size)
    model = load_rtd_model(checkpoint, cfg, tokenizer)
    tokenizer_files = {p.name: p for p in sorted((checkpoint / TOKENIZER_DIR).iterdir()) if p.is_file()}
    origin = {"debertav3_export": provenance(checkpoint, cfg, part)}
    if part == "generator":
        if model.generator.config.embedding_width != model.generator.config.hidden_size:
            raise CheckpointError(f"{checkpoint}'s generator is narrower than its word embeddings "
                                  "(model.generator_hidden_size), which transformers' DebertaV2ForMaskedLM "
                                  "(legacy: false) cannot hold; export the discriminator")
        config = config_to_hf(model.generator.config, ["DebertaV2ForMaskedLM"], **origin)
        write_hf_directory(out, config, model.generator.state_dict(), tokenizer_files)
        return out
    backbone, head = discriminator_state(model)
    config = config_to_hf(model.discriminator.config, ["DebertaV2Model"], **origin)
    # write_hf_directory copies extra files in, so the head is staged first and lands in the same atomic rename.
    with tempfile.TemporaryDirectory() as staging:
        head_file = Path(staging) / HEAD_FILE
        save_file({k: v.contiguous() for k, v in head.items()}, head_file, metadata={"format": "pt"})
        write_hf_directory(out, config, backbone, {**tokenizer_files, HEAD_FILE: head_file})
    return out


def load_discriminator(path: str | os.PathLike) -> ReplacedTokenDetectionModel:
    """An exported discriminator (backbone + RTD head) as our `ReplacedTokenDetectionModel`, in eval mode.

    The head comes from `rtd_head.safetensors`, or from the weights file itself for released checkpoints that
    keep `mask_predictions.*` there (microsoft/deberta-v3-*); `debertav3.interop.hf.read_state_dict` reads both.
    """
    model = ReplacedTokenDetectionModel(read_config(path))
    missing = load_weights(model, path)
    if any(k.startswith(HEAD_PREFIX) for k in missing):
        raise CheckpointError(f"{path} has no RTD head ({HEAD_FILE}); export the discriminator with "
                              "tools/export.py to keep it")
    return model.eval()


def describe(out: Path, part: str) -> str:
    config = json.loads((out / "config.json").read_text())
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    return (f"exported the {part} ({config['num_hidden_layers']} layers x {config['hidden_size']}, vocabulary "
            f"{config['vocab_size']}) to {out}: {files}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description="Export a debertav3 checkpoint as a Hugging Face DebertaV2 directory "
                                        "(see docs/finetune.md).")
    parser.add_argument("checkpoint", help="a checkpoints/step-XXXXXXXX directory, or a training output_dir "
                                           "(its latest complete checkpoint is used)")
    parser.add_argument("out", help="the directory to write")
    parser.add_argument("--part", choices=PARTS, default="discriminator",
                        help="discriminator (default: the model to fine-tune, RTD head kept beside it) or "
                             "generator (DebertaV2ForMaskedLM, fill-mask)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is an existing model directory")
    args = parser.parse_args(argv)
    status, out = guarded(lambda: export(args.checkpoint, args.out, args.part, args.overwrite),
                          "nothing was written (an export appears whole or not at all); rerun the same command",
                          hint="free space or choose another output directory")
    if status:
        return status
    print(describe(out, args.part))
    return 0
