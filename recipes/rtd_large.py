"""RTD pretraining, deberta-v3-large: discriminator 1024 x 24 layers, generator 1024 x 12.

    accelerate launch recipes/rtd_large.py [--config file.yaml] [key=value ...]

Paper settings: global batch 8192 x 512 tokens, lr 3e-4, 10k warmup steps, 500k steps. Set the global batch with
train.batch_size (per process) x processes x train.gradient_accumulation_steps. The lr is the paper's at its batch
and is scaled down by the square root of the batch's share of it (optim.lr_scaling=sqrt; the start-up header says
which lr it chose, docs/configuration.md why); optim.lr=X trains at X instead. Without data.train_files it trains
on the bundled English slice with the bundled 8k tokenizer (real DeBERTa-v3 vocabulary size is kept).
"""

from debertav3.model.config import PRESETS
from debertav3.train import main

RECIPE = {
    "model": dict(PRESETS["large"]),  # generator: same width, half the depth (model.generator_layers)
    "optim": {"lr": 3e-4, "lr_scaling": "sqrt", "warmup_steps": 10000},
    "train": {"output_dir": "runs/rtd_large", "batch_size": 4, "max_steps": 500000, "save_every": 2000,
              "eval_every": 2000, "collapse_check_step": 10000, "collapse_auc": 0.6},  # checked from the peak lr on
}

if __name__ == "__main__":
    main(RECIPE, description=__doc__)
