"""Auto-regressive DeBERTa at base size (768 x 12 layers): the network of the DeBERTa paper's generation comparison.

    accelerate launch recipes/arlm_base.py [--config file.yaml] [key=value ...]
    accelerate launch recipes/arlm_base.py objective=mt          # DeBERTa-MT: MLM and ARLM on one network
    accelerate launch recipes/arlm_base.py model.enhanced_mask_decoder=false model.position_biased_input=true  # -AP

The paper trains its generation models with the base model's hyper-parameters (DeBERTa paper appendix A.4; DeBERTa-MT
for 200k steps): lr 2e-4 at a global batch of 2048 sequences of 512 tokens, 10k warm-up steps, dropout 0.1, AdamW
(0.9, 0.98, eps 1e-6, weight decay 0.01). The lr is scaled down by the square root of the global batch's share of
that batch (optim.lr_scaling=sqrt; the start-up header says which lr it chose); optim.lr=X trains at X instead.
Without data.train_files it trains on the bundled English slice and its 8k tokenizer (the 128,100-row table kept).
"""

from debertav3.model.config import PRESETS
from debertav3.train import main

RECIPE = {
    "objective": "arlm",
    "model": dict(PRESETS["base"]),
    "optim": {"lr": 2e-4, "lr_scaling": "sqrt", "lr_reference_tokens": 2048 * 512, "warmup_steps": 10000},
    "train": {"output_dir": "runs/arlm_base", "batch_size": 8, "max_steps": 200000, "save_every": 2000,
              "eval_every": 2000},
}

if __name__ == "__main__":
    main(RECIPE, description=__doc__)
