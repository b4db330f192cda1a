"""Command line of every recipe: `python recipes/X.py [--config file.yaml] [key=value ...]`.

Precedence (lowest first): schema defaults < the recipe's dict < the YAML file < `key=value` overrides.
A mistake (unknown key, wrong type, bad value, unreadable or malformed YAML, missing file) prints one line
`error: ...` and exits with 2 before anything is trained or written; Ctrl-C before the training loop starts (or a
second one inside it) prints one line `interrupted: ...` and exits with 130 (debertav3/usage.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from .config import Config
from .config_io import load_config, to_yaml
from ..usage import ArgumentParser, guarded



def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = ArgumentParser(
        description=description,
        epilog="Any config key can be overridden as key=value, e.g. train.max_steps=100 rtd.embedding_sharing=es. "
               "See README 'Configuration' for every key.")
    parser.add_argument("--config", help="YAML file merged over the recipe (before key=value overrides)")
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def interrupted_message(output_dir: str | None) -> str:
    """What a Ctrl-C outside the training loop leaves: the latest complete checkpoint, if there is one."""
    if output_dir is not None:
        from .checkpoint import complete_checkpoints

        done = complete_checkpoints(output_dir)
        if done:
            return f"{done[-1]} is the latest complete checkpoint; rerun with train.resume=auto to continue from it"
    return "no checkpoint was saved; rerun the same command to start again"


def _train(cfg: Config) -> dict[str, float]:
    from .loop import train  # heavy imports only once the config is known to be good

    return train(cfg)


def main(recipe: dict[str, Any] | None = None, argv: Sequence[str] | None = None,
         description: str = "Pretrain a DeBERTa-v3 model") -> dict[str, float]:
    """Entry point of the recipes: parse the command line, validate the config, train.

    Exits with status 2 on a mistake in the input and 130 on Ctrl-C outside the training loop, after one line.
    """
    args = parse_args(argv, description)
    status, cfg = guarded(lambda: load_config(recipe, args.config, args.overrides), interrupted_message(None))
    if status:
        sys.exit(status)
    if args.print_config:
        print(to_yaml(cfg))
        return {}
    status, result = guarded(lambda: _train(cfg), lambda: interrupted_message(cfg.train.output_dir))
    if status:
        sys.exit(status)
    return result
