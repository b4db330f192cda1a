"""The key-value cache of generation (debertav3/lm/cache.py) against the full causal forward pass: the same
next-token logits at every length, grown one token at a time, rebuilt for a new prefix, with and without the EMD,
under each attention implementation; and the same generated text as recomputing the window for every token."""

import pytest
import torch

from debertav3.lm.cache import CachedDecoder
from debertav3.lm.load import CausalLM
from debertav3.lm.sample import generate
from debertav3.model import MaskedLMModel, implementations
from debertav3.model.config import preset

VARIANTS = {"emd": (True, {}), "absolute-input": (False, {"position_biased_input": True}),
            "absolute-only": (False, {"position_biased_input": True, "relative_attention": False})}


class Tokens:
    pad_id, cls_id, sep_id = 0, 1, 2
    special_ids = (0, 1, 2, 3, 4)


def language_model(impl: str, variant: str, window: int = 64) -> CausalLM:
    emd, overrides = VARIANTS[variant]
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=impl, **overrides)
    torch.manual_seed(0)
    return CausalLM(MaskedLMModel(cfg, enhanced_mask_decoder=emd).eval(), Tokens(), window)


def full_logits(lm: CausalLM, ids: list[int]) -> torch.Tensor:
    tensor = torch.tensor([ids])
    return lm.next_token_logits(tensor, torch.ones_like(tensor))[0, -1]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", implementations.NAMES["attention"])
def test_cached_logits_equal_the_full_pass_at_every_length(impl, variant):
    lm = language_model(impl, variant)
    ids = [1] + torch.randint(5, 1000, (45,), generator=torch.Generator().manual_seed(1)).tolist()
    decoder = CachedDecoder(lm)
    for end in [1, 2, 3, 20, *range(21, 46)]:  # one at a time, a jump of 17 positions, then one at a time again
        torch.testing.assert_close(decoder.logits(ids[:end]), full_logits(lm, ids[:end]), rtol=0, atol=1e-5)
    # One (keys, values) per attention pass that reads keys: L - 1 layers and the EMD's, or all L layers.
    assert len(decoder.keys_values) == lm.network.config.num_hidden_layers
    assert decoder.keys_values[0][0].shape[1] == 45
    other = [1] + ids[5:30]  # not an extension: rebuilt
    torch.testing.assert_close(decoder.logits(other), full_logits(lm, other), rtol=0, atol=1e-5)
    assert decoder.keys_values[0][0].shape[1] == len(other)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_draws_what_recomputing_draws(variant):
    lm = language_model("auto", variant, window=16)  # 13 tokens of context: the window slides within the run
    prompt = [10, 11, 12, 13, 14]
    for seed, temperature in ((0, 1.0), (1, 0.7), (2, 0.0)):
        cached = generate(lm, prompt, 25, temperature=temperature, top_p=0.9, seed=seed)
        assert cached == generate(lm, prompt, 25, temperature=temperature, top_p=0.9, seed=seed, cache=False)
