"""RTD research recipe for one CPU machine: rtd_tiny's model and settings with one lr, for 4500 steps, for
comparing sharing modes and pretraining against random init downstream (docs/ablation.md has what it measured;
wall time: docs/performance.md).

    python recipes/rtd_cpu.py [key=value ...]
    python tools/ablate.py --recipe rtd_cpu --max-steps 4500 --output runs/ablation ...

On more text than the bundled 1.3M-token slice (e.g. data.train_files=[gutenberg_en/train.txt.gz]) every block
is new; on the slice itself 4500 steps are about 7 passes.
"""

import copy
import importlib.util
from pathlib import Path

from debertav3.train import main


def _tiny_recipe() -> dict:
    path = Path(__file__).with_name("rtd_tiny.py")
    spec = importlib.util.spec_from_file_location("rtd_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return copy.deepcopy(module.RECIPE)


RECIPE = _tiny_recipe()
# One lr for both: the quick start's discriminator at twice the lr detected better here too but fine-tuned worse on
# SST-2 and CoLA over 3 seeds (docs/training-dynamics.md §12).
RECIPE["optim"].update(warmup_steps=300, discriminator_lr_scale=1.0)
RECIPE["train"].update(output_dir="runs/rtd_cpu", max_steps=4500, eval_every=500, save_every=500,
                       collapse_check_step=1500, collapse_auc=0.6)

if __name__ == "__main__":
    main(RECIPE, description=__doc__)
