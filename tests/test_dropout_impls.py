"""Every registered dropout implementation against the reference ("eager", `F.dropout`; model/dropout.py): the
statistics of the mask, the scaling and the gradient, seeding, and that the config key switches every dropout of
the hidden states."""

import pytest
import torch

from debertav3.model import implementations
from debertav3.model.backbone import Encoder
from debertav3.model.config import ModelConfig
from debertav3.model.dropout import Dropout

DROPOUT = list(implementations.NAMES["dropout"])


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("impl", DROPOUT)
def test_dropout_keeps_at_the_rate_scales_and_passes_the_masked_gradient(impl, p):
    """Keep fraction within 5 binomial standard deviations of 1 - p; kept values x / (1 - p), dropped 0; x's
    gradient is the mask times 1 / (1 - p); eval and p = 0 are the identity."""
    n = 1 << 20
    drop = Dropout(p, impl)
    x = (torch.rand(n) + 0.5).requires_grad_()  # no zeros, so a zero output means dropped
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    grad_out = torch.randn(n)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    assert torch.allclose(grad, grad_out * kept / (1 - p))
    assert drop.eval()(x) is x and Dropout(0.0, impl)(x) is x


@pytest.mark.parametrize("impl", DROPOUT)
def test_dropout_mask_follows_manual_seed(impl):
    drop, x = Dropout(0.3, impl), torch.randn(4096)
    torch.manual_seed(1)
    first, second = drop(x), drop(x)
    torch.manual_seed(1)
    assert torch.equal(drop(x), first) and not torch.equal(first, second)


def test_cpu_bits_drops_at_its_16_bit_rate_in_every_lane():
    """cpu_bits drops with probability round(p * 2^16) / 2^16, in each of the four 16-bit lanes of a random word
    (within 5 binomial standard deviations), also for an element count that is not a multiple of 4."""
    from debertav3.ops.dropout import keep_mask

    p, n = 0.1, (1 << 20) + 3
    torch.manual_seed(0)
    keep = keep_mask((n,), p)
    rate = round(p * 65536) / 65536
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert abs((keep == 0).float().mean().item() - rate) < 5 * (rate * (1 - rate) / n) ** 0.5
    for lane in range(4):
        lane_rate = (keep[lane::4] == 0).float().mean().item()
        assert abs(lane_rate - rate) < 5 * (rate * (1 - rate) / (n // 4)) ** 0.5


@pytest.mark.parametrize("impl", DROPOUT)
def test_dropout_impl_switches_every_dropout_of_the_hidden_states(impl):
    config = ModelConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=48, dropout_impl=impl)
    encoder = Encoder(config)
    dropouts = [module for module in encoder.modules() if isinstance(module, Dropout)]
    assert {module.impl for module in dropouts} == {impl}
    assert len(dropouts) == 3 * config.num_hidden_layers  # relative table, attention output, feed-forward output
