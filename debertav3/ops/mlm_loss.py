"""The "chunked" `mlm_loss` implementation: the generator's vocabulary step in row chunks, its gradient formed in
forward (the reference is debertav3/objective/losses.py's `eager_vocabulary_loss`; same contract, same values).

For the N prediction slots h [N, HD] and the tied table E [V, HD]:
    logits = h E^T + b,  p = softmax(logits)
    L_MLM  = sum_n -log p[n, y_n] / denominator          dL/dlogits = (p - onehot(y)) / denominator
    replacement ~ softmax(logits / T) with special tokens removed (debertav3.objective.sampling, ELECTRA sec. 3.1)
A slot whose target is -100 (one that pads a row) has no loss and no gradient.

Autograd over these ops keeps the [N, V] logits and builds several more [N, V] tensors (log-softmax, its
gradient, the sampling softmax). Here rows go through in chunks of at most `CHUNK_BYTES` of logits, each chunk's
gradient formed while its probabilities are in cache, and no [N, V] tensor outlives its chunk: forward returns the
loss with the gradients of h, E and b already computed, and backward only scales them. torch.compile does not
trace it: inside a compiled step the reference runs.
"""

from __future__ import annotations

import torch

from ..constants import IGNORE_INDEX
from ..model import implementations
from ..objective.losses import eager_vocabulary_loss
from ..objective.sampling import sample_tokens

# Logits per chunk: below glibc's default 32 MiB mmap ceiling, so the heap reuses a chunk's buffers; large enough
# that a typical batch's slots go in few chunks, as the [V, HD] gradient product is faster with more rows.
CHUNK_BYTES = 24 * 2 ** 20


class _ChunkedVocabularyLoss(torch.autograd.Function):
    """Returns (summed CE / denominator, correct argmax count, sampled ids); the last two carry no gradient."""

    @staticmethod
    def forward(ctx, h_NH, weight_VH, bias_V, targets_N, uniforms_N, denominator, temperature, special_ids,
                chunk_bytes):
        N, V = h_NH.shape[0], weight_VH.shape[0]
        want_grad = any(ctx.needs_input_grad[:3])
        grad_h = torch.empty_like(h_NH) if want_grad else None
        grad_w = grad_b = None
        loss = h_NH.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long, device=h_NH.device)
        sampled = torch.empty(N, dtype=torch.long, device=h_NH.device)
        chunks = -(-N // max(1, chunk_bytes // (4 * V)))
        rows = max(1, -(-N // max(chunks, 1)))  # chunks of equal size, not full ones and a short last one
        for start in range(0, N, rows):
            chunk = slice(start, min(start + rows, N))
            h, targets = h_NH[chunk], targets_N[chunk]
            counted = targets != IGNORE_INDEX
            safe = targets.clamp(min=0)[:, None]  # -100 read as token 0, then weighted out
            logits = torch.addmm(bias_V, h, weight_VH.t()).float()
            log_probs = torch.log_softmax(logits, -1)
            loss -= (log_probs.gather(-1, safe).squeeze(-1) * counted).sum()
            # argmax == target, read as "the target's logit is the row maximum": amax is a vectorised reduction.
            correct += ((logits.gather(-1, safe) >= logits.amax(-1, keepdim=True)).squeeze(-1) & counted).sum()
            probs = log_probs.exp_()  # p; log_probs is no longer needed
            sample_probs = probs if temperature == 1.0 else torch.softmax(logits / temperature, -1)
            sampled[chunk] = sample_tokens(sample_probs, uniforms_N[chunk], special_ids)
            if want_grad:
                grad_logits = probs  # (p - onehot(y)) at counted rows, 0 elsewhere; in place
                grad_logits[torch.arange(len(targets), device=targets.device), safe.squeeze(-1)] -= 1.0
                grad_logits.mul_(counted[:, None])
                grad_h[chunk] = (grad_logits.to(h.dtype) @ weight_VH).to(h.dtype)
                grad_w = _add_product(grad_w, grad_logits.t().to(h.dtype), h)
                grad_b = grad_logits.sum(0) if grad_b is None else grad_b.add_(grad_logits.sum(0))
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.save_for_backward(denominator)
        ctx.weight_dtype, ctx.bias_dtype = weight_VH.dtype, bias_V.dtype
        ctx.mark_non_differentiable(correct, sampled)
        return loss / denominator, correct, sampled

    @staticmethod
    def backward(ctx, grad_loss, _correct, _sampled):
        if ctx.grads is None:
            raise RuntimeError("the vocabulary loss was already backpropagated; it cannot retain its graph")
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        (denominator,) = ctx.saved_tensors
        # In place: these buffers belong to this graph alone.
        scale = grad_loss / denominator
        grads = [None if g is None else g.mul_(scale) for g in (grad_h, grad_w, grad_b)]
        return grads[0], grads[1].to(ctx.weight_dtype), grads[2].to(ctx.bias_dtype), *[None] * 6


def _add_product(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """total + a @ b in fp32, accumulated in place (no [V, HD] temporary) when the dtypes allow."""
    same_dtype = a.dtype == b.dtype == torch.float32 and not torch.is_autocast_enabled(a.device.type)
    if total is None:
        return a @ b if same_dtype else (a @ b).float()
    return total.addmm_(a, b) if same_dtype else total.add_(a @ b)


def chunked_vocabulary_loss(h_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor,
                            targets_N: torch.Tensor, uniforms_N: torch.Tensor, denominator: torch.Tensor,
                            temperature: float, special_ids: torch.Tensor, chunk_bytes: int = CHUNK_BYTES):
    """(L_MLM, MLM accuracy, sampled replacements [N]): the `mlm_loss` contract (debertav3/objective/losses.py).

    At most `chunk_bytes` of fp32 logits exist at a time. The graph can be backpropagated once (its gradients are
    buffers that backward scales in place); a second backward raises.
    """
    if torch.compiler.is_compiling():
        return eager_vocabulary_loss(h_NH, weight_VH, bias_V, targets_N, uniforms_N, denominator, temperature,
                                     special_ids)
    loss, correct, sampled = _ChunkedVocabularyLoss.apply(h_NH, weight_VH, bias_V, targets_N, uniforms_N,
                                                          denominator, temperature, special_ids, chunk_bytes)
    return loss, correct.float() / (targets_N != IGNORE_INDEX).sum().clamp(min=1), sampled


implementations.register("mlm_loss", "chunked", chunked_vocabulary_loss)
