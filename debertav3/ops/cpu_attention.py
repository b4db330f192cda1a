"""The "cpu_fused" attention implementation: disentangled attention as one autograd function for the CPU.

    scores(i, j) = q_i . k_j * scale + c2p[i, idx(i, j)] + p2c[j, idx(i, j)]     (DeBERTa eq. 4, tables pre-scaled)
    probs = softmax(scores with padded keys (and, causal, keys j > i) at -inf),  context = dropout(probs) v

On a CPU every [N, Lq, Lk] tensor is a pass over memory and, above glibc's mmap threshold, fresh pages to fault in.
Autograd over the separate ops allocates about ten of them per layer forward and backward (gathers, add, mask,
scores, softmax, dropout mask and its product, each gradient); this function builds the scores in one buffer, keeps
only the probabilities and the dropped-out probabilities for backward, folds the dropout and score scales into the
products with v, k and q (baddbmm's alpha), and hands the relative tables their gradients by scatter-add (index_add
for p2c). Where no distance within reach is bucketed (L <= 130 for v3), the position terms are read and their
gradients written through strided band views instead (`band_view`), with no index at all, and each block of 32 rows
is multiplied only against the table rows it reaches. PyTorch's fused CPU attention cannot be used in training: it
takes neither a bias with a gradient nor dropout.

Layout: head-major, N = H * B, so that the products against the relative tables are one matrix per head.
`cpu_fused_attention` ties these together behind the reference core's contract
(`debertav3.model.attention.eager_attention`; tests/test_attention_impls.py holds it there): the projections stay
in the module. Its probabilities' dropout draws the masks of the CPU dropout (`dropout.keep_mask`: 16-bit levels
of fast random words, `torch.manual_seed` reproducible). Under torch.compile, which does not trace this function,
the reference core runs instead.
"""

from __future__ import annotations

import functools

import torch

from ..model import implementations
from ..model.attention import causal_exclusion, eager_attention
from .dropout import keep_mask

BAND_BLOCK = 32  # rows per block of the band layout (`band_view`)


