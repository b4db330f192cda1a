"""Data: SentencePiece tokenizer, corpus loading and packing on `datasets`, masking (see docs/data.md).

The names below are imported on first use, so that `debertav3.data.config` (the `data:` section of the training
schema) can be read without importing `datasets` and the corpus code.
"""

import importlib

_HOMES = {"BlockStream": "corpus", "Blocks": "corpus", "build_datasets": "corpus", "pad_blocks": "corpus",
          "Masker": "masking", "MaskingCollator": "masking", "Tokenizer": "tokenizer", "train_tokenizer": "tokenizer"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
