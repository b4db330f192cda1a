"""Scale-invariant fine-tuning (SiFT): DeBERTa paper section 4, official DeBERTa/sift/sift.py.

Virtual adversarial training on the *normalised* word embeddings, whose scale varies wildly between words and
models; perturbing a standardised vector makes one perturbation size fit all of them. For a batch with clean
logits z:

    x_hat   = (x - mean(x)) / std(x)     x the input of the embedding LayerNorm (word embeddings, summed)
    delta_0 ~ N(0, init^2), clipped to +-2 init
    delta   = delta_0 + step * g / max|g|   g = d D(f(x_hat + delta_0), sg(z)) / d delta_0, max over the hidden axis
    R       = D(f(x_hat + delta), z)         added to the task loss as  weight * R

D is the symmetric KL divergence KL(p||q) + KL(q||p) between the predicted distributions (classification) or the
squared error (regression, one output). As in the official code, the perturbed vector enters the model's own
embedding LayerNorm (a forward pre-hook): LayerNorm(standardise(x)) = LayerNorm(x) up to its epsilon, so with a
zero perturbation the model computes exactly what it computes without the hook, and the perturbation lives where
every token has unit scale, before the learned gain. The clean pass is untouched. Two further forward passes and
one backward pass to the perturbation make a SiFT step about three times the cost of a plain one.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def symmetric_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(p||q) + KL(q||p) = sum_c (p_c - q_c)(log p_c - log q_c)."""
    log_p, log_q = F.log_softmax(logits.float(), -1), F.log_softmax(target.float(), -1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1).mean()


def squared_error(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.float(), target.float())


class SiFT:
    """The SiFT regulariser around `layer_norm`, the model's embedding LayerNorm (`deberta.embeddings.LayerNorm`).

    `init` and `step` default to the official `PerturbationLayer`'s init_perturbation and learning_rate.
    """

    def __init__(self, layer_norm: nn.LayerNorm, regression: bool = False, init: float = 1e-2, step: float = 1e-4):
        self.layer_norm, self.init, self.step = layer_norm, init, step
        self.divergence = squared_error if regression else symmetric_kl

    @contextlib.contextmanager
    def perturbed(self, delta: Callable[[torch.Tensor], torch.Tensor]):
        """Within the block, the LayerNorm sees standardise(x) + delta(x) instead of x."""
        norm = self.layer_norm

        def pre_hook(module, args):
            x = args[0]
            return (F.layer_norm(x, norm.normalized_shape, eps=norm.eps) + delta(x).to(x.dtype),) + args[1:]

        handle = norm.register_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            handle.remove()

    def initial_delta(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, device=x.device) * self.init
        return noise.clamp_(-2 * self.init, 2 * self.init).requires_grad_()

    def __call__(self, outputs: Callable[[], torch.Tensor], clean: torch.Tensor) -> torch.Tensor:
        """R for one batch: `outputs()` runs the model on the batch and returns its logits, `clean` the unperturbed
        logits of the same batch (gradients flow into both, as in the official code)."""
        start = {}

        def draw(x: torch.Tensor) -> torch.Tensor:
            start["delta"] = self.initial_delta(x)
            return start["delta"]

        with self.perturbed(draw):
            divergence = self.divergence(outputs(), clean.detach())
        # Only the perturbation's gradient is wanted: autograd.grad leaves the parameters' .grad untouched.
        grad, = torch.autograd.grad(divergence, start["delta"])
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        delta = (start["delta"] + self.step * grad / (grad.abs().amax(-1, keepdim=True) + 1e-6)).detach()
        with self.perturbed(lambda x: delta):
            return self.divergence(outputs(), clean)
