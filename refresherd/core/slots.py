"""
A job's fetch slots, shared by the fetches that requests wait for and the
background ones (warming, refresh-ahead, regeneration after a purge).

A job runs at most C{concurrency} fetches at once in a process.  Requests
come first: a slot that comes free goes to the fetch a request waits for
before any background one, background fetches hold at most
C{concurrency - 1} slots (so one is always free for a request; with
C{concurrency = 1} a background fetch starts only while no other fetch
runs), and background fetches waiting are not counted against
C{max_queue}.  A background fetch that a request comes to need is promoted
(L{Slots.promote}) and waits as a request's would.
"""

from __future__ import annotations

from collections import deque

import attrs
from twisted.internet.defer import Deferred, succeed


@attrs.define(eq=False)
class Slots:
    """The C{size} fetch slots of one job in this process."""

    size: int
    running: int = attrs.field(default=0, init=False)
    """Slots held, by fetches of either kind."""
    background: int = attrs.field(default=0, init=False)
    """Slots held by background fetches."""
    _requests: deque[Deferred[None]] = attrs.field(factory=deque, init=False)
    _waiting: deque[Deferred[None]] = attrs.field(factory=deque, init=False)
    """The background fetches waiting, first come first."""

    @property
    def queued(self) -> int:
        """Fetches that requests wait for, waiting for a slot (what C{max_queue} bounds)."""
        return len(self._requests)

    @property
    def free(self) -> int:
        return self.size - self.running

    def acquire(self) -> Deferred[None]:
        """A slot for a fetch a request waits for: at once, or before any background fetch."""
        if self.running < self.size:
            self.running += 1
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._forget)
        self._requests.append(waiter)
        return waiter

    def acquire_background(self) -> Deferred[None]:
        """A slot for a background fetch, when one may have it (see the module)."""
        if not self._requests and not self._waiting and self._background_may_start():
            self.running += 1
            self.background += 1
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._forget)
        self._waiting.append(waiter)
        return waiter

    def _forget(self, waiter: Deferred[None]) -> None:
        """A waiter cancelled: out of whichever queue holds it."""
        for queue in (self._requests, self._waiting):
            if waiter in queue:
                queue.remove(waiter)

    def promote(self, waiter: Deferred[None]) -> bool:
        """
        Make a waiting background fetch's C{waiter} wait as a request's
        (its slot will then be released with C{background=False}); False if
        it is not waiting (it already has its slot).
        """
        if waiter not in self._waiting:
            return False
        self._waiting.remove(waiter)
        self._requests.append(waiter)
        self._grant()
        return True

    def release(self, background: bool = False) -> None:
        """Give back a slot (a background one with C{background}) and hand it on."""
        self.running -= 1
        if background:
            self.background -= 1
        self._grant()

    def _background_may_start(self) -> bool:
        if self.running >= self.size:
            return False
        if self.size == 1:
            return self.running == 0
        return self.background < self.size - 1

    def _grant(self) -> None:
        while self._requests and self.running < self.size:
            self.running += 1
            self._requests.popleft().callback(None)
        while self._waiting and not self._requests and self._background_may_start():
            self.running += 1
            self.background += 1
            self._waiting.popleft().callback(None)
