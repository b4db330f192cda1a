"""Export a pretraining checkpoint as a Hugging Face DebertaV2 directory.

    python tools/export.py runs/rtd_tiny exported/rtd_tiny                      # the discriminator
    python tools/export.py runs/rtd_tiny/checkpoints/step-00000600 gen --part generator

The discriminator directory loads with AutoModel / AutoModelForSequenceClassification / AutoTokenizer and is what
tools/finetune.py takes; the generator directory is a DebertaV2ForMaskedLM for pipeline("fill-mask").
See docs/finetune.md. Bad input prints one line `error: ...` on stderr and exits with status 2.
"""

import sys

from debertav3.train.export import main

if __name__ == "__main__":
    sys.exit(main())
