"""Names and values shared across the package: each defined here once."""

SHARING_MODES = ("es", "nes", "gdes")  # DeBERTaV3 paper section 3: embedding sharing, none, gradient-disentangled
OBJECTIVES = ("rtd", "mlm")
MASK_MODES = ("all_mask", "bert")  # official DeBERTaV3 RTD: every selected token -> [MASK]; BERT: 80/10/10
DOCUMENT_MODES = ("blank_line", "line")
# The experiment trackers accelerate drives (accelerate.utils.LoggerType, "all" aside): train.log_with
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
IGNORE_INDEX = -100  # transformers' label for positions without a loss
