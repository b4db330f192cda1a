"""How every command line reports a user's mistake or Ctrl-C: one line on stderr and an exit status, no traceback.

- A mistake in the input, a `UserError` (`ConfigError`, `CheckpointError`, `AblationError`, ...: debertav3.errors;
  every check of the user's config, files and paths raises one), prints `error: <message>` and exits with status
  2, the status argparse gives its own usage errors.
- A failure of the machine no check caught first (an `OSError` of a full disk or quota, a read-only filesystem,
  an I/O error, a denied permission: ENVIRONMENT_ERRNOS) prints `error: <path>: <reason>; <hint>`, status 2.
- argparse's own errors (a missing option, a number that is not one) are one line too (`ArgumentParser`).
- Ctrl-C (SIGINT) prints `interrupted: <what is left and how to go on>` and exits with status 130 (128 + SIGINT,
  the shells' convention). Inside the training loop `train.signals.StopRequests` takes SIGINT over instead
  (finish the step, save a checkpoint, exit 0).

Any other exception, a plain `ValueError` or a `FileNotFoundError` included, is a bug of ours and keeps its
traceback: a path the user gave is checked, or its OSError converted to a `UserError` naming the option, where it
is opened.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import warnings
from typing import Callable, Optional, TypeVar

from .errors import CollapseWarning, ScheduleWarning, UserError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
# OSErrors that say what the machine lacks (space, quota, a writable or working disk, a permission), not what the
# code did wrong: reported in one line, wherever they come from.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})
T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its own usage errors (a missing option, an invalid number) on one line too:
    `error: <argparse's reason> (see <prog> --help)`, status 2, without the usage text before it."""

    def error(self, message: str):
        report("error", f"{message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def one_line(message: str) -> str:
    """`message` on one line: a wrapped library message must not break the one-line contract."""
    return " ".join(message.split())


def report(kind: str, message: str) -> None:
    """`kind: message` as the last line on stderr: progress bars the failed work left open are closed first, or
    they would be drawn again below it when the interpreter collects them."""
    progress = sys.modules.get("tqdm")
    for bar in list(progress.tqdm._instances) if progress else ():
        bar.close()
    print(f"{kind}: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def one_line_warnings():
    """The project's own warnings (debertav3.errors) as one line `warning: message` on stderr, without Python's
    file, line number and source line; any other warning is shown as Python shows it."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (CollapseWarning, ScheduleWarning)):
            print(f"warning: {one_line(str(message))}", file=sys.stderr if file is None else file, flush=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


@contextlib.contextmanager
def interrupts_for_this_process_only():
    """Within the block Ctrl-C raises KeyboardInterrupt here as usual, while the processes forked meanwhile
    (datasets' tokenizing pool) ignore it: a terminal sends SIGINT to the whole process group, and each worker
    would print a traceback of its own. The parent's KeyboardInterrupt closes the pool, which ends them."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() == owner:
            raise KeyboardInterrupt

    def unraisable(info):
        # Where Python cannot raise (an at-fork callback such as logging's _releaseLock, a __del__), the
        # KeyboardInterrupt would be printed as "Exception ignored" with its traceback, and lost: send the
        # signal again a moment later, from a thread, for the main thread to take.
        if issubclass(info.exc_type, KeyboardInterrupt) and os.getpid() == owner:
            threading.Timer(0.01, os.kill, (owner, signal.SIGINT)).start()
        else:
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGINT, handle), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


@contextlib.contextmanager
def _ending():
    """The way out after Ctrl-C. Further Ctrl-Cs are ignored while the block reports, and end the process at once
    afterwards: whatever the way out still runs (atexit handlers, the interpreter's shutdown) must not turn one
    into a traceback. The child processes the interrupted work left behind are stopped, since the exit waits for
    them: a second Ctrl-C can cut short the shutdown of datasets' manager process, which ignores SIGINT itself.
    Errors Python cannot raise from here on are dropped: they come from objects the interrupt left half-built (a
    process pool cut off inside its __init__, whose __del__ then fails on a missing attribute), and the command has
    already said how it ended."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.unraisablehook = lambda info: None
    yield
    for name in ("multiprocessing", "multiprocess"):
        module = sys.modules.get(name)
        for child in module.active_children() if module else ():
            child.terminate()
            child.join(timeout=1)
            if child.is_alive():
                child.kill()
    if main:
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(EXIT_INTERRUPTED))


def guarded(action: Callable[[], T], interrupted: str | Callable[[], str],
            hint: str = "check the path, its permissions and the free space") -> tuple[int, Optional[T]]:
    """(0, action()), or (exit status, None) after one line on stderr for a user's mistake or Ctrl-C.

    `interrupted` (or what it returns, when Ctrl-C came) says what was kept and how to go on; `hint` ends the line
    of an `OSError`. After Ctrl-C the command is ending (`_ending`).
    """
    try:
        with interrupts_for_this_process_only(), one_line_warnings():
            return 0, action()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or _raised_while_interrupted(exc):
            with _ending():
                report("interrupted", interrupted() if callable(interrupted) else interrupted)
            return EXIT_INTERRUPTED, None
        if isinstance(exc, UserError):
            report("error", str(exc) or type(exc).__name__)
            return EXIT_USAGE, None
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            report("error", f"{exc.filename or 'a file'}: {exc.strerror or exc}; {hint}")
            return EXIT_USAGE, None
        raise


def _raised_while_interrupted(exc: BaseException) -> bool:
    """Whether `exc` came from cleaning up after Ctrl-C: datasets' pool, waiting for its workers in a `finally`,
    replaces the KeyboardInterrupt with a TimeoutError whose context it is."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False
