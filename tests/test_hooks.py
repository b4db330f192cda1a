"""Hooks and adapters on the attention projections take effect under every attention implementation.

The implementations compute only the attention core (model/implementations.py): every projection is a call of
its module, so the model's output with a hook and an adapter is the reference's with the same hook and adapter,
and differs from the output without them, on every path, with no warning.
"""

import warnings

import pytest
import torch
from torch import nn

from debertav3 import DebertaV3Model, preset
from debertav3.model import implementations

IMPLEMENTATIONS = list(implementations.NAMES["attention"])


class LowRankAdapter(nn.Module):
    """base(x) + x A^T B^T with a nonzero rank-2 update (LoRA's form)."""

    def __init__(self, base: nn.Linear, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.base = base
        self.down = nn.Parameter(torch.randn(2, base.in_features, generator=gen) * 0.3)
        self.up = nn.Parameter(torch.randn(base.out_features, 2, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.down.t() @ self.up.t()


def model(impl: str, state: dict | None = None) -> DebertaV3Model:
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=impl)
    torch.manual_seed(0)
    built = DebertaV3Model(cfg).eval()
    if state is not None:
        built.load_state_dict(state)
    return built


def hook_and_adapt_(m: DebertaV3Model) -> None:
    """Scale layer 0's queries by a forward hook; wrap layer 1's value projection in an adapter."""
    m.encoder.layer[0].attention.self.query_proj.register_forward_hook(lambda module, args, out: out * 1.5)
    layer1 = m.encoder.layer[1].attention.self
    layer1.value_proj = LowRankAdapter(layer1.value_proj, seed=1)


@pytest.fixture()
def inputs():
    ids = torch.randint(4, 1000, (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    return ids, mask


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hook_and_adapter_take_effect_under_every_implementation(impl, inputs):
    state = model("eager").state_dict()
    reference = model("eager", state)
    hook_and_adapt_(reference)
    plain, hooked = model(impl, state), model(impl, state)
    hook_and_adapt_(hooked)
    with torch.no_grad():
        expected = reference(*inputs)
        unmodified = plain(*inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = hooked(*inputs)
            again = hooked(*inputs)
    assert (got - expected).abs().max() <= 1e-5 and torch.equal(got, again)
    assert (unmodified - expected).abs().max() > 1e-2  # the hook and the adapter change the output
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_global_module_hooks_see_every_projection_call(impl, inputs):
    """A global forward hook sees each layer's query, key, value and output projections run (a direct weight
    read would skip it)."""
    m = model(impl)
    called = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: called.append(module))
    try:
        with torch.no_grad():
            m(*inputs)
    finally:
        handle.remove()
    for layer in m.encoder.layer:
        projections = [layer.attention.self.query_proj, layer.attention.self.key_proj,
                       layer.attention.self.value_proj, layer.attention.output.dense]
        assert all(any(p is c for c in called) for p in projections)
