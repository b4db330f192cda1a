"""Using an auto-regressive DeBERTa (objectives arlm and mt): load it, score text, sample from it."""

from .load import CausalLM, load_causal_lm
from .cache import CachedDecoder
from .sample import generate
from .score import Windows, perplexity, text_windows

__all__ = ["CachedDecoder", "CausalLM", "load_causal_lm", "generate", "Windows", "perplexity", "text_windows"]
