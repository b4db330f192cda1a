"""A directory's manifest: the relative path, size and SHA-256 of every file in it, in `manifest.json`.

Written last, the manifest is a checkpoint's completion marker, and `verify` tells whether the directory still
holds exactly what was written: every listed file present, of its size, with its hash. Files are hashed in 1 MiB
chunks, right after they are written (so from the page cache): a manifest costs a fraction of the save it seals.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..io_utils import atomic_write_text

MANIFEST_FILE = "manifest.json"
CHUNK = 1 << 20


def file_sha256(path: Path, fsync: bool = False) -> str:
    """The file's SHA-256 (hex), read in chunks; with `fsync`, also flushed to disk through the same descriptor."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Flush every file below `directory` to disk and record it in `manifest.json` (itself written atomically).

    Call it once the directory is otherwise complete: the manifest is what marks it complete."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p, fsync=True)}
               for p in files}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps({"files": entries}, indent=1))


def read_manifest(directory: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}}; raises ValueError if there is no readable manifest."""
    try:
        return json.loads((directory / MANIFEST_FILE).read_text())["files"]
    except FileNotFoundError:
        raise ValueError(f"no {MANIFEST_FILE} (copied incompletely, or saved by a version without manifests)") \
            from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{MANIFEST_FILE} is not a valid manifest") from None


def verify(directory: Path) -> str | None:
    """None if `directory` matches its manifest; else why not, as a phrase naming the first bad file."""
    if not directory.is_dir():
        return "no such directory"
    try:
        entries = read_manifest(directory)
    except ValueError as exc:
        return str(exc)
    for name, entry in entries.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size < entry["size"]:
            return f"{name} is truncated ({size} of {entry['size']} bytes)"
        if size > entry["size"]:
            return f"{name} has grown ({size} bytes, {entry['size']} in the manifest)"
        if file_sha256(path) != entry["sha256"]:
            return f"{name} is corrupted (its SHA-256 differs from the manifest's)"
    return None
