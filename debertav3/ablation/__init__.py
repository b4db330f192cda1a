"""Embedding-sharing ablations (ES / NES / GDES, the MLM and random baselines) at equal budget, reported like the
DeBERTaV3 paper's table 2: `python tools/ablate.py --modes es,nes,gdes,mlm,random --max-steps N --output DIR`.

Modules: `runner` (plan, stage markers, resumable execution), `curves` (TensorBoard scalars and fine-tuning
metrics reduced to numbers), `claims` (the paper's claims checked), `plots`, `report` (results.json, report.md),
`cli`. See docs/ablation.md.
"""

from ..errors import AblationError
from .runner import MODES, AblationSpec, FinetuneOptions, plan
from .report import write_report

__all__ = ["MODES", "AblationError", "AblationSpec", "FinetuneOptions", "plan", "write_report"]
