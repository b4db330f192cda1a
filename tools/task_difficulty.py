"""How hard a run's generator makes the discriminator's task: each checkpoint's eval ROC-AUC beside a count-based
bigram detector's on the same replacements, and on unigram replacements at the same positions.

    python tools/task_difficulty.py runs/rtd_tiny                       # every whole checkpoint of the run
    python tools/task_difficulty.py runs/rtd_tiny/checkpoints/step-00001200 --batches 16

See docs/training-dynamics.md. Bad input prints one line `error: ...` on stderr and exits with status 2.
"""

import sys

from debertav3.ablation.difficulty import main

if __name__ == "__main__":
    sys.exit(main())
