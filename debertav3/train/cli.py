"""Command line of every recipe: `python recipes/X.py [--config file.yaml] [key=value ...]`.

Precedence (lowest first): schema defaults < the recipe's dict < the YAML file < `key=value` overrides.
A mistake (unknown key, wrong type, bad value, missing file) prints one line `error: ...` and exits with 2
before anything is trained or written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..train_config import Config

EXIT_USAGE = 2


class ConfigError(ValueError):
    """A configuration mistake, with a one-line message that names the key."""


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    """OmegaConf's messages span several lines ("full_key: ...", "object_type=..."); keep the key and reason."""
    reason = str(exc).splitlines()[0].strip() if str(exc) else type(exc).__name__
    key = getattr(exc, "full_key", None)
    return f"config key '{key}': {reason}" if key else reason


def load_config(recipe: dict | None = None, yaml_file: str | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """Merge defaults, recipe, YAML and `key=value` overrides into a validated `Config`."""
    try:
        merged = OmegaConf.structured(Config)
        if recipe:
            merged = OmegaConf.merge(merged, OmegaConf.create(recipe))
        if yaml_file:
            merged = OmegaConf.merge(merged, OmegaConf.load(yaml_file))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {exc.filename}") from None
    except ValueError as exc:  # raised by the dataclasses' __post_init__ checks
        raise ConfigError(str(exc)) from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Any config key can be overridden as key=value, e.g. train.max_steps=100 rtd.embedding_sharing=es. "
               "See README 'Configuration' for every key.")
    parser.add_argument("--config", help="YAML file merged over the recipe (before key=value overrides)")
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    """Print one line on stderr and exit non-zero (no traceback for user mistakes)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main(recipe: dict[str, Any] | None = None, argv: Sequence[str] | None = None,
         description: str = "Pretrain a DeBERTa-v3 model") -> dict[str, float]:
    """Entry point of the recipes: parse the command line, validate the config, train."""
    args = parse_args(argv, description)
    try:
        cfg = load_config(recipe, args.config, args.overrides)
    except ConfigError as exc:
        fail(str(exc))
    if args.print_config:
        print(to_yaml(cfg))
        return {}
    from .loop import UserError, train  # heavy imports only once the config is known to be good

    try:
        return train(cfg)
    except (UserError, ConfigError) as exc:
        fail(str(exc))
