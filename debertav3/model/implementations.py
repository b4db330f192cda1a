"""Which implementation runs each swappable piece of the network: the reference or a registered fast path.

Three pieces can be swapped, each chosen by a `ModelConfig` key (transformers' `attn_implementation` is the
model for this):

    attention  (`attention_impl`)  one layer's disentangled attention, from its input to the projected output
    mlm_loss   (`mlm_loss_impl`)   the generator's vocabulary step: tied projection, cross-entropy, accuracy, sampling
    dropout    (`dropout_impl`)    the dropout applied to hidden states

`"eager"` is always the reference: plain PyTorch in debertav3/model and debertav3/objective, ordinary autograd,
the formulas as the papers write them. Fast paths live in debertav3/ops and register themselves here when that
package is imported; each is tested against its reference twin (tests/test_attention_impls.py,
tests/test_mlm_loss_impls.py, tests/test_hooks.py). Without debertav3/ops the reference runs and the model still
trains (tests/test_without_ops.py). `"auto"` picks by device in `AUTO`, and nowhere else.
"""

from __future__ import annotations

import importlib
from typing import Callable

KINDS = ("attention", "mlm_loss", "dropout")
CONFIG_KEYS = {kind: f"{kind}_impl" for kind in KINDS}  # the ModelConfig field that selects each kind
REFERENCE = "eager"

# device type -> the implementation `auto` prefers, per kind; a device not listed (or a fast path that is not
# available) gets the reference.
AUTO: dict[str, dict[str, str]] = {
    "attention": {"cpu": "cpu_fused", "cuda": "sdpa", "mps": "sdpa", "xpu": "sdpa"},
    "mlm_loss": {"cpu": "chunked", "cuda": "chunked", "mps": "chunked", "xpu": "chunked"},
    "dropout": {"cpu": "cpu_bits"},
}

_registry: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}
_fast_paths_loaded = False


def register(kind: str, name: str, implementation: Callable) -> Callable:
    """Make `implementation` selectable as `<kind>_impl: name`; returns it (usable as a decorator's body)."""
    if kind not in _registry:
        raise KeyError(f"unknown implementation kind {kind!r}; one of {KINDS}")
    _registry[kind][name] = implementation
    return implementation


def _load_fast_paths() -> None:
    """Import debertav3.ops once, which registers its implementations; without it only the reference exists."""
    global _fast_paths_loaded
    if _fast_paths_loaded:
        return
    _fast_paths_loaded = True
    try:
        importlib.import_module("debertav3.ops")
    except ModuleNotFoundError as exc:
        if exc.name != "debertav3.ops":  # a fast path that is there but broken is a bug: show it
            raise


def available(kind: str) -> list[str]:
    """The names `<kind>_impl` accepts: auto, the reference and every registered fast path."""
    _load_fast_paths()
    return ["auto", REFERENCE] + sorted(n for n in _registry[kind] if n != REFERENCE)


def check_name(kind: str, name: str) -> None:
    """Raise a one-line ValueError naming the config key and the choices unless `name` is selectable."""
    if name not in available(kind):
        raise ValueError(f"model.{CONFIG_KEYS[kind]} {name!r} is not available; use one of {available(kind)}")


def resolve_name(kind: str, requested: str, device_type: str) -> str:
    """The implementation that runs for `requested` on a device of `device_type` ("cpu", "cuda", ...)."""
    _load_fast_paths()
    if requested == "auto":
        preferred = AUTO[kind].get(device_type, REFERENCE)
        return preferred if preferred in _registry[kind] else REFERENCE
    return requested


def resolve(kind: str, requested: str, device_type: str) -> Callable:
    """The registered callable for `requested` (see `resolve_name`)."""
    name = resolve_name(kind, requested, device_type)
    try:
        return _registry[kind][name]
    except KeyError:
        raise ValueError(f"model.{CONFIG_KEYS[kind]} {name!r} is not available; use one of {available(kind)}") \
            from None
