"""Checks of user-supplied values and paths that every layer of the package may use, each failing with one line.

A failed check raises `ConfigError` (a value) or `UserError` (a path; both in debertav3.errors): its message names
the key or option, the value and what is allowed, and the entry points report it as `error: <message>` with exit
status 2 (debertav3/usage.py).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

from .errors import ConfigError, UserError

_INTERVAL = re.compile(r"^([\[(])(\S+), (\S+)([\])])$")


def check_number(key: str, value: float, allowed: str) -> None:
    """Raise a one-line ConfigError naming `key` unless `value` is a finite number that is `allowed`.

    `allowed` is "> 0", ">= 0" or an interval as written in mathematics, "[0, 1)" or "(0, 1]". NaN and the
    infinities always fail: every comparison with NaN is false, so without this check a NaN passes `x <= 0`.
    """
    if allowed in ("> 0", ">= 0"):
        ok = value > 0 if allowed == "> 0" else value >= 0
        wanted = f"a finite number {allowed}"
    else:
        opening, low, high, closing = _INTERVAL.match(allowed).groups()
        ok = (float(low) < value if opening == "(" else float(low) <= value) and \
             (value < float(high) if closing == ")" else value <= float(high))
        wanted = f"in {allowed}"
    if not (ok and math.isfinite(value)):
        raise ConfigError(f"{key} must be {wanted}, got {value}")


def check_positive(section: str, obj, names: tuple[str, ...]) -> None:
    """Raise a one-line ConfigError for the first of the integer fields `names` of `obj` that is not >= 1."""
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {getattr(obj, name)}")


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raise a one-line UserError unless the directory `path` exists and is writable, or can be created.

    The nearest existing ancestor must be a directory in which a new entry can be made; the probe is a temporary
    directory removed at once, so a refused command leaves nothing behind (not even `path`'s parents).
    """
    path = Path(path).absolute()
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{option} {path} cannot be created: {ancestor} is a file, not a directory; choose "
                        f"another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=ancestor))
    except OSError as exc:
        raise UserError(f"{option} {path} is not writable ({exc.strerror} in {ancestor}); choose another "
                        f"{option}") from None
