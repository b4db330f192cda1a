"""Recipe sweep: pretrain named variants of a recipe x seeds and plot how fast each discriminator learns.

    python tools/sweep.py --recipe rtd_tiny --output runs/sweep --seeds 2 \
        --variant "paper=" --variant "init05=model.initializer_range=0.05" [key=value ...]

DIR gets results.json (every run's eval curves and wall time) and curves.png. Rerunning the same command continues
a stopped sweep. Bad input prints one line `error: ...` on stderr and exits with status 2. See
docs/training-dynamics.md for the sweeps behind the recipes.
"""

import sys

from debertav3.ablation.sweep_cli import main

if __name__ == "__main__":
    sys.exit(main())
