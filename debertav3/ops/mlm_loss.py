"""The "chunked" `mlm_loss` implementation: the generator's vocabulary step in row chunks, its gradient formed in
forward (the reference is debertav3/objective/losses.py's `eager_vocabulary_loss`; same contract, same values).

For the N masked rows h [N, HD] and the tied table E [V, HD]:
    logits = h E^T + b,  p = softmax(logits)
    L_MLM  = sum_n -log p[n, y_n] / denominator          dL/dlogits = (p - onehot(y)) / denominator
    replacement ~ softmax(logits / T) with special tokens removed (debertav3.objective.sampling, ELECTRA sec. 3.1)

Autograd over these ops keeps the [N, V] logits and builds several more [N, V] tensors (log-softmax, its
gradient, the sampling softmax). Here rows go through in chunks of at most `CHUNK_BYTES` of logits, each chunk's
gradient formed while its probabilities are in cache, and no [N, V] tensor outlives its chunk: forward returns the
loss with the gradients of h, E and b already computed, and backward only scales them. The implementation also
pairs the table's input lookup with its gradient (`tied_lookup`, ops/tied_table.py).
"""

from __future__ import annotations

import torch

from ..model import implementations
from ..objective.sampling import sample_tokens
from .tied_table import TiedLookup

# Logits per chunk: below glibc's default 32 MiB mmap ceiling, so the heap reuses a chunk's buffers; large enough
# that a typical batch's masked rows go in few chunks, as the [V, HD] gradient product is faster with more rows.
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
        sampled = torch.empty(N if uniforms_N is not None else 0, dtype=torch.long, device=h_NH.device)
        chunks = -(-N // max(1, chunk_bytes // (4 * V)))
        rows = max(1, -(-N // max(chunks, 1)))  # chunks of equal size, not full ones and a short last one
        for start in range(0, N, rows):
            chunk = slice(start, min(start + rows, N))
            h, targets = h_NH[chunk], targets_N[chunk]
            logits = torch.addmm(bias_V, h, weight_VH.t()).float()
            log_probs = torch.log_softmax(logits, -1)
            target_log_probs = log_probs.gather(-1, targets[:, None])
            loss -= target_log_probs.sum()
            # argmax == target, read as "the target's logit is the row maximum": amax is a vectorised reduction.
            correct += (logits.gather(-1, targets[:, None]) >= logits.amax(-1, keepdim=True)).sum()
            probs = log_probs.exp_()  # p; log_probs is no longer needed
            if uniforms_N is not None:
                sample_probs = probs if temperature == 1.0 else torch.softmax(logits / temperature, -1)
                sampled[chunk] = sample_tokens(sample_probs, uniforms_N[chunk], special_ids, in_place=True)
            if want_grad:
                grad_logits = probs  # p - onehot(y) in place; the 1 / denominator is applied to the small results
                grad_logits[torch.arange(len(targets), device=targets.device), targets] -= 1.0
                grad_h[chunk] = (grad_logits.to(h.dtype) @ weight_VH).to(h.dtype)
                # [V, HD]: 1 / denominator rides on the product, saving backward a pass over the table's size
                grad_w = _add_product(grad_w, grad_logits.t().to(h.dtype), h, 1.0 / denominator)
                grad_b = grad_logits.sum(0) if grad_b is None else grad_b.add_(grad_logits.sum(0))
        if want_grad and grad_w is None:  # no masked rows in this micro-batch
            grad_w = torch.zeros_like(weight_VH, dtype=torch.float32)
            grad_b = torch.zeros_like(bias_V, dtype=torch.float32)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.denominator = denominator
        # Reading grad_loss in backward is free on the CPU, but not traceable by torch.compile.
        ctx.read_grad_loss = h_NH.device.type == "cpu" and not torch.compiler.is_compiling()
        ctx.weight_dtype, ctx.bias_dtype = weight_VH.dtype, bias_V.dtype
        ctx.mark_non_differentiable(correct, sampled)
        return loss / denominator, correct, sampled

    @staticmethod
    def backward(ctx, grad_loss, _correct, _sampled):
        if ctx.grads is None:
            raise RuntimeError("the vocabulary loss was already backpropagated; it cannot retain its graph")
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        # In place: these buffers belong to this graph alone. grad_w is already divided by the denominator, and
        # grad_loss is 1 in training (L = L_MLM + 50 L_RTD), when the pass over the [V, HD] table is skipped.
        scale = grad_loss / ctx.denominator
        grads = [g.mul_(scale) if g is not None else None for g in (grad_h, grad_b)]
        if not ctx.read_grad_loss or grad_loss.item() != 1.0:
            grad_w.mul_(grad_loss)
        return grads[0], grad_w.to(ctx.weight_dtype), grads[1].to(ctx.bias_dtype), None, None, None, None, None, None


def _add_product(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """total + alpha * a @ b in fp32, accumulated in place (no zero fill, no [V, HD] temporary) when the dtypes
    allow, alpha inside the product (addmm's alpha) rather than a pass of its own."""
    same_dtype = a.dtype == b.dtype == torch.float32 and not torch.is_autocast_enabled(a.device.type)
    if total is None:
        return torch.addmm(a.new_empty(()), a, b, beta=0.0, alpha=alpha) if same_dtype else (a @ b).float() * alpha
    if same_dtype:
        return total.addmm_(a, b, alpha=alpha)
    return total.add_(a @ b, alpha=alpha)


def chunked_vocabulary_loss(h_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor,
                            targets_N: torch.Tensor, uniforms_N: torch.Tensor | None, denominator, temperature: float,
                            special_ids: torch.Tensor, chunk_bytes: int = CHUNK_BYTES):
    """(L_MLM, MLM accuracy, sampled replacements [N]): the `mlm_loss` contract (debertav3/objective/losses.py).

    At most `chunk_bytes` of fp32 logits exist at a time. The graph can be backpropagated once (its gradients are
    buffers that backward scales in place); a second backward raises.
    """
    loss, correct, sampled = _ChunkedVocabularyLoss.apply(h_NH, weight_VH, bias_V, targets_N, uniforms_N,
                                                          denominator, temperature, special_ids, chunk_bytes)
    return loss, correct.float() / max(targets_N.numel(), 1), sampled


chunked_vocabulary_loss.tied_lookup = TiedLookup
implementations.register("mlm_loss", "chunked", chunked_vocabulary_loss)
