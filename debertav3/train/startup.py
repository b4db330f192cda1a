"""What a run says and writes before its first step: a short header on stdout, the full config in a file.

A run at scale is checked once at start-up and then left for days, so the header holds what decides its cost and
its outcome, in a dozen lines: the networks and their parameter counts, the global batch, the learning rate and
the rule that chose it, the precision and the processes. Every key goes to `<output_dir>/config.yaml` instead:
the resolved config (the lr it trains at, train/optim.py `resolve_lr`), which each checkpoint also keeps a copy of.
"""

from __future__ import annotations

from pathlib import Path

from ..objective.rtd import RTDModel
from .config import Config
from .optim import tokens_per_step

RUN_CONFIG = "config.yaml"
PRECISIONS = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}  # accelerate's names


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 'es' if noun.endswith('s') else 's'}"


def parameter_counts(model: RTDModel) -> dict[str, int]:
    """{"generator", "discriminator" (rtd only): each network's parameters without the word-embedding tables;
    "E_G", and "E_Delta" (gdes) or "E_D" (nes): each table's}. Under es the discriminator reads E_G."""
    tables = {"E_G": model.generator_embedding}
    if model.embedding_delta is not None:
        tables["E_Delta"] = model.embedding_delta
    elif model.discriminator is not None and model.embedding_sharing == "nes":
        tables["E_D"] = model.discriminator_embedding()
    in_tables = {id(table) for table in tables.values()}
    networks = {"generator": model.generator, "discriminator": model.discriminator}
    counts = {name: sum(p.numel() for p in network.parameters() if id(p) not in in_tables)
              for name, network in networks.items() if network is not None}
    return {**counts, **{name: table.numel() for name, table in tables.items()}}


def format_header(cfg: Config, model: RTDModel, lr_rule: str, precision: str, device: str, num_processes: int,
                  config_path: Path) -> str:
    """The lines a run prints before its first step (see the module docstring)."""
    counts = parameter_counts(model)
    train, rtd = cfg.train, cfg.objective == "rtd"
    label = {"mlm": "MLM network", "arlm": "causal LM", "mt": "MLM + ARLM"}.get(cfg.objective)
    networks = [("discriminator", model.discriminator), ("generator", model.generator)] if rtd else \
        [(label, model.generator)]
    sharing = f" with {cfg.rtd.embedding_sharing} embedding sharing" if rtd else ""
    lines = [f"pretraining {cfg.objective}{sharing} in {train.output_dir}"]
    for label, network in networks:
        size = counts["discriminator" if network is model.discriminator else "generator"]
        lines.append(f"  {label:<14} {network.config.hidden_size} x {_count(network.config.num_hidden_layers, 'layer')}"
                     f": {size:,} parameters without the word embeddings")
    width = model.generator_embedding.shape[1]
    tables = [f"{name} {cfg.model.vocab_size:,} x {width}" for name in counts if name.startswith("E_")]
    table_total = sum(count for name, count in counts.items() if name.startswith("E_"))
    lines.append(f"  {'embeddings':<14} {', '.join(tables)}: {table_total:,} parameters")
    sequences = train.batch_size * num_processes * train.gradient_accumulation_steps
    lines.append(f"  {'global batch':<14} {sequences:,} sequences of {cfg.data.max_seq_length} tokens, "
                 f"{tokens_per_step(cfg, num_processes):,} tokens per step ({num_processes} x {train.batch_size} x "
                 f"{train.gradient_accumulation_steps}: processes x train.batch_size x accumulation steps)")
    lines.append(f"  {'learning rate':<14} {cfg.optim.lr:.3g} ({lr_rule}); optim.warmup_steps="
                 f"{cfg.optim.warmup_steps:,}, train.max_steps={train.max_steps:,}")
    if rtd:
        lines.append(f"  {'schedule':<14} {schedule_line(cfg)}")
    if cfg.objective == "mt":
        lines.append(f"  {'tasks':<14} ARLM on {cfg.mt.arlm_fraction:.0%} of the steps, MLM on the others "
                     "(mt.arlm_fraction)")
    if not cfg.model.enhanced_mask_decoder:
        lines.append(f"  {'head':<14} reads the last layer (model.enhanced_mask_decoder=false)")
    if rtd and cfg.model.init_discriminator and not cfg.model.init_generator:
        lines.append(f"  {'generator':<14} {release_start_line(cfg)}")
    lines.append(f"  {'precision':<14} {PRECISIONS.get(precision, precision)} (train.mixed_precision="
                 f"{train.mixed_precision}) on {device}, {_count(num_processes, 'process')}")
    lines.append(f"  {'logging':<14} {', '.join(train.log_with) or 'none (train.log_with=[])'}")
    lines.append(f"  {'config':<14} {config_path} (every key)")
    return "\n".join(lines)


def schedule_line(cfg: Config) -> str:
    """How the two networks are stepped (rtd.schedule, rtd.generator_warmup_steps), in one line."""
    rtd = cfg.rtd
    if rtd.schedule == "joint":
        text = f"joint: one step on L_MLM + {rtd.rtd_weight:g} L_RTD (rtd.schedule=joint)"
    else:
        text = (f"decoupled: a generator step on L_MLM, then a discriminator step on {rtd.rtd_weight:g} L_RTD, "
                f"each clipped to {cfg.optim.max_grad_norm:g} (rtd.schedule=decoupled)")
    if rtd.generator_warmup_steps:
        text += f"; the generator alone for the first {rtd.generator_warmup_steps:,} steps"
    return text


def release_start_line(cfg: Config) -> str:
    """What a discriminator-only start does for the generator (model.generator_start, interop/hf.py)."""
    if cfg.model.generator_start == "release_embeddings":
        return ("not in model.init_discriminator: its word embeddings start as the release's E_D, its layers "
                "random (model.generator_start=release_embeddings)")
    return ("not in model.init_discriminator: random, the release's E_D kept as E_G + E_Delta "
            "(model.generator_start=random)")
