"""Fine-tuning on GLUE-style sentence(-pair) tasks, with optional SiFT (see docs/finetune.md).

    python tools/finetune.py --model EXPORTED --task sst2 --output runs/sst2

Modules: `data` (TSV/CSV/JSONL examples, labels), `config` (options, presets), `metrics`, `sift`, `loop`
(the training loop; transformers is imported when a model is loaded), `cli`.
"""

from .config import PRESETS, FinetuneConfig
from .loop import finetune
from .metrics import classification_metrics, regression_metrics
from .sift import SiFT, symmetric_kl

__all__ = ["PRESETS", "FinetuneConfig", "SiFT", "classification_metrics", "finetune", "regression_metrics",
           "symmetric_kl"]
