"""The custom autograd functions against gradcheck and against the plain autograd composition they replace."""

import pytest
import torch

from debertav3.model.config import ModelConfig
from debertav3.model.attention import RelativePositions, log_bucket_position
from debertav3.ops.cpu_attention import DisentangledAttention, band_table_rows, is_band_index
from debertav3.ops.sdpa_attention import RelativeGather


def double(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.double, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def attention_inputs(H=2, B=2, Lq=3, Lk=5, D=4, R=6, per_sequence_index=False):
    q, k, v = double(H * B, Lq, D, seed=1), double(H * B, Lk, D, seed=2), double(H * B, Lk, D, seed=3)
    c2p, p2c = double(H, B, Lq, R, seed=4), double(H, B, Lk, R, seed=5)
    gen = torch.Generator().manual_seed(6)
    idx = torch.randint(0, R, (B, Lq, Lk) if per_sequence_index else (Lq, Lk), generator=gen)
    padding = torch.ones(B, Lk, dtype=torch.bool)
    padding[1, -2:] = False
    return q, k, v, c2p, p2c, idx, padding


def unfused_attention(q, k, v, c2p, p2c, idx, padding, scale, keep, keep_prob):
    """The same attention from plain autograd ops: gathers, additive bias, softmax, dropout."""
    H, B, Lq, R = c2p.shape
    Lk = k.shape[1]
    bias = torch.gather(c2p, -1, idx.expand(H, B, Lq, Lk))
    bias = bias + torch.gather(p2c, -1, idx.transpose(-1, -2).expand(H, B, Lk, Lq)).transpose(-1, -2)
    bias = bias.masked_fill(~padding[None, :, None, :], torch.finfo(q.dtype).min).reshape(H * B, Lq, Lk)
    probs = torch.softmax(q @ k.transpose(1, 2) * scale + bias, -1)
    return (probs if keep is None else probs * keep / keep_prob) @ v


@pytest.mark.parametrize("per_sequence_index", [False, True])
def test_disentangled_attention_gradcheck_without_and_with_drop_mask(per_sequence_index):
    q, k, v, c2p, p2c, idx, padding = attention_inputs(per_sequence_index=per_sequence_index)
    # keep.clone(): the function takes the mask's buffer over (it ends up holding the dropped probabilities)
    run = lambda keep, prob: lambda *t: DisentangledAttention.apply(  # noqa: E731
        *t, idx, padding, 0.5, None if keep is None else keep.clone(), prob)
    assert torch.autograd.gradcheck(run(None, 1.0), (q, k, v, c2p, p2c))
    keep = (torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(7)) >= 0.3).to(q.dtype)
    assert torch.autograd.gradcheck(run(keep, 0.7), (q, k, v, c2p, p2c))
    only_c2p = lambda *t: DisentangledAttention.apply(*t, None, idx, padding, 0.5, keep.clone(), 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(only_c2p, (q, k, v, c2p))


@pytest.mark.parametrize("term", ["c2p", "p2c"])
def test_one_position_term_with_per_sequence_index_equals_unfused_composition(term):
    """One position term read through a per-sequence index, as the enhanced mask decoder does with c2p or p2c
    alone (non-square: fewer queries than keys). The other term is absent, i.e. zero in the composition."""
    q, k, v, c2p, p2c, idx, padding = attention_inputs(H=2, B=2, Lq=3, Lk=7, D=4, R=9, per_sequence_index=True)
    tables = (c2p, None) if term == "c2p" else (None, p2c)
    ours = DisentangledAttention.apply(q, k, v, *tables, idx, padding, 0.5, None, 1.0)
    zero_filled = [torch.zeros_like(full) if table is None else table for table, full in zip(tables, (c2p, p2c))]
    reference = unfused_attention(q, k, v, *zero_filled, idx, padding, 0.5, None, 1.0)
    assert torch.allclose(ours, reference, atol=1e-12)


def test_disentangled_attention_equals_unfused_composition():
    inputs = attention_inputs(H=3, B=2, Lq=7, Lk=9, D=8, R=11, per_sequence_index=True)
    q, k, v, c2p, p2c = (t.float().detach().requires_grad_() for t in inputs[:5])
    idx, padding = inputs[5:]
    keep = (torch.rand(6, 7, 9, generator=torch.Generator().manual_seed(5)) >= 0.1).float()
    ours = DisentangledAttention.apply(q, k, v, c2p, p2c, idx, padding, 0.25, keep.clone(), 0.9)
    reference = unfused_attention(q, k, v, c2p, p2c, idx, padding, 0.25, keep, 0.9)
    grad = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (q, k, v, c2p, p2c), grad)
    expected = torch.autograd.grad(reference, (q, k, v, c2p, p2c), grad)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))


