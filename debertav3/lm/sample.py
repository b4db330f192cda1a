"""Sampling the next token from an auto-regressive DeBERTa (tools/generate.py): temperature, top-k, top-p.

    p = softmax(logits / temperature) over the tokens that are not special, then
    top-k: only the k most probable tokens are kept;  top-p (nucleus, Holtzman et al. 2020): only the most
    probable tokens whose cumulative probability first reaches p; the kept ones renormalised and drawn from.
    temperature 0 takes the most probable token (greedy).

Each new token runs against a key-value cache (lm/cache.py), rebuilt whenever the window slides; `cache=False`
recomputes the whole window for every token instead (the reference the cache is tested against).
"""

from __future__ import annotations

from typing import Optional

import torch

from .cache import CachedDecoder
from .load import CausalLM


def next_token_probabilities(logits_V: torch.Tensor, special_ids: torch.Tensor, temperature: float,
                             top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """[V] probabilities to draw the next token from (module docstring); `top_k` 0 and `top_p` 1 keep every token."""
    logits = logits_V.float().clone()
    logits[special_ids[special_ids < logits.shape[-1]]] = -torch.inf
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        logits[logits < torch.topk(logits, top_k).values[-1]] = -torch.inf
    probs = torch.softmax(logits, -1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        before = ordered.cumsum(-1) - ordered  # probability of the more probable tokens
        probs = probs.scatter(-1, order, torch.where(before < top_p, ordered, 0.0))
    return probs / probs.sum()


def draw(probs: torch.Tensor, generator: Optional[torch.Generator]) -> int:
    """One token id drawn from [V] probabilities."""
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(lm: CausalLM, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, cache: bool = True) -> list[int]:
    """`max_new_tokens` ids drawn one by one after `prompt_ids`; the context is [CLS] and the latest tokens that
    fit the window the model was trained on (it slides once the text outgrows it)."""
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted(set(lm.tokenizer.special_ids)))
    decoder = CachedDecoder(lm) if cache else None
    keep = lm.window - 3  # a block's [CLS] and [SEP], and room for the token drawn: positions the model learned
    text = list(prompt_ids)
    for _ in range(max_new_tokens):
        context = [lm.tokenizer.cls_id, *text[-keep:]]
        if decoder is not None:
            logits = decoder.logits(context)
        else:
            ids = torch.tensor([context])
            logits = lm.next_token_logits(ids, torch.ones_like(ids))[0, -1]
        text.append(draw(next_token_probabilities(logits, special, temperature, top_k, top_p), generator))
    return text[len(prompt_ids):]
