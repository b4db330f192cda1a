"""Every registered attention core against the reference ("eager", model/attention.py).

The same weights and inputs through each implementation give the reference's output and every gradient (each
parameter's and the input's) in fp32 to 1e-5 of the tensor's largest entry, over configs that reach each code path
of the fast ones (band layout with one and several blocks, gathered and bucketed positions, per-sequence indices of
the enhanced mask decoder, one position term, unshared position projections, padding).
"""

import copy

import pytest
import torch

from debertav3.model import implementations
from debertav3.model.backbone import Encoder
from debertav3.model.config import ModelConfig

ATTENTION = [name for name in implementations.NAMES["attention"] if name != implementations.REFERENCE]
TOL = 1e-5

# id: (config overrides, sequence length). Widths and head counts vary from case to case.
CASES = {
    "short": (dict(hidden_size=24, num_attention_heads=3), 7),
    "band-one-block": (dict(), 37),
    "band-two-blocks": (dict(hidden_size=48, num_attention_heads=4), 64),
    "buckets-at-141": (dict(hidden_size=16, num_attention_heads=2), 141),
    "small-buckets": (dict(position_buckets=8), 40),
    "clipped-span": (dict(position_buckets=-1, max_relative_positions=12), 30),
    "c2p-only": (dict(pos_att_type=["c2p"]), 64),
    "p2c-only": (dict(pos_att_type=["p2c"], hidden_size=24, num_attention_heads=2), 45),
    "unshared-keys": (dict(share_att_key=False), 64),
    "unshared-c2p-only-bucketed": (dict(share_att_key=False, pos_att_type=["c2p"], position_buckets=8), 33),
    "unshared-p2c-only": (dict(share_att_key=False, pos_att_type=["p2c"]), 32),
    "no-relative-attention": (dict(relative_attention=False), 20),
}


def config(attention_impl="eager", dropout=0.0, **overrides) -> ModelConfig:
    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, attention_impl=attention_impl)
    return ModelConfig(**{**base, **overrides})


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (LayerNorms and biases too), so no term hides behind an init of 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))


def encoders(impl: str, overrides: dict, seed: int = 0) -> tuple[Encoder, Encoder]:
    """(reference encoder, the same weights under `impl`)."""
    reference = Encoder(config(**overrides))
    randomize_(reference, seed)
    other = Encoder(config(impl, **overrides))
    other.load_state_dict(reference.state_dict())
    return reference, other


def inputs(cfg: ModelConfig, length: int, padded: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, length, cfg.hidden_size, generator=gen).requires_grad_()
    mask = torch.ones(3, length, dtype=torch.bool)
    if padded:
        mask[1, length // 2:] = False
        mask[2, -1:] = False
    return x, mask, torch.randn(3, length, cfg.hidden_size, generator=gen)


def outputs_and_gradients(module: torch.nn.Module, run, x: torch.Tensor, weights: torch.Tensor):
    """run()'s output and the gradients of (output * weights).sum() for x and every parameter, by name."""
    out = run()
    names, params = zip(*module.named_parameters())
    grads = torch.autograd.grad((out * weights).sum(), (x,) + params, allow_unused=True)
    return out, dict(zip(("input",) + names, grads))


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str, rounding: float = 0.0) -> None:
    """|got - expected| <= 1e-5 of expected's largest entry (at least 1e-5), plus twice `rounding`."""
    error = (got - expected).abs().max().item()
    assert error <= TOL * max(1.0, expected.abs().max().item()) + 2 * rounding, f"{what}: max abs error {error}"


def assert_same_results(got, fp32_reference, fp64_reference) -> None:
    """`got` (fp32) against the reference's exact (fp64) results, within 1e-5 of each tensor's largest entry or,
    where a result is a near-complete cancellation (the relative table's LayerNorm bias has no effect on c2p alone,
    for instance), within the reference's own fp32 rounding error of that tensor (twice over)."""
    (out, grads), (ref_out, ref_grads), (exact_out, exact_grads) = got, fp32_reference, fp64_reference
    assert_close(out, exact_out.float(), "output", (ref_out - exact_out).abs().max().item())
    assert grads.keys() == exact_grads.keys()
    for name, exact in exact_grads.items():
        assert (grads[name] is None) == (exact is None), name
        if exact is not None:
            assert_close(grads[name], exact.float(), name, (ref_grads[name] - exact).abs().max().item())


