"""Every error and warning the project raises on purpose, in one place.

`UserError` and its subclasses are mistakes in the user's input or environment: each entry point reports them as
one line `error: ...` and exits with status 2 (debertav3/usage.py). The warnings are printed once, in words a user
can act on.
"""


class UserError(ValueError):
    """A problem with the user's input or environment, reported as one line."""


class ConfigError(UserError):
    """A configuration mistake, with a one-line message that names the key."""


class CheckpointError(UserError):
    """A checkpoint directory that cannot be read as a DeBERTa-v2/v3 model (message names the file and fix)."""


class DamagedFile(UserError):
    """A corpus file that breaks off or is corrupt where `resolve_files`' look at its start could not see."""


class AblationError(UserError):
    """A mistake in the ablation's input, reported as one line."""


class Interrupted(RuntimeError):
    """Pretraining stopped early (SIGTERM/SIGINT, saved its checkpoint): the ablation stops and can be rerun."""


class ScheduleWarning(UserWarning):
    """`optim.warmup_steps` is longer than the run: the warm-up is cut to `train.max_steps` (train/optim.py)."""


class CollapseWarning(UserWarning):
    """The discriminator's eval AUC stayed below `train.collapse_auc` after `train.collapse_check_step` steps."""
