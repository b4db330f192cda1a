"""Causal attention (DeBERTa paper appendix A.4): no position sees a later token, on every attention implementation.

The leakage checks, for each implementation and configs that reach each of its code paths, padded and unpadded:
- the Jacobian: the gradient of the output at position i with respect to every input after i is exactly zero;
- perturbation: changing every input after i leaves the output at positions <= i and every parameter's gradient
  of a loss on those positions unchanged (c2p and p2c are inside the score, so their leaks would show here too);
- the whole auto-regressive network (embeddings, layers, enhanced mask decoder, tied head): the logits at i do not
  move when the token ids after i change.
The numbers against an independent reference: transformers' DebertaV2 encoder given the same triangular mask as a
[B, L, L] attention mask gives our causal hidden states.
"""

import pytest
import torch

from debertav3.model import MaskedLMModel, implementations
from debertav3.model.config import preset
from test_attention_impls import CASES, config, randomize_

IMPLEMENTATIONS = list(implementations.NAMES["attention"])
LEAK_CASES = ["short", "band-one-block", "band-two-blocks", "buckets-at-141", "c2p-only", "p2c-only",
              "unshared-keys", "no-relative-attention"]


def causal_run(encoder, x, mask):
    return encoder(x, mask, encoder.relative_context(x.shape[1]), causal=True)[-1]


def encoder_and_inputs(impl: str, case: str, padded: bool):
    from debertav3.model.backbone import Encoder
    overrides, length = CASES[case]
    encoder = Encoder(config(impl, **overrides))
    randomize_(encoder, 11)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, length, encoder.config.hidden_size, generator=gen)
    mask = torch.ones(2, length, dtype=torch.bool)
    if padded:
        mask[1, length - max(1, length // 3):] = False
    return encoder, x, mask


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", LEAK_CASES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_no_position_depends_on_a_later_input(impl, case, padded):
    encoder, x, mask = encoder_and_inputs(impl, case, padded)
    length = x.shape[1]
    x = x.requires_grad_()
    out = causal_run(encoder, x, mask)
    for i in sorted({0, length // 2, length - 2}):
        (grad,) = torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)
        assert torch.count_nonzero(grad[:, i + 1:]) == 0, f"position {i} reads a later input"
        assert torch.count_nonzero(grad[:, : i + 1]) > 0  # and it does read the earlier ones

    i = length // 2
    changed = x.detach().clone()
    changed[:, i + 1:] = torch.randn(changed[:, i + 1:].shape, generator=torch.Generator().manual_seed(13))
    weights = torch.randn(2, i + 1, x.shape[-1], generator=torch.Generator().manual_seed(14))
    params = [p for p in encoder.parameters()]

    def prefix_results(inputs):
        prefix = causal_run(encoder, inputs, mask)[:, : i + 1]
        return prefix.detach(), torch.autograd.grad((prefix * weights).sum(), params, allow_unused=True)

    (before, grads_before), (after, grads_after) = prefix_results(x.detach()), prefix_results(changed)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    for name, a, b in zip((n for n, _ in encoder.named_parameters()), grads_after, grads_before):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    # Without the mask the same change does reach the prefix: the test can see a leak.
    full = encoder(changed, mask, encoder.relative_context(length))[-1][:, : i + 1]
    assert not torch.allclose(full, encoder(x.detach(), mask, encoder.relative_context(length))[-1][:, : i + 1])


@pytest.mark.parametrize("emd,overrides", [(True, {}), (False, {"position_biased_input": True})],
                         ids=["emd", "absolute-input"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_next_token_logits_do_not_see_later_tokens(impl, emd, overrides):
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=impl, **overrides)
    model = MaskedLMModel(cfg, enhanced_mask_decoder=emd).eval()
    randomize_(model, 15)
    gen = torch.Generator().manual_seed(16)
    ids = torch.randint(5, cfg.vocab_size, (2, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    logits = model(ids, mask, None, causal=True)
    assert logits.shape == (2, 40, cfg.vocab_size)
    for i in (0, 17, 38):
        changed = ids.clone()
        changed[:, i + 1:] = torch.randint(5, cfg.vocab_size, changed[:, i + 1:].shape, generator=gen)
        torch.testing.assert_close(model(changed, mask, None, causal=True)[:, : i + 1], logits[:, : i + 1],
                                   rtol=0, atol=1e-5)
    changed = ids.clone()
    changed[:, 20] = (changed[:, 20] + 1) % cfg.vocab_size
    assert not torch.allclose(model(changed, mask, None, causal=True)[0, 20:], logits[0, 20:])


def test_causal_selection_needs_every_position():
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = MaskedLMModel(cfg)
    ids = torch.randint(5, cfg.vocab_size, (2, 12))
    with pytest.raises(ValueError, match="causal attention needs a query for every key"):
        model(ids, torch.ones_like(ids), torch.tensor([[1, 2], [3, 4]]), causal=True)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_causal_backbone_matches_transformers_with_a_triangular_mask(impl):
    transformers = pytest.importorskip("transformers", reason="transformers (the dev extra) is the reference")
    from test_parity import paired_models
    cfg, ours, theirs = paired_models(impl)
    gen = torch.Generator().manual_seed(17)
    ids = torch.randint(5, cfg.vocab_size, (3, 50), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 35:] = 0
    # transformers' public forward multiplies its embeddings by a 2-D mask only, so its pieces are called directly.
    triangle = torch.ones(50, 50, dtype=torch.long).tril() * mask[:, None, :]  # [B, L, L], 1 where i may read j
    with torch.no_grad():
        expected = theirs.encoder(theirs.embeddings(input_ids=ids, mask=mask), triangle).last_hidden_state
        got = ours(ids, mask, causal=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=3e-5)
    assert transformers.__version__
