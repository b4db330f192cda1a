"""Pretraining: `debertav3.train.main(recipe)` is what every recipe calls (see debertav3/train/cli.py)."""

from .cli import load_config, main

__all__ = ["load_config", "main"]
