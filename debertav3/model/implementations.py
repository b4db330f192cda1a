"""Which function computes each swappable piece of the network: the reference or a registered fast path.

Three pieces, each chosen by a `ModelConfig` key (transformers' `attn_implementation` is the model for this):

    attention  (`attention_impl`)  a layer's attention core, between its projections and its output dense
                                   (model/attention.py, `eager_attention`); the projections stay in the module, so
                                   hooks, adapters and quantised Linear swaps apply on every path
    mlm_loss   (`mlm_loss_impl`)   the generator's vocabulary step: tied projection, cross-entropy, accuracy,
                                   sampling (objective/losses.py, `eager_vocabulary_loss`); only the reference
                                   is registered: the slot for a fused cross-entropy kernel
    dropout    (`dropout_impl`)    dropout on hidden states (model/dropout.py, `F.dropout`)

`eager` is always the reference, plain PyTorch. The fast paths live in debertav3/ops and register themselves
when it is imported (debertav3/__init__.py does, if the package is there); each is held to its reference by the
tests. `auto` picks by device type in `AUTO` and nowhere else. Names are checked against `NAMES` without
importing anything, and a model resolves each choice once, when it is built, for the device type it is built for.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError

REFERENCE = "eager"
NAMES: dict[str, tuple[str, ...]] = {"attention": (REFERENCE, "sdpa", "cpu_fused"),
                                     "mlm_loss": (REFERENCE,),
                                     "dropout": (REFERENCE, "cpu_bits")}
CONFIG_KEYS = {kind: f"{kind}_impl" for kind in NAMES}  # the ModelConfig field that selects each kind
# device type -> the implementation `auto` picks, per kind; a device not listed, or a fast path not registered,
# gets the reference.
AUTO: dict[str, dict[str, str]] = {"attention": {"cpu": "cpu_fused", "cuda": "sdpa", "mps": "sdpa", "xpu": "sdpa"},
                                   "mlm_loss": {},
                                   "dropout": {"cpu": "cpu_bits"}}
# Traced by torch.compile; each of the others runs its reference inside a compiled step.
COMPILES: dict[str, tuple[str, ...]] = {"attention": (REFERENCE, "sdpa"), "mlm_loss": (REFERENCE,),
                                        "dropout": (REFERENCE,)}

_registry: dict[str, dict[str, Callable]] = {kind: {} for kind in NAMES}


def register(kind: str, name: str, implementation: Callable) -> Callable:
    """Make `implementation` selectable as `<kind>_impl: name` (one of `NAMES[kind]`); returns it."""
    if name not in NAMES[kind]:
        raise KeyError(f"{kind} implementation {name!r} is not one of {NAMES[kind]}")
    _registry[kind][name] = implementation
    return implementation


def check_name(kind: str, name: str) -> None:
    """Raise a one-line error naming the config key and the choices unless `name` is a known choice."""
    if name != "auto" and name not in NAMES[kind]:
        raise ConfigError(f"model.{CONFIG_KEYS[kind]} {name!r} is unknown; use one of {['auto', *NAMES[kind]]}")


def resolve_name(kind: str, requested: str, device_type: str) -> str:
    """The implementation that runs for `requested` on a device of `device_type` ("cpu", "cuda", ...)."""
    if requested != "auto":
        return requested
    preferred = AUTO[kind].get(device_type, REFERENCE)
    return preferred if preferred in _registry[kind] else REFERENCE


def resolve(kind: str, name: str) -> Callable:
    """The function registered as `name` (not `auto`: see `resolve_name`)."""
    if name not in _registry[kind]:
        raise ConfigError(f"model.{CONFIG_KEYS[kind]} {name!r} is not available (debertav3.ops is not installed); "
                          f"use auto or {REFERENCE}")
    return _registry[kind][name]


def default_device_type() -> str:
    """The device type modules are built on unless told otherwise: torch's default device (build under
    `with torch.device("cuda"):`, or resolve the config first with `ModelConfig.for_device`)."""
    return torch.get_default_device().type
