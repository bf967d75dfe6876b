"""The circuit breaker the client keeps per listener, and its defaults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs

DEFAULT_CIRCUIT_FAILURES = 3
"""Failures to reach a listener in a row after which the circuit opens."""
DEFAULT_CIRCUIT_COOLDOWN = 5.0
"""Seconds an open circuit fails at once before one trial request is let through."""


@attrs.define
class CircuitBreaker:
    """
    Counts the failures to reach one listener.  After C{failures} of them in a
    row the circuit is open: L{check} refuses every request for C{cooldown}
    seconds, then lets one trial request through (half open), whose outcome
    closes the circuit or opens it for another C{cooldown}.  Any answer of the
    service, an error answer included, counts as reaching it.  C{failures} 0
    turns the breaker off.  Thread-safe; C{clock} gives monotonic seconds.
    """

    failures: int = DEFAULT_CIRCUIT_FAILURES
    cooldown: float = DEFAULT_CIRCUIT_COOLDOWN
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _failed: int = attrs.field(default=0, init=False)
    _open_until: float | None = attrs.field(default=None, init=False)
    _trial: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise TypeError("failures must be an integer")
        if self.failures < 0:
            raise ValueError(f"failures must be 0 (no breaker) or more, not {self.failures}")
        if not self.cooldown > 0:
            raise ValueError(
                f"the cooldown must be a positive number of seconds, not {self.cooldown!r}"
            )

    @property
    def state(self) -> str:
        """C{"closed"}, C{"open"} or C{"half-open"} (a trial request is under way)."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._trial else "open"

    def check(self) -> str | None:
        """
        L{None} when a request may be sent now, which must then be followed by
        exactly one of L{succeeded}, L{failed} or L{abandoned}; else why not,
        in words for a message.
        """
        if self.failures == 0:
            return None
        with self._lock:
            if self._open_until is None:
                return None
            if self._trial:
                return f"circuit open after {self._failed} failures in a row; a trial is under way"
            left = self._open_until - self.clock()
            if left > 0:
                return (
                    f"circuit open after {self._failed} failures in a row; next try in {left:.1f} s"
                )
            self._trial = True
            return None

    def succeeded(self) -> bool:
        """The service answered: close the circuit.  True if it was open."""
        with self._lock:
            was_open = self._open_until is not None
            self._failed = 0
            self._open_until = None
            self._trial = False
            return was_open

    def failed(self) -> bool:
        """The service could not be reached: count it.  True if the circuit opens now."""
        if self.failures == 0:
            return False
        with self._lock:
            self._trial = False
            self._failed += 1
            if self._failed < self.failures:
                return False
            opens = self._open_until is None
            self._open_until = self.clock() + self.cooldown
            return opens

    def abandoned(self) -> None:
        """The request ended neither way (a bug, an interrupt): let another trial through."""
        with self._lock:
            self._trial = False