def reference_results(reference: Encoder, run, x: torch.Tensor, weights: torch.Tensor):
    """`outputs_and_gradients` of the reference in fp32 and (a copy) in fp64."""
    exact = copy.deepcopy(reference).double()
    x64 = x.detach().double().requires_grad_()
    return (outputs_and_gradients(reference, lambda: run(reference, x), x, weights),
            outputs_and_gradients(exact, lambda: run(exact, x64), x64, weights.double()))


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ATTENTION)
def test_encoder_output_and_every_gradient_equal_the_reference(impl, case, padded):
    overrides, length = CASES[case]
    reference, other = encoders(impl, overrides)
    x, mask, weights = inputs(reference.config, length, padded)
    run = lambda encoder, x: encoder(x, mask, encoder.relative_context(length))[-1]  # noqa: E731
    expected = reference_results(reference, run, x, weights)
    assert_same_results(outputs_and_gradients(other, lambda: run(other, x), x, weights), *expected)


@pytest.mark.parametrize("case", ["band-one-block", "buckets-at-141", "p2c-only", "unshared-c2p-only-bucketed"])
@pytest.mark.parametrize("impl", ATTENTION)
def test_decoder_form_equals_the_reference(impl, case):
    """The enhanced mask decoder's use of a layer: separate queries [B, M, HD] at chosen positions, their rows of
    the index per sequence [B, M, L], and keys and values computed once for two passes."""
    overrides, length = CASES[case]
    reference, other = encoders(impl, overrides, seed=2)
    x, mask, weights = inputs(reference.config, length, padded=True, seed=3)
    positions = torch.randint(0, length, (3, 5), generator=torch.Generator().manual_seed(4))
    query = torch.randn(3, 5, x.shape[-1], generator=torch.Generator().manual_seed(5))

    def decode(encoder, x):
        rel, idx = encoder.relative_context(length)
        layer = encoder.layer[-1]
        keys_values = layer.attention.self.keys_values(x)
        states = query.to(x.dtype)
        for _ in range(2):
            states = layer(x, mask, states, rel, None if idx is None else idx[positions], keys_values)
        return states

    expected = reference_results(reference, decode, x, weights[:, :5])
    assert_same_results(outputs_and_gradients(other, lambda: decode(other, x), x, weights[:, :5]), *expected)


@pytest.mark.parametrize("impl", ["eager"] + ATTENTION)
def test_attention_with_dropout_is_reproducible_under_manual_seed(impl):
    """In training, with dropout on: the same seed gives the same output and gradients, another seed others."""
    encoder = Encoder(config(impl, dropout=0.2))
    randomize_(encoder, 6)
    x, mask, weights = inputs(encoder.config, 40, padded=True)
    run = lambda: encoder(x, mask, encoder.relative_context(40))[-1]  # noqa: E731

    def seeded(seed):
        torch.manual_seed(seed)
        return outputs_and_gradients(encoder, run, x, weights)

    first, again, other = seeded(7), seeded(7), seeded(8)
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    assert all(torch.equal(first[1][name], again[1][name]) for name in first[1])
    encoder.eval()
    with torch.no_grad():  # eval turns every dropout off: the implementation then gives the reference's result
        reference = Encoder(config(dropout=0.2)).eval()
        reference.load_state_dict(encoder.state_dict())
        assert_close(run(), reference(x, mask, reference.relative_context(40))[-1], "eval output")


@pytest.mark.parametrize("impl", ["eager"] + ATTENTION)
def test_probability_dropout_keeps_at_the_rate_and_scales(impl):
    """The core's own dropout: with uniform scores (q = k = 0, no position terms) every probability is 1 / Lk, so
    each context entry of v = 1 is (kept count) / (Lk (1 - p)): its mean is 1 and its spread the binomial's."""
    p, L = 0.25, 64
    core = implementations.resolve("attention", impl)
    q = torch.zeros(2, 4, L, 8)
    v = torch.ones(2, 4, L, 8)
    torch.manual_seed(0)
    context = core(q, q, v, None, None, None, torch.ones(2, L, dtype=torch.bool), 0.5, p)
    kept = context[..., 0] * L * (1 - p)  # [2, 4, L] kept counts out of L
    assert torch.allclose(kept, kept.round(), atol=1e-4)  # whole numbers: a 0 / 1 mask scaled by 1 / (1 - p)
    assert abs(kept.mean().item() / L - (1 - p)) < 0.02
    assert abs(kept.var().item() - L * p * (1 - p)) < 0.3 * L * p * (1 - p)


def test_auto_picks_by_device_in_one_table():
    assert implementations.resolve_name("attention", "auto", "cpu") == implementations.AUTO["attention"]["cpu"]
    assert implementations.resolve_name("attention", "auto", "cuda") == "sdpa"
    assert implementations.resolve_name("attention", "auto", "tpu") == implementations.REFERENCE
    assert Encoder(config("auto")).layer[0].attention.self.impl == "cpu_fused"  # built on the CPU
    on_gpu = ModelConfig(vocab_size=100).for_device("cuda")
    assert (on_gpu.attention_impl, on_gpu.mlm_loss_impl, on_gpu.dropout_impl) == ("sdpa", "eager", "eager")
