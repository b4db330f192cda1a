"""The `data:` section of the training schema: corpus, tokenizer, packing and masking (debertav3.data).

Every value is checked in `__post_init__`; a bad one raises a one-line ConfigError naming the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..constants import DOCUMENT_MODES, MASK_MODES
from ..errors import ConfigError
from ..validation import check_number, check_positive


@dataclass
class DataConfig:
    """Corpus, tokenizer, packing and masking (debertav3.data)."""

    train_files: list[str] = field(default_factory=list)  # empty: the bundled English slice
    valid_files: list[str] = field(default_factory=list)  # empty: hold out `valid_fraction` of train
    dataset_name: Optional[str] = None  # a hub dataset, for users who have one (never in tests)
    dataset_config: Optional[str] = None
    text_field: str = "text"
    tokenizer: Optional[str] = None  # directory with spm.model; None: the bundled tokenizer
    documents: str = "blank_line"  # "blank_line": blank-line separated blocks are documents; "line": each line
    max_seq_length: int = 512
    pack_across_documents: bool = False
    streaming: bool = False
    num_proc: int = 2
    valid_fraction: float = 0.01
    max_valid_blocks: int = 256
    cache_dir: Optional[str] = None
    mask_prob: float = 0.15
    mask_mode: str = "auto"  # auto: all_mask for rtd (official DeBERTaV3), bert (80/10/10) for mlm
    whole_word_mask: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.max_seq_length < 8:
            raise ConfigError(f"data.max_seq_length must be >= 8, got {self.max_seq_length}")
        check_number("data.mask_prob", self.mask_prob, "(0, 1)")
        # The masker selects mask_prob * n of a block's n <= max_seq_length - 2 candidates, rounded stochastically
        # (data/masking.py): below one token, blocks often have nothing to predict, and steps whose batch has no
        # target are skipped.
        payload = self.max_seq_length - 2
        if self.mask_prob * payload < 1:
            raise ConfigError(f"data.mask_prob {self.mask_prob} selects {self.mask_prob * payload:.2g} of the "
                              f"{payload} tokens of a block (data.max_seq_length {self.max_seq_length}), fewer than "
                              f"one; raise data.mask_prob to >= {1 / payload:.3g} or data.max_seq_length")
        if self.mask_mode not in ("auto",) + MASK_MODES:
            raise ConfigError(f"data.mask_mode {self.mask_mode!r} is unknown; use one of {['auto', *MASK_MODES]}")
        if self.documents not in DOCUMENT_MODES:
            raise ConfigError(f"data.documents {self.documents!r} is unknown; use one of {list(DOCUMENT_MODES)}")
        check_number("data.valid_fraction", self.valid_fraction, "[0, 1)")
        check_positive("data", self, ("num_proc", "max_valid_blocks"))
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
