"""The error the pretraining command reports as one line `error: ...` and exit status 2 (see train/cli.py)."""


class UserError(ValueError):
    """A problem with the user's input or environment, reported as one line."""
