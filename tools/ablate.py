"""Embedding-sharing ablation: ES vs NES vs GDES (and the MLM and random baselines) at equal budget.

    python tools/ablate.py --recipe rtd_tiny --modes es,nes,gdes,mlm,random --seeds 3 --max-steps 600 \
        --tasks sst2,cola --output runs/ablation [key=value ...]

Every mode x seed pretrains, exports and fine-tunes; DIR gets report.md, results.json and PNG plots. Rerunning
the same command continues a stopped ablation without redoing finished stages. See docs/ablation.md. Bad input
prints one line `error: ...` on stderr and exits with status 2.
"""

import sys

from debertav3.ablation.cli import main

if __name__ == "__main__":
    sys.exit(main())
