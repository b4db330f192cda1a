"""An auto-regressive DeBERTa and its tokenizer from a training run, a checkpoint, or an exported directory.

Accepted: a training output_dir (its latest whole checkpoint), a `checkpoints/step-XXXXXXXX` directory, or what
`tools/export.py --part generator` wrote from one (config.json names the objective and whether the head reads the
enhanced mask decoder, under `debertav3_export`). The network must have been trained causally (objective arlm or
mt): an MLM or RTD network has never seen the triangular mask and would score text meaninglessly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Tokenizer
from ..errors import CheckpointError
from ..interop.hf import load_weights, read_config
from ..model import MaskedLMModel

CAUSAL_OBJECTIVES = ("arlm", "mt")
EXPORT_KEY = "debertav3_export"


@dataclass
class CausalLM:
    """The network (eval mode), its tokenizer and the longest sequence it was trained on ([CLS] and [SEP]
    included): windows are cut to that length."""

    network: MaskedLMModel
    tokenizer: Tokenizer
    window: int

    @torch.no_grad()
    def next_token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, V] float32: at each position, the logits of the token after it (causal in every layer)."""
        return self.network(input_ids, attention_mask, None, causal=True).float()


def load_causal_lm(path: str | os.PathLike) -> CausalLM:
    """The `CausalLM` in `path` (module docstring); a one-line `CheckpointError` for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass a training output_dir, a checkpoint directory or "
                              "an exported --part generator directory of an arlm or mt run")
    if (path / "config.json").is_file():
        return _from_export(path)
    return _from_checkpoint(path)


def _check_objective(objective: str | None, where: Path) -> None:
    if objective not in CAUSAL_OBJECTIVES:
        raise CheckpointError(f"{where} was pretrained with objective {objective}, not causally; generation and "
                              "perplexity need a run of objective arlm or mt (recipes/arlm_tiny.py)")


def _from_checkpoint(path: Path) -> CausalLM:
    from ..train.export import load_rtd_model, read_checkpoint_config, read_tokenizer, resolve_checkpoint
    checkpoint = resolve_checkpoint(path)
    cfg = read_checkpoint_config(checkpoint)
    _check_objective(cfg.objective, checkpoint)
    tokenizer = read_tokenizer(checkpoint, cfg.model.vocab_size)
    network = load_rtd_model(checkpoint, cfg, tokenizer).generator.eval()
    return CausalLM(network, tokenizer, cfg.data.max_seq_length)


def _from_export(path: Path) -> CausalLM:
    config = read_config(path)  # first: it reports a config.json that is not valid JSON in one line
    origin = json.loads((path / "config.json").read_text()).get(EXPORT_KEY, {})
    _check_objective(origin.get("objective"), path)
    network = MaskedLMModel(config, enhanced_mask_decoder=origin.get("enhanced_mask_decoder", True))
    missing = load_weights(network, path)
    if missing:
        raise CheckpointError(f"{path} lacks {missing[0]}; export the run again with tools/export.py --part generator")
    tokenizer = Tokenizer.load(path)
    tokenizer.check_fits(config.vocab_size)
    return CausalLM(network.eval(), tokenizer, origin.get("max_seq_length", config.max_position_embeddings))
