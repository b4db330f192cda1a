"""One run per output directory: `claim_output_dir` holds an exclusive lock on `<output_dir>/.lock`.

The lock is `fcntl.flock` on an open file: the kernel drops it when its holder's process ends, however it ends
(SIGKILL included), so a crashed run never leaves a stale lock. The holder writes "pid P on host H, since T" into
the file, which a refused run quotes.

All processes of one launch share the directory, so only the launch's main process takes the lock, and it tells
the others the outcome: every process of a refused launch stops at the same place. This is exact for single-node
launches. A multi-node launch needs its output_dir on a filesystem shared by all nodes anyway (every process
writes its RNG state into each checkpoint); there the lock excludes other launches only where flock works across
machines (Linux NFS clients emulate it with byte-range locks; other shared filesystems may keep it node-local).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path

from accelerate.utils import broadcast_object_list

from ..errors import UserError

LOCK_FILE = ".lock"


def _check_writable(out: Path) -> None:
    """Create `out` and write a file into it (each process of a launch: they may see different filesystems)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a name of its own, deleted on close
            pass
    except OSError as exc:
        raise UserError(f"train.output_dir {out} is not writable ({exc.strerror}); choose another") from None


def _lock(out: Path):
    """(the open lock file, None) if this process now holds the lock, else (None, why not as one line)."""
    handle = open(os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644), "r+")  # O_CREAT without truncating
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = handle.read().strip() or "holder unknown"  # empty if it has only just taken the lock
        handle.close()
        return None, f"{out} is in use by another run ({holder}); wait for it or choose another train.output_dir"
    except OSError as exc:
        handle.close()
        return None, (f"cannot lock {out / LOCK_FILE} ({exc.strerror}); choose a train.output_dir on a filesystem "
                      "that supports file locks")
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle, None


def _missing(out: Path) -> list[Path]:
    """`out` and its ancestors that do not exist yet, deepest first: what creating `out` creates."""
    missing, path = [], out.absolute()
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_bare(out: Path, created: list[Path]) -> None:
    """Undo the creation of `created` (deepest first) if the run left nothing in them but its lock file: a run
    refused at start-up leaves no new directory behind. A directory that holds anything else is kept, and so is
    every directory that existed before."""
    if os.listdir(out) != [LOCK_FILE]:
        return
    (out / LOCK_FILE).unlink()  # while still locked: a run opening it now finds it gone, not free
    for directory in created:
        try:
            os.rmdir(directory)  # fails on a directory that is not empty, which is kept
        except OSError:
            return


@contextlib.contextmanager
def claim_output_dir(output_dir: str | os.PathLike, accelerator):
    """Create `output_dir` and hold it exclusively for the block; UserError if it is not writable or in use.

    Every process of the launch enters it with its `accelerator` (the main process decides, and tells the others).
    If the block fails before anything but the lock was written in a directory it created, the directory goes.
    """
    out = Path(output_dir)
    created = _missing(out)
    _check_writable(out)
    handle, refusal = _lock(out) if accelerator.is_main_process else (None, None)
    refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise UserError(refusal)
    try:
        yield
    except BaseException:
        if handle is not None and created:
            _remove_if_bare(out, created)
        raise
    finally:
        if handle is not None:
            handle.close()  # releases the lock; the file stays (deleting it unlocked would race with a run
            # opening it), unless _remove_if_bare took it, and its directory, while still holding it
