"""
SIGTERM and SIGINT: the first stops the service gracefully, a second ends the
process at once.  SIGHUP reloads the configuration (ignored by a worker of
C{--workers}: its parent reloads).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.error import ReactorNotRunning


@attrs.define
class ShutdownSignals:
    """
    The first SIGTERM or SIGINT stops the service gracefully; a second one
    ends the process at once (twistd's own handler would only log
    C{ReactorNotRunning}), after calling C{at_once} (the parent of
    C{--workers} kills its workers there).
    """

    reactor: Any
    at_once: Callable[[], None] = lambda: None
    reload: Callable[[], object] | None = None
    """What SIGHUP does, in the reactor's thread (None: SIGHUP is ignored)."""

    def install(self) -> None:
        """Handle the signals from now on (once the reactor runs: it installs its own)."""
        signal.signal(signal.SIGTERM, self._first)
        signal.signal(signal.SIGINT, self._first)
        signal.signal(signal.SIGHUP, signal.SIG_IGN if self.reload is None else self._hangup)

    def guard(self) -> None:
        """
        Handle the signals now, and again once the reactor runs and has put
        its own handlers in place: a SIGTERM that arrives between start-up and
        the reactor's first turn stops gracefully too, never by the default
        action that would kill the process.
        """
        self.install()
        # The reactor installs its sigTerm and sigInt when it starts (and would
        # make the process exit by the signal): have it install these instead.
        self.reactor.sigTerm = self._first
        self.reactor.sigInt = self._first
        self.reactor.callWhenRunning(self.install)

    def stop(self) -> None:
        """Stop gracefully, as the first signal does; a signal after this ends the process."""
        self._second_ends_all()
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _second_ends_all(self) -> None:
        signal.signal(signal.SIGTERM, self._second)
        signal.signal(signal.SIGINT, self._second)

    def _hangup(self, signum: int, frame: object) -> None:
        if self.reload is not None:
            self.reactor.callFromThread(self.reload)

    def _first(self, signum: int, frame: object) -> None:
        self._second_ends_all()
        self.reactor.callFromThread(self._stop_reactor)

    def _second(self, signum: int, frame: object) -> None:
        try:
            self.at_once()
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
