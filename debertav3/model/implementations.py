"""Which function computes a layer's attention core: the reference or a registered fast path.

The core is the part of disentangled attention between the projections and the output dense (model/attention.py,
`eager_attention`): q, k, v and the relative tables in, the context out. The projections stay in the module, so
hooks, adapters and quantised Linear swaps apply on every path. The core is chosen by `ModelConfig.attention_impl`
(transformers' `attn_implementation` is the model for this):

    eager      the reference, plain PyTorch (model/attention.py)
    sdpa       the position terms as a bias to F.scaled_dot_product_attention (ops/sdpa_attention.py)
    cpu_fused  one autograd function for the CPU (ops/cpu_attention.py)
    auto       by device type, in `AUTO` and nowhere else

Names are checked against `NAMES` without importing anything; the fast paths register themselves when
debertav3/ops is imported (debertav3/__init__.py does, if the package is there). A model resolves its core once,
when it is built (`resolve`), for the device type it is built for.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError

REFERENCE = "eager"
NAMES = (REFERENCE, "sdpa", "cpu_fused")
COMPILES = (REFERENCE, "sdpa")  # traced by torch.compile; the others run the reference core inside a compiled step
# device type -> the core `auto` picks; a device not listed, or a fast path not registered, gets the reference.
AUTO: dict[str, str] = {"cpu": "cpu_fused", "cuda": "sdpa", "mps": "sdpa", "xpu": "sdpa"}

_registry: dict[str, Callable] = {}


def register(name: str, core: Callable) -> Callable:
    """Make `core` selectable as `attention_impl: name` (one of `NAMES`); returns it."""
    if name not in NAMES:
        raise KeyError(f"attention implementation {name!r} is not one of {NAMES}")
    _registry[name] = core
    return core


def check_name(name: str) -> None:
    """Raise a one-line error naming the config key and the choices unless `name` is a known choice."""
    if name != "auto" and name not in NAMES:
        raise ConfigError(f"model.attention_impl {name!r} is unknown; use one of {['auto', *NAMES]}")


def resolve_name(requested: str, device_type: str) -> str:
    """The implementation that runs for `requested` on a device of `device_type` ("cpu", "cuda", ...)."""
    if requested != "auto":
        return requested
    preferred = AUTO.get(device_type, REFERENCE)
    return preferred if preferred in _registry else REFERENCE


def resolve(name: str) -> Callable:
    """The core function registered as `name` (not `auto`: see `resolve_name`)."""
    if name not in _registry:
        raise ConfigError(f"model.attention_impl {name!r} is not available (debertav3.ops is not installed); "
                          f"use auto or {REFERENCE}")
    return _registry[name]
