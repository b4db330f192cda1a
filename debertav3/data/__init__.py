"""Data: SentencePiece tokenizer, corpus loading and packing on `datasets`, masking (see docs/data.md)."""

from .corpus import BlockStream, Blocks, build_datasets, pad_blocks
from .masking import Masker, MaskingCollator
from .tokenizer import Tokenizer, train_tokenizer

__all__ = ["BlockStream", "Blocks", "Masker", "MaskingCollator", "Tokenizer", "build_datasets", "pad_blocks",
           "train_tokenizer"]