class DisentangledAttention(torch.autograd.Function):
    """context [N, Lq, D] from q [N, Lq, D], k and v [N, Lk, D] and the relative products.

    c2p_table [H, B, Lq, R] = q . pos_key^T and p2c_table [H, B, Lk, R] = k . pos_query^T (either may be None),
    idx [Lq, Lk] or [B, Lq, Lk] indexes their last dimension; or idx is None and the tables are band-layout
    products [H, K, B, T, W] (`band_view`, `band_table_rows`);
    key_padding_mask [B, Lk] is True at real tokens; causal excludes keys j > i as well; keep_prob = 1 - p;
    keep [N, Lq, Lk] fp32 0 / 1 (0 where dropped), or None to draw the mask here (`dropout.keep_mask`) when
    keep_prob < 1, into the buffer the p2c read leaves free where there is one. The function takes keep's buffer
    over (it ends up holding the dropped-out probabilities): one [N, Lq, Lk] tensor fewer to allocate and fault in.
    """

    @staticmethod
    def forward(ctx, q, k, v, c2p_table, p2c_table, idx, key_padding_mask, scale: float, keep, keep_prob: float,
                causal: bool = False):
        N, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
        B = key_padding_mask.shape[0]
        H = N // B
        acc = torch.promote_types(q.dtype, torch.float32)  # scores and softmax in at least fp32 (official code)
        scores_HBQK, spare = _position_scores(c2p_table, p2c_table, idx, (H, B, Lq, Lk), acc, q.device)
        if not key_padding_mask.all():
            scores_HBQK.masked_fill_(~key_padding_mask[None, :, None, :], torch.finfo(acc).min)
        if causal:  # excluded scores never change the probabilities, so backward needs nothing more
            scores_HBQK.masked_fill_(causal_exclusion(Lq, Lk, q.device), torch.finfo(acc).min)
        scores = scores_HBQK.view(N, Lq, Lk).baddbmm_(q.to(acc), k.to(acc).transpose(1, 2), alpha=scale)
        # In place (softmax's out= overload on its own input, safe row by row): no fresh [N, Lq, Lk] tensor.
        probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        del scores_HBQK
        if keep is None and keep_prob < 1.0:
            keep = keep_mask((N, Lq, Lk), 1.0 - keep_prob, None if spare is None else spare.view(N, Lq, Lk))
        del spare
        if keep is None:
            dropped = probs
        else:
            dropped = keep.mul_(probs) if keep.dtype == probs.dtype else probs * keep
        context = _scaled_bmm(dropped.to(v.dtype), v, 1.0 if keep is None else 1.0 / keep_prob)
        # The dropped probabilities are saved instead of the mask: backward then needs no mask (see there).
        ctx.save_for_backward(q, k, v, probs, None if keep is None else dropped, idx)
        ctx.scale, ctx.keep_prob, ctx.saved_batch = scale, keep_prob, B
        ctx.tables = [None if t is None else (t.shape, t.dtype) for t in (c2p_table, p2c_table)]
        return context

    @staticmethod
    def backward(ctx, grad_context):
        q, k, v, probs, dropped, idx = ctx.saved_tensors
        acc = probs.dtype
        dropout_scale = 1.0 if dropped is None else 1.0 / ctx.keep_prob  # d context / d (dropped probs v)
        # P^T g and G^T q straight into [N, L, D]: bmm takes a transposed operand as it is, and the head-major
        # layout wants these gradients contiguous (a transposed result would be copied on the way).
        kept = probs if dropped is None else dropped
        grad_v = _scaled_bmm(kept.to(v.dtype).transpose(1, 2), grad_context.to(v.dtype), dropout_scale)
        grad_dropped = _scaled_bmm(grad_context.to(acc), v.to(acc).transpose(1, 2), dropout_scale)
        if dropped is None:
            grad_scores = torch._softmax_backward_data(grad_dropped, probs, -1, acc)
        else:
            # Softmax backward through d = p * m (m the 0 / 1 mask), G = dL/dd: dL/dp = G m, so
            # dL/dscores = p * (G m - sum(p G m)) = t - p * sum(t) with t = d * G, since p m = d.
            t = grad_dropped.mul_(dropped)
            grad_scores = t.addcmul_(probs, t.sum(-1, keepdim=True), value=-1.0)
        del grad_dropped
        grad_q = _scaled_bmm(grad_scores, k.to(acc), ctx.scale).to(q.dtype)
        grad_k = _scaled_bmm(grad_scores.transpose(1, 2), q.to(acc), ctx.scale).to(k.dtype)
        N, Lq, Lk = grad_scores.shape
        B = ctx.saved_batch
        grad_HBQK = grad_scores.view(N // B, B, Lq, Lk)
        c2p, p2c = ctx.tables
        grad_c2p = grad_p2c = None
        # The adjoint of the reads: each score's gradient is summed into the table entry it was read from.
        if idx is None:  # band layout: the adjoint of a strided read is a strided write into zeros
            grad_c2p, grad_p2c = (None if table is None else _band_gradient(grad_HBQK, table[0], term)
                                  for table, term in ((c2p, "c2p"), (p2c, "p2c")))
        else:
            grad_c2p, grad_p2c = (None if table is None else _term_gradient(grad_HBQK, table[0], idx, term)
                                  for table, term in ((c2p, "c2p"), (p2c, "p2c")))
        grad_c2p = None if c2p is None else grad_c2p.to(c2p[1])
        grad_p2c = None if p2c is None else grad_p2c.to(p2c[1])
        return grad_q, grad_k, grad_v, grad_c2p, grad_p2c, None, None, None, None, None, None


def _scaled_bmm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * (a @ b) with the scale inside the product (baddbmm with beta 0 ignores its input), not a pass."""
    return torch.bmm(a, b) if alpha == 1.0 else torch.baddbmm(a.new_empty(()), a, b, beta=0.0, alpha=alpha)


def band_blocks(length: int) -> int:
    """Row blocks of the band layout at this length: L / BAND_BLOCK where that divides evenly, else 1."""
    return length // BAND_BLOCK if length % BAND_BLOCK == 0 else 1


@functools.lru_cache(maxsize=16)
def band_table_rows(length: int, blocks: int, term: str) -> torch.Tensor:
    """[blocks, W] rows of the unbucketed relative table (idx(i, j) = i - j + L - 1) that each block multiplies.

    Block k holds rows t = 0..T-1 of the term's own axis (queries i = kT + t for c2p, keys j = kT + t for p2c),
    T = L / blocks. Its column u holds the other index o = u - (T - 1) + t, so the table row is
    i - j + L - 1 = kT + T + L - 2 - u for c2p and u - T + L - kT for p2c, for u < L + T - 1. W rounds L + T - 1 up
    to a multiple of 16, for products on aligned rows; the extra columns repeat an edge row and no score reads
    them.
    """
    T = length // blocks
    k, u = torch.arange(blocks)[:, None] * T, torch.arange(-(-(length + T - 1) // 16) * 16)[None, :]
    rows = k + T + length - 2 - u if term == "c2p" else u - T + length - k
    return rows.clamp_(0, 2 * length - 2)


def band_view(table_HKBTW: torch.Tensor, term: str) -> torch.Tensor:
    """The term as a [H, B, K, T, K, T] view (the [H, B, L, L] scores with both axes cut into K blocks of T) of
    its contiguous band-layout product [H, K, B, T, W], whose block k, row t, column T - 1 - t + o holds the term
    at (kT + t, o): element (k, t, column) sits at t * W + T - 1 - t + o = t * (W - 1) + T - 1 + o, plain strides.

    Reading the terms through this view replaces a gather per term, and with K > 1 blocks the products cover
    W = L + T - 1 table rows per block instead of all 2L - 1 (`band_table_rows`).
    """
    H, K, B, T, W = table_HKBTW.shape
    s_h, s_k, s_b = table_HKBTW.stride()[:3]
    strides = (s_h, s_b, s_k, W - 1, T, 1) if term == "c2p" else (s_h, s_b, T, 1, s_k, W - 1)
    return table_HKBTW.as_strided((H, B, K, T, K, T), strides, table_HKBTW.storage_offset() + T - 1)


def _band_gradient(grad_HBQK: torch.Tensor, table_shape: torch.Size, term: str) -> torch.Tensor:
    """The adjoint of reading `term` through `band_view`: the score gradients written into a zero table."""
    grad_table = grad_HBQK.new_zeros(table_shape)
    band = band_view(grad_table, term)
    band.copy_(grad_HBQK.view(band.shape))
    return grad_table


def is_band_index(idx: torch.Tensor | None, rows: int) -> bool:
    """Whether the index is i - j + L - 1 over a 2L - 1 row table, so the band layout applies."""
    if idx is None or idx.dim() != 2 or idx.shape[0] != idx.shape[1] or rows != 2 * idx.shape[0] - 1:
        return False
    return torch.equal(idx, _band_index(idx.shape[0]).to(idx.device))


@functools.lru_cache(maxsize=8)
def _band_index(length: int) -> torch.Tensor:
    return torch.arange(length)[:, None] - torch.arange(length)[None, :] + length - 1


def _position_scores(c2p_table, p2c_table, idx, shape_HBQK, acc, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(c2p + p2c as a new [H, B, Lq, Lk] tensor of dtype acc (zeros when both terms are off), a spare tensor of
    the same shape and dtype that is no longer needed, or None)."""
    if c2p_table is None and p2c_table is None:
        return torch.zeros(shape_HBQK, dtype=acc, device=device), None
    if idx is None:
        terms = [band_view(t.to(acc).contiguous(), name) for t, name in ((c2p_table, "c2p"), (p2c_table, "p2c"))
                 if t is not None]
        out = torch.empty(shape_HBQK, dtype=acc, device=device)
        out_blocks = out.view(terms[0].shape)
        torch.add(*terms, out=out_blocks) if len(terms) == 2 else out_blocks.copy_(terms[0])
        return out, None
    terms = [_read_term(t.to(acc), idx, name) for t, name in ((c2p_table, "c2p"), (p2c_table, "p2c"))
             if t is not None]
    if len(terms) == 1:  # contiguous: the scores are then built and softmaxed in place, row by row
        return terms[0].contiguous(), None
    return terms[0].add_(terms[1]), terms[1]


@functools.lru_cache(maxsize=16)
def _flat_index(idx_QK: torch.Tensor, rows: int, term: str) -> torch.Tensor:
    """For each score (i, j), the position of the entry it reads in one (head, sequence)'s flattened [L * R]
    table: row i, column idx(i, j) for c2p (a row per query), row j for p2c (a row per key). Cached by the index
    tensor's identity (tensors hash by id, and the cache keeps each one alive): `relative_index` returns one
    cached tensor per length, so this runs once per length and term."""
    Lq, Lk = idx_QK.shape
    row = torch.arange(Lq)[:, None] if term == "c2p" else torch.arange(Lk)[None, :]
    return (idx_QK + row.to(idx_QK.device) * rows).view(-1)


def _read_term(table_HBXR: torch.Tensor, idx: torch.Tensor, term: str) -> torch.Tensor:
    """c2p(i, j) = C[i, idx(i, j)] or p2c(i, j) = P[j, idx(i, j)] as [H, B, Lq, Lk].

    A shared [Lq, Lk] index reads the flattened table with one flat index for every (head, sequence), writing
    [i, j] in order, and its adjoint is an index_add; a per-sequence index (the enhanced mask decoder's) is read
    with a gather along the last dimension (for p2c: row j, added transposed), whose adjoint is a scatter-add.
    """
    H, B, X, R = table_HBXR.shape
    Lq, Lk = idx.shape[-2:]
    if idx.dim() == 2:
        flat = _flat_index(idx, R, term)
        return torch.gather(table_HBXR.reshape(H * B, X * R), 1, flat.expand(H * B, -1)).view(H, B, Lq, Lk)
    if term == "c2p":
        return torch.gather(table_HBXR, -1, idx.expand(H, B, Lq, Lk))
    return torch.gather(table_HBXR, -1, idx.transpose(-1, -2).expand(H, B, Lk, Lq)).transpose(-1, -2)


def _term_gradient(grad_HBQK: torch.Tensor, table_shape: torch.Size, idx: torch.Tensor, term: str) -> torch.Tensor:
    """The adjoint of `_read_term`: each score's gradient summed into the entry it was read from."""
    H, B, X, R = table_shape
    grad_table = grad_HBQK.new_zeros(table_shape)
    if idx.dim() == 2:
        grad_table.view(H * B, X * R).index_add_(1, _flat_index(idx, R, term), grad_HBQK.reshape(H * B, -1))
        return grad_table
    if term == "c2p":
        return grad_table.scatter_add_(-1, idx.expand(grad_HBQK.shape), grad_HBQK)
    grad_KQ = grad_HBQK.transpose(-1, -2)
    return grad_table.scatter_add_(-1, idx.transpose(-1, -2).expand(grad_KQ.shape), grad_KQ)


def against_table(x_HBLD: torch.Tensor, table_HRD: torch.Tensor) -> torch.Tensor:
    """x . table^T per head, [H, B, L, R]: one [B*L, D] x [D, R] product per head."""
    H, B, L, D = x_HBLD.shape
    return torch.bmm(x_HBLD.reshape(H, B * L, D), table_HRD.transpose(1, 2)).view(H, B, L, -1)


def against_band(x_HBLD: torch.Tensor, table_HRD: torch.Tensor, term: str) -> torch.Tensor:
    """The band-layout product [H, K, B, T, W] of `band_view`: for each head and block of T rows, x [B*T, D]
    against the W table rows the block reaches (`band_table_rows`), in that order."""
    H, B, L, D = x_HBLD.shape
    rows_KW = band_table_rows(L, band_blocks(L), term).to(x_HBLD.device)
    K, W = rows_KW.shape
    x_blocks = x_HBLD.view(H, B, K, L // K, D).transpose(1, 2).reshape(H * K, B * L // K, D)
    # index_select, not indexing: its backward is an index_add rather than index_put's accumulate.
    windows_HXD = torch.index_select(table_HRD, 1, rows_KW.view(-1))
    return torch.bmm(x_blocks, windows_HXD.view(H * K, W, D).transpose(1, 2)).view(H, K, B, L // K, W)


def cpu_fused_attention(q, k, v, pos_key, pos_query, rel_idx, key_padding_mask, scale, dropout_p, causal=False):
    """The attention core (`eager_attention`'s contract, context [B, H, Lq, D]) through `DisentangledAttention`:
    q, k, v copied head-major, the scale folded into the small relative tables, the position products in the
    band layout where the index allows it (else against the whole table)."""
    if torch.compiler.is_compiling():
        return eager_attention(q, k, v, pos_key, pos_query, rel_idx, key_padding_mask, scale, dropout_p, causal)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    q_HBQD, k_HBKD, v_HBKD = (x.transpose(0, 1).contiguous() for x in (q, k, v))
    tables = [None if t is None else t * scale for t in (pos_key, pos_query)]
    present = tables[0] if tables[0] is not None else tables[1]
    band = present is not None and is_band_index(rel_idx, present.shape[1])
    products = [None if table is None else (against_band(x, table, term) if band else against_table(x, table))
                for x, table, term in ((q_HBQD, tables[0], "c2p"), (k_HBKD, tables[1], "p2c"))]
    context = DisentangledAttention.apply(
        q_HBQD.view(H * B, Lq, D), k_HBKD.view(H * B, Lk, D), v_HBKD.view(H * B, Lk, D), *products,
        None if band else rel_idx, key_padding_mask, scale, None, 1.0 - dropout_p, causal)
    return context.view(H, B, Lq, D).transpose(0, 1)


implementations.register("attention", "cpu_fused", cpu_fused_attention)
