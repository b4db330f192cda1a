"""Hooks and adapters on the attention projections take effect under every attention implementation.

A fast path that reads a projection's weight directly (cpu_fused) cannot see a hook or an adapter; it must then
decline, with a one-time warning, and the reference run. Either way the model's output must be the reference's
with the same hook and adapter, and differ from the output without them.
"""

import warnings

import pytest
import torch
from torch import nn

from debertav3 import DebertaV3Model, preset
from debertav3.model import attention, implementations

IMPLEMENTATIONS = [name for name in implementations.available("attention") if name != "auto"]
DIRECT_WEIGHT_READERS = {"cpu_fused"}  # the implementations that must decline a hooked or wrapped projection


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


@pytest.fixture()
def fresh_warnings(monkeypatch):
    """A process that has not warned yet (the decline warning is given once per process and reason)."""
    monkeypatch.setattr(attention, "_declines_warned", set())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hook_and_adapter_take_effect_under_every_implementation(impl, inputs, fresh_warnings):
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
    messages = [str(w.message) for w in caught]
    if impl in DIRECT_WEIGHT_READERS:  # one line per reason, once: not again on the second call
        assert len(messages) == 2, messages
        assert any("query_proj has forward_hooks" in m for m in messages), messages
        assert any("value_proj is a LowRankAdapter, not a plain nn.Linear" in m for m in messages), messages
        assert all(m.startswith(f"attention_impl {impl!r} cannot run this layer") and "\n" not in m
                   for m in messages)
    else:
        assert not messages, messages


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_global_module_hooks_see_every_projection_call(impl, inputs, fresh_warnings):
    """A global forward hook sees each layer's query, key, value and output projections run (a direct weight
    read would skip it): the implementation calls them or declines."""
    m = model(impl)
    called = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: called.append(module))
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m(*inputs)
    finally:
        handle.remove()
    for layer in m.encoder.layer:
        projections = [layer.attention.self.query_proj, layer.attention.self.key_proj,
                       layer.attention.self.value_proj, layer.attention.output.dense]
        assert all(any(p is c for c in called) for p in projections)
    declined = [str(w.message) for w in caught if "global module hooks" in str(w.message)]
    assert len(declined) == (1 if impl in DIRECT_WEIGHT_READERS else 0), declined
    # Without the hook again, the fast path runs: no warning.
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m(*inputs)
    assert not caught
