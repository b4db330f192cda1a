"""AdamW with no decay on biases and LayerNorm, and linear warmup then linear decay (DeBERTaV3 paper, BERT)."""

from __future__ import annotations

import torch
from torch import nn

from .config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embedding tables only: 1-D tensors (biases, LayerNorm) are not decayed."""
    decay, no_decay = [], []
    for param in model.parameters():  # parameters() yields a shared (ES) table once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; the fused kernel (one pass over each tensor instead of a dozen) on CPU and CUDA."""
    return torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=True)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """lr(t) = lr * t / warmup for t < warmup, then decays linearly to 0 at `total_steps`."""
    warmup = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
