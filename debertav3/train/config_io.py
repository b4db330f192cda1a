"""A `Config` from the schema's defaults, a recipe's dict, a YAML file and `key=value` overrides, and back to YAML.

Precedence (lowest first): schema defaults < the recipe's dict < the YAML file < `key=value` overrides. Every
mistake is a one-line `ConfigError` that names the key or the file.
"""

from __future__ import annotations

import dataclasses
import typing
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


def _schema_type(hint):
    """`Optional[X]` -> X; any other type as it is."""
    if typing.get_origin(hint) is typing.Union:
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _as_typed(schema: type, values: dict) -> dict:
    """`values` (a YAML file's or one override's, as parsed) with what people type turned into the schema's types.

    A single value where the schema holds a list becomes a one-element list (`data.train_files=a.txt`, as people
    type it, not only `[a.txt]`). A boolean where the schema holds a string is the YAML 1.1 word it was read from:
    `no`, `off` and `false` parse as False, so `train.mixed_precision=no` arrives as False and becomes "no" (True
    becomes "yes"). Unknown keys are left for the merge to name.
    """
    hints = typing.get_type_hints(schema)
    for key, value in values.items():
        kind = _schema_type(hints.get(key))
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            _as_typed(kind, value)
        elif typing.get_origin(kind) is list and value is not None and not isinstance(value, list):
            values[key] = [value]
        elif kind is str and isinstance(value, bool):
            values[key] = "yes" if value else "no"
    return values


def _leaf_keys(values: dict, prefix: str = "") -> list[str]:
    """The dotted keys `values` sets: "optim.lr", "data.train_files", ..."""
    keys = []
    for key, value in values.items():
        keys += _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _user_layers(yaml_file: str | None, overrides: Sequence[str]) -> list[dict]:
    """The YAML file's values, then each override's, as plain dicts in the schema's types."""
    layers = [OmegaConf.to_container(read_yaml(yaml_file))] if yaml_file else []
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        try:
            layers.append(OmegaConf.to_container(OmegaConf.from_dotlist([override])))
        except yaml.YAMLError as exc:  # the value is parsed as YAML: "[a.txt" misses its bracket
            raise ConfigError(f"override {override!r}: its value is not valid YAML "
                              f"({getattr(exc, 'problem', None) or type(exc).__name__}); quote or fix it") from None
    return [_as_typed(Config, layer) for layer in layers]


# Keys that only some objectives read: set (to other than the default) with another objective they would be
# ignored, so setting one is a mistake (a copy-pasted command, a forgotten objective=...), refused at load rather
# than warned about in a long run's log. Defaults pass: a saved config.yaml given as --config lists every key.
OBJECTIVE_KEYS = {"rtd.": ("rtd",), "mt.": ("mt",),
                  "data.mask_prob": ("rtd", "mlm", "mt"), "data.mask_mode": ("rtd", "mlm", "mt"),
                  "data.whole_word_mask": ("rtd", "mlm", "mt")}


def _apply_explicit(cfg: Config, explicit: set[str]) -> Config:
    """What the keys the user set (in the YAML file or as key=value, not the recipe's) decide beyond their values.

    - An explicit `optim.lr` is the lr to train at: a recipe's `optim.lr_scaling` is turned off for it (unless the
      user set that too).
    - A key of `OBJECTIVE_KEYS` set to other than its default with an objective that ignores it is refused.
    """
    if "optim.lr" in explicit and "optim.lr_scaling" not in explicit:
        cfg.optim.lr_scaling = "none"
    ignored = sorted(key for key in explicit for prefix, objectives in OBJECTIVE_KEYS.items()
                     if key.startswith(prefix) and cfg.objective not in objectives and _differs_from_default(cfg, key))
    if ignored:
        users = sorted({o for prefix, objectives in OBJECTIVE_KEYS.items() for o in objectives
                        if ignored[0].startswith(prefix)})
        it = "it" if len(ignored) == 1 else "them"
        raise ConfigError(f"{', '.join(ignored)} set with objective={cfg.objective}, which ignores {it}; remove "
                          f"{it} or use objective={' or '.join(users)}")
    return cfg


def _differs_from_default(cfg: Config, dotted: str) -> bool:
    """Whether `cfg`'s value of a "section.key" differs from the schema's default for it."""
    section, key = dotted.split(".", 1)
    values = getattr(cfg, section)
    return getattr(values, key) != getattr(type(values)(), key)


def load_config(recipe: dict | None = None, yaml_file: str | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """Merge defaults, recipe, YAML and `key=value` overrides into a validated `Config`."""
    try:
        merged = OmegaConf.structured(Config)
        if recipe:
            merged = OmegaConf.merge(merged, OmegaConf.create(recipe))
        explicit = set()
        for layer in _user_layers(yaml_file, overrides):
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
            explicit.update(_leaf_keys(layer))
        return _apply_explicit(OmegaConf.to_object(merged), explicit)
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    except ValueError as exc:  # raised by the dataclasses' __post_init__ checks (model/implementations.py's too)
        raise ConfigError(str(exc)) from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
