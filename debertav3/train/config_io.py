"""A `Config` from the schema's defaults, a recipe's dict, a YAML file and `key=value` overrides, and back to YAML.

Precedence (lowest first): schema defaults < the recipe's dict < the YAML file < `key=value` overrides. Every
mistake is a one-line `ConfigError` that names the key or the file.
"""

from __future__ import annotations

from typing import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .config import Config


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
