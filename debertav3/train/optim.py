"""AdamW with no decay on biases and LayerNorm, linear warmup then linear decay (DeBERTaV3 paper, BERT), and the
learning rate chosen for the global batch (`resolve_lr`; the rule and its sources: docs/configuration.md,
"Learning rate and batch size")."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import Config, OptimConfig


def tokens_per_step(cfg: Config, num_processes: int) -> int:
    """Tokens in one optimizer step's global batch: processes x per-process batch x accumulation x block length."""
    return cfg.train.batch_size * num_processes * cfg.train.gradient_accumulation_steps * cfg.data.max_seq_length


def scaled_lr(cfg: OptimConfig, tokens: int) -> float:
    """The peak lr for a global batch of `tokens` tokens: `cfg.lr` as it is (`lr_scaling` none), or `cfg.lr` times
    sqrt(tokens / lr_reference_tokens), at most `cfg.lr` (sqrt).

    The square-root rule keeps AdamW's update noise constant as the batch shrinks (Malladi et al. 2022, "On the
    SDEs and Scaling Rules for Adaptive Gradient Algorithms"); the cap keeps the lr within what the reference
    point was measured at."""
    if cfg.lr_scaling == "none":
        return cfg.lr
    return cfg.lr * min(1.0, math.sqrt(tokens / cfg.lr_reference_tokens))


def resolve_lr(cfg: Config, num_processes: int) -> tuple[Config, str]:
    """(a copy of `cfg` whose `optim.lr` is the one to train at, with `lr_scaling` none; how it was chosen).

    The copy is the run's resolved config, what config.yaml records: loaded again it trains at the same lr."""
    optim, tokens = cfg.optim, tokens_per_step(cfg, num_processes)
    lr = scaled_lr(optim, tokens)
    if optim.lr_scaling == "none":
        rule = "optim.lr"
    else:
        capped = ", capped at optim.lr" if tokens > optim.lr_reference_tokens else ""
        rule = (f"optim.lr_scaling=sqrt: {optim.lr:g} x sqrt({tokens:,} / {optim.lr_reference_tokens:,} tokens per "
                f"step){capped}; set optim.lr to choose it")
    resolved = copy.deepcopy(cfg)  # not dataclasses.replace: that would validate, and warn, a second time
    resolved.optim.lr, resolved.optim.lr_scaling = lr, "none"
    return resolved, rule


def discriminator_owned(model: nn.Module) -> set[int]:
    """ids of the parameters the discriminator owns: its own and GDES's E_Delta. The rest, the generator's,
    include under es the one shared table (the generator owns it, as in the official code)."""
    discriminator = getattr(model, "discriminator", None)
    owned = set() if discriminator is None else {id(p) for p in discriminator.parameters()}
    if getattr(model, "embedding_delta", None) is not None:
        owned.add(id(model.embedding_delta))
    return owned


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{"generator": [...], "discriminator": [...]}, the trainable parameters each network owns
    (`discriminator_owned`); parameters() yields a shared (ES) table once."""
    owned = discriminator_owned(model)
    parts: dict[str, list[nn.Parameter]] = {"generator": [], "discriminator": []}
    for param in model.parameters():
        if param.requires_grad:
            parts["discriminator" if id(param) in owned else "generator"].append(param)
    return parts


def parameter_groups(params: list[nn.Parameter], weight_decay: float, owned_by_discriminator: set[int],
                     discriminator_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on matrices and embedding tables only: 1-D tensors (biases, LayerNorm) are not decayed.

    Each group carries `lr_scale`: `discriminator_lr_scale` for the parameters in `owned_by_discriminator`, 1 for
    the rest.
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for param in params:
        scale = discriminator_lr_scale if id(param) in owned_by_discriminator else 1.0
        groups.setdefault((param.dim() >= 2, scale), []).append(param)
    # Decayed groups first, the unscaled before the scaled: with a scale of 1 these are a single-lr run's two groups,
    # and group 0 always carries the base lr (what the trainer logs).
    order = sorted(groups, key=lambda key: (not key[0], key[1] != 1.0))
    return [{"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]}
            for key in order]


def _adamw(params: list[nn.Parameter], cfg: OptimConfig, owned_by_discriminator: set[int]) -> torch.optim.Optimizer:
    """AdamW over `params`; the fused kernel (one pass over each tensor instead of a dozen) on CPU and CUDA."""
    groups = [{**group, "lr": cfg.lr * group["lr_scale"]}
              for group in parameter_groups(params, cfg.weight_decay, owned_by_discriminator,
                                            cfg.discriminator_lr_scale)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def build_optimizers(model: nn.Module, cfg: OptimConfig, schedule: str = "joint") -> dict[str, torch.optim.Optimizer]:
    """{"joint": one AdamW over every parameter} or, for the decoupled schedule, {"generator": ...,
    "discriminator": ...}, one AdamW over each network's parameters (`split_parameters`): the official code's two
    trainers. AdamW's state is per parameter, so the two differ from the one only in what their step clips."""
    owned = discriminator_owned(model)
    if schedule == "joint":  # in the order of model.parameters(), which a checkpoint's optimizer state follows
        return {"joint": _adamw([p for p in model.parameters() if p.requires_grad], cfg, owned)}
    return {name: _adamw(params, cfg, owned) for name, params in split_parameters(model).items()}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The joint schedule's one AdamW over every parameter of `model`."""
    return build_optimizers(model, cfg)["joint"]


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """lr(t) = lr * t / warmup for t < warmup, then decays linearly to 0 at `total_steps`."""
    warmup = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
