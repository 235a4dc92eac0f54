"""Preemption: SIGTERM/SIGINT only set a flag; the training loop saves a checkpoint and exits at
the next step boundary (tailor_jax.train.loop)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np


def _stderr(message: str) -> None:
    print(f"tailor-jax: {message}", file=sys.stderr, flush=True)


class PreemptionFlag:
    """Set by SIGTERM/SIGINT (see `install_preemption_handler`); checked once per step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signal_name: str = "request") -> None:
        self.signal_name = signal_name
        self._event.set()

    def reached(self, step: int) -> bool:
        """True when the loop should save and stop after `step`; the same answer on every process.

        With several processes a signal may reach only some hosts, and a save needs all of them,
        so the flags (and JAX's preemption sync point, when its service runs) are OR-ed across
        processes with one small all-gather per call.
        """
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        local = self.requested
        try:
            local = bool(multihost_utils.reached_preemption_sync_point(step)) or local
        except RuntimeError:  # the preemption sync service is not running
            pass
        return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

    def uninstall(self) -> None:
        """Put back the signal handlers that were there before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def install_preemption_handler(
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    *,
    log: Callable[[str], None] = _stderr,
) -> PreemptionFlag:
    """Make SIGTERM/SIGINT request a save-and-exit at the current step instead of killing.

    The handler only sets a flag (saving inside a signal handler could deadlock). A second
    SIGINT while the flag is set raises KeyboardInterrupt, so Ctrl-C twice still stops a hung run.
    Must be called from the main thread.
    """
    flag = PreemptionFlag()

    def handle(signum, frame):
        name = signal.Signals(signum).name
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.request(name)
        log(f"received {name}: saving a checkpoint at the current step, then exiting")

    for signum in signals:
        flag._previous[signum] = signal.signal(signum, handle)
    return flag
