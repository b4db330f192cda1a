"""Fine-tune a DeBERTa-v2/v3 directory on a classification or regression task and report dev metrics.

    python tools/finetune.py --model exported/rtd_tiny --task sst2 --output runs/sst2
    python tools/finetune.py --model exported/rtd_tiny --task sst2 --random-init --output runs/sst2_random
    python tools/finetune.py --model DIR --train train.csv --dev dev.csv --text-columns premise,hypothesis \
        --label-column label --output runs/nli --sift

Prints the metrics and writes OUTPUT/metrics.json. See docs/finetune.md. Bad input prints one line
`error: ...` on stderr and exits with status 2.
"""

import sys

from debertav3.finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
