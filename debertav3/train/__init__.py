"""Pretraining: `debertav3.train.main(recipe)` is what every recipe calls (see debertav3/train/cli.py)."""

from .cli import main
from .config_io import load_config

__all__ = ["load_config", "main"]
