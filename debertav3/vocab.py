"""The generator's vocabulary step in row chunks: MLM cross-entropy, its gradient, accuracy and replacement sampling.

For the N masked rows h [N, HD] and the tied table E [V, HD]:
    logits = h E^T + b,  p = softmax(logits)
    L_MLM  = sum_n -log p[n, y_n] / denominator          dL/dlogits = (p - onehot(y)) / denominator
    replacement ~ softmax(logits / T) with special tokens removed (inverse CDF, one uniform per row)

Autograd over these ops keeps [N, V] logits and builds several more [N, V] tensors (log-softmax, its gradient, the
sampling softmax): 38 MB each for 300 rows of a 32k vocabulary, above glibc's 32 MiB mmap ceiling, so every one is
fresh pages to fault in. Here rows go through in chunks of at most `CHUNK_BYTES` of logits, and each chunk's
gradient is formed while its probabilities are in cache; forward returns the loss with the gradients of h, E and b
already computed, and backward only scales them.
"""

from __future__ import annotations

import torch

from .model.tied_table import TableGradient

CHUNK_BYTES = 24 * 2 ** 20  # logits per chunk: below glibc's 32 MiB mmap ceiling, so the heap reuses them; the ~300
# masked rows of a 2048-token batch go in 2 chunks, not 3: the [V, HD] gradient product has K = rows, and 150 rows
# run 1.2x faster than 99 (-1.5% of a seq-128 step)


def sample_tokens(probs_NV: torch.Tensor, uniforms_N: torch.Tensor, special_ids: torch.Tensor,
                  in_place: bool = False) -> torch.Tensor:
    """Inverse-CDF draw from each row of `probs_NV` with `special_ids` removed (ELECTRA sec. 3.1).

    Token i is drawn when cdf[i-1] < u * cdf[-1] <= cdf[i], u in (0, 1]: a token of zero probability (a special
    token) can never be drawn, and one uniform per row makes the draw independent of how rows are batched.
    With `in_place` the special columns of `probs_NV` (a tensor the caller owns) are zeroed for the draw and then
    restored, instead of zeroed in an [N, V] copy.
    """
    specials = special_ids[special_ids < probs_NV.shape[-1]]
    if not in_place:
        return _inverse_cdf(probs_NV.index_fill(-1, specials, 0.0), uniforms_N)
    saved = probs_NV.index_select(-1, specials)
    sampled = _inverse_cdf(probs_NV.index_fill_(-1, specials, 0.0), uniforms_N)
    probs_NV.index_copy_(-1, specials, saved)
    return sampled


def _inverse_cdf(probs_NV: torch.Tensor, uniforms_N: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The inverse-CDF draw of `sample_tokens` in two levels: the block of `block` tokens first (from block sums,
    one vectorised reduction over [N, V]), then the token inside it (a cumulative sum over [N, block]), instead of
    one sequential cumulative sum over all V. Each level takes the first index whose cdf reaches the threshold, and
    the threshold never exceeds the last cdf, so rounding can only ever land on a token of nonzero probability."""
    N, V = probs_NV.shape
    whole = V // block * block
    block_sums = probs_NV[:, :whole].reshape(N, -1, block).sum(-1)
    if whole < V:
        block_sums = torch.cat([block_sums, probs_NV[:, whole:].sum(-1, keepdim=True)], -1)
    block_cdf = block_sums.cumsum(-1)
    threshold = (uniforms_N.to(block_cdf.dtype) * block_cdf[:, -1]).unsqueeze(-1)
    chosen = torch.searchsorted(block_cdf, torch.minimum(threshold, block_cdf[:, -1:]))
    before = torch.where(chosen > 0, block_cdf.gather(-1, (chosen - 1).clamp_(min=0)), 0.0)
    columns = chosen * block + torch.arange(block, device=probs_NV.device)
    inside = probs_NV.gather(-1, columns.clamp(max=V - 1)).masked_fill_(columns >= V, 0.0).cumsum_(-1)
    offset = torch.searchsorted(inside, torch.minimum(threshold - before, inside[:, -1:]))
    return (columns.gather(-1, offset.clamp_(max=block - 1))).squeeze(-1)


class _ChunkedVocabularyLoss(torch.autograd.Function):
    """Returns (summed CE / denominator, correct argmax count, sampled ids); the last two carry no gradient."""

    @staticmethod
    def forward(ctx, h_NH, weight_VH, bias_V, targets_N, uniforms_N, denominator, temperature, special_ids,
                table_gradient):
        N, V = h_NH.shape[0], weight_VH.shape[0]
        want_grad = any(ctx.needs_input_grad[:3])
        grad_h = torch.empty_like(h_NH) if want_grad else None
        grad_w = grad_b = None
        loss = h_NH.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long, device=h_NH.device)
        sampled = torch.empty(N if uniforms_N is not None else 0, dtype=torch.long, device=h_NH.device)
        chunks = -(-N // max(1, CHUNK_BYTES // (4 * V)))
        rows = max(1, -(-N // max(chunks, 1)))  # equal chunks: 3 x 99 rows rather than 131 + 131 + 34
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
        ctx.denominator, ctx.table_gradient = denominator, table_gradient
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
        grad_weight = grad_w.to(ctx.weight_dtype)
        if ctx.table_gradient is not None:  # the input lookup of the same table adds its rows and returns the sum
            ctx.table_gradient.put(grad_weight)
            grad_weight = None
        return grads[0], grad_weight, grads[1].to(ctx.bias_dtype), None, None, None, None, None, None


def _add_product(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """total + alpha * a @ b in fp32, accumulated in place (no zero fill, no [V, HD] temporary) when the dtypes
    allow, alpha inside the product (addmm's alpha) rather than a pass of its own."""
    same_dtype = a.dtype == b.dtype == torch.float32 and not torch.is_autocast_enabled(a.device.type)
    if total is None:
        return torch.addmm(a.new_empty(()), a, b, beta=0.0, alpha=alpha) if same_dtype else (a @ b).float() * alpha
    if same_dtype:
        return total.addmm_(a, b, alpha=alpha)
    return total.add_(a @ b, alpha=alpha)


def vocabulary_loss(h_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor, targets_N: torch.Tensor,
                    uniforms_N: torch.Tensor, denominator, temperature: float, special_ids: torch.Tensor,
                    table_gradient: TableGradient | None = None):
    """(L_MLM, MLM accuracy, sampled replacements [N]) for masked rows `h_NH` against the tied table `weight_VH`.

    `denominator` divides the summed cross-entropy (the trainer passes the global masked count); with
    `uniforms_N` None nothing is sampled (an empty tensor is returned in its place). With `table_gradient`, the
    table's gradient is left there for the input lookup of the same table (`model.tied_table`) to complete.
    """
    loss, correct, sampled = _ChunkedVocabularyLoss.apply(h_NH, weight_VH, bias_V, targets_N, uniforms_N,
                                                          denominator, temperature, special_ids, table_gradient)
    return loss, correct.float() / max(targets_N.numel(), 1), sampled