@pytest.mark.parametrize("blocks", [1, 3])
def test_band_layout_equals_the_indexed_composition_and_passes_gradcheck(blocks):
    """With idx None the tables are band-layout products: block k, row t, column u holds the full product's entry
    at table row band_table_rows[k, u]. That is the same attention as indexing the full products with
    i - j + L - 1, forward and backward (gradients reach the full tables through the block gather)."""
    H, B, L, D = 2, 2, 6, 4
    q, k, v = double(H * B, L, D, seed=1), double(H * B, L, D, seed=2), double(H * B, L, D, seed=3)
    c2p_full, p2c_full = double(H, B, L, 2 * L - 1, seed=4), double(H, B, L, 2 * L - 1, seed=5)
    idx = torch.arange(L)[:, None] - torch.arange(L)[None, :] + L - 1
    padding = torch.ones(B, L, dtype=torch.bool)
    padding[1, -2:] = False
    keep = (torch.rand(H * B, L, L, generator=torch.Generator().manual_seed(7)) >= 0.3).float()

    def blocked(full, term):  # [H, B, L, R] -> [H, K, B, T, W]
        rows_KW = band_table_rows(L, blocks, term)
        K, W = rows_KW.shape
        per_block = full.view(H, B, K, L // K, -1)
        return torch.gather(per_block, -1, rows_KW[:, None, :].expand(H, B, K, L // K, W)).transpose(1, 2)

    c2p, p2c = blocked(c2p_full, "c2p").contiguous(), blocked(p2c_full, "p2c").contiguous()
    ours = DisentangledAttention.apply(q, k, v, c2p, p2c, None, padding, 0.5, keep.clone(), 0.7)
    reference = unfused_attention(q, k, v, c2p_full, p2c_full, idx, padding, 0.5, keep, 0.7)
    grad = torch.randn_like(ours)
    assert torch.allclose(ours, reference, atol=1e-12)
    inputs = (q, k, v, c2p_full, p2c_full)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(reference, inputs, grad)):
        assert torch.allclose(a, b, atol=1e-12)
    c2p, p2c = c2p.detach().requires_grad_(), p2c.detach().requires_grad_()
    band = lambda c2p, p2c: lambda *t: DisentangledAttention.apply(  # noqa: E731
        *t[:3], c2p(t), p2c(t), None, padding, 0.5, keep.clone(), 0.7)
    assert torch.autograd.gradcheck(band(lambda t: t[3], lambda t: t[4]), (q, k, v, c2p, p2c))
    assert torch.autograd.gradcheck(band(lambda t: t[3], lambda t: None), (q, k, v, c2p))
    assert torch.autograd.gradcheck(band(lambda t: None, lambda t: t[3]), (q, k, v, p2c))


def test_band_index_detected_only_where_it_holds():
    positions = RelativePositions(ModelConfig(vocab_size=100))  # v3 attention: 256 buckets, a 512-row table
    outcomes = []
    for length in (7, 128, 130, 200, 512):
        distances = torch.arange(1 - length, length)
        unbucketed = torch.equal(log_bucket_position(distances, 256, 512), distances)
        idx, _, rows = positions.index(length, length)
        assert is_band_index(idx, rows) is unbucketed, length
        outcomes.append(unbucketed)
    assert outcomes[0] and outcomes[1] and not outcomes[-1]
    idx, _, rows = positions.index(16, 16)
    assert not is_band_index(idx[None].expand(2, 16, 16), rows)  # a per-sequence (EMD) index
    assert not is_band_index(idx.flip(0), rows)


def test_relative_gather_gradcheck():
    table = double(2, 3, 6)
    index = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(0)).expand(2, 3, 4)
    assert torch.autograd.gradcheck(lambda t: RelativeGather.apply(t, index), (table,))
