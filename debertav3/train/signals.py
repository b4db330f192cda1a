"""Graceful stop on SIGTERM / SIGINT: finish the step in progress, write a checkpoint, exit with a message.

Preemptible machines send SIGTERM before they take the machine away; Ctrl-C sends SIGINT. The first signal only
sets a flag that the loop reads between steps; a second one stops at once (the last checkpoint stays valid,
since checkpoints are written atomically). Outside the loop (reading the config, tokenizing, loading) Ctrl-C ends
the command with one line `interrupted: ...` and status 130, and so does the second signal here, which surfaces
as a KeyboardInterrupt (`debertav3.usage.guarded`, around the whole command).
"""

from __future__ import annotations

import signal
import threading


class StopRequests:
    """Context manager that turns SIGTERM / SIGINT into a flag (`received`: the signal's name, or None)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # the second signal: give up on the graceful path
            self.__exit__()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
