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

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..train_config import Config
from ..usage import ArgumentParser, guarded


class ConfigError(ValueError):
    """A configuration mistake, with a one-line message that names the key."""


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    """OmegaConf's messages span several lines ("full_key: ...", "object_type=..."); keep the key and reason."""
    reason = str(exc).splitlines()[0].strip() if str(exc) else type(exc).__name__
    key = getattr(exc, "full_key", None)
    return f"config key '{key}': {reason}" if key else reason


def read_yaml(path: str) -> DictConfig:
    """The YAML file `path` as a DictConfig; every way it can be wrong is a one-line ConfigError naming it."""
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; give a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}; fix the file") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} holds a list, not a mapping of sections (model:, data:, rtd:, "
                          "optim:, train:)")
    return loaded


def load_config(recipe: dict | None = None, yaml_file: str | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """Merge defaults, recipe, YAML and `key=value` overrides into a validated `Config`."""
    try:
        merged = OmegaConf.structured(Config)
        if recipe:
            merged = OmegaConf.merge(merged, OmegaConf.create(recipe))
        if yaml_file:
            merged = OmegaConf.merge(merged, read_yaml(yaml_file))
        for override in overrides:
            if "=" not in override:
                raise ConfigError(f"override {override!r} is not of the form key=value")
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
            except yaml.YAMLError as exc:  # the value is parsed as YAML: "[a.txt" misses its bracket
                raise ConfigError(f"override {override!r}: its value is not valid YAML "
                                  f"({getattr(exc, 'problem', None) or type(exc).__name__}); quote or fix it") \
                    from None
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    except ValueError as exc:  # raised by the dataclasses' __post_init__ checks
        raise ConfigError(str(exc)) from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


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
