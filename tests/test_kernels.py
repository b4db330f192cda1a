"""The custom autograd functions against gradcheck and against the plain autograd composition they replace."""

import torch
import torch.nn.functional as F

from debertav3.model.attention import BiasedAttention, RelativeGather
from debertav3.model.backbone import ActivationLinear


def double(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.double, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_biased_attention_gradcheck_without_and_with_dropout_mask():
    q, k, v, bias = double(2, 3, 4, seed=1), double(2, 5, 4, seed=2), double(2, 5, 4, seed=3), double(2, 3, 5, seed=4)
    assert torch.autograd.gradcheck(lambda *t: BiasedAttention.apply(*t, 0.5, None, 1.0), (q, k, v, bias))
    keep = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(5)) >= 0.3
    assert torch.autograd.gradcheck(lambda *t: BiasedAttention.apply(*t, 0.5, keep, 0.7), (q, k, v, bias))


def test_biased_attention_equals_unfused_composition():
    q, k, v, bias = (double(6, 7, 8, seed=s).float().detach().requires_grad_() for s in range(4))
    bias = double(6, 7, 7, seed=9).float().detach().requires_grad_()
    keep = torch.rand(6, 7, 7, generator=torch.Generator().manual_seed(5)) >= 0.1
    ours = BiasedAttention.apply(q, k, v, bias, 0.25, keep, 0.9)
    reference = (torch.softmax(q @ k.transpose(1, 2) * 0.25 + bias, -1) * keep / 0.9) @ v
    grad = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (q, k, v, bias), grad)
    expected = torch.autograd.grad(reference, (q, k, v, bias), grad)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))


def test_relative_gather_gradcheck():
    table = double(2, 3, 6)
    index = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(0)).expand(2, 3, 4)
    assert torch.autograd.gradcheck(lambda t: RelativeGather.apply(t, index), (table,))


def test_activation_linear_gradcheck():
    pre, weight, bias = double(3, 5, 8, seed=1), double(4, 8, seed=2), double(4, seed=3)
    assert torch.autograd.gradcheck(lambda *t: ActivationLinear.apply(*t, F.gelu), (pre, weight, bias))
