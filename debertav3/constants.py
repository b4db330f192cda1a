"""Names and values shared across the package: each defined here once."""

SHARING_MODES = ("es", "nes", "gdes")  # DeBERTaV3 paper section 3: embedding sharing, none, gradient-disentangled
SCHEDULES = ("joint", "decoupled")  # one step on L_MLM + lambda L_RTD, or the official code's two (objective/rtd.py)
GENERATOR_STARTS = ("release_embeddings", "random")  # a generator for a discriminator-only release (interop/hf.py)
STAGES = ("joint", "generator", "discriminator")  # what one forward pass of the RTD model computes
OBJECTIVES = ("rtd", "mlm", "arlm", "mt")  # mt: MLM and ARLM on one network (DeBERTa-MT)
# The tasks each objective trains and evaluates, as `causal` (False: masked input, True: next-token prediction)
OBJECTIVE_TASKS = {"rtd": (False,), "mlm": (False,), "arlm": (True,), "mt": (False, True)}
MASK_MODES = ("all_mask", "bert")  # official DeBERTaV3 RTD: every selected token -> [MASK]; BERT: 80/10/10
DOCUMENT_MODES = ("blank_line", "line")
# The experiment trackers accelerate drives (accelerate.utils.LoggerType, "all" aside): train.log_with
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
IGNORE_INDEX = -100  # transformers' label for positions without a loss
