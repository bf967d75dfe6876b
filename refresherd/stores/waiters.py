"""
Callers waiting for a key to change (L{IStore.wait_for_change}), shared by
every store: a store calls L{ChangeWaiters.notify} when it learns of a change,
and each waiter also fires at its own timeout.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime


@attrs.define(eq=False)
class ChangeWaiters:
    clock: IReactorTime
    _waiters: dict[str, dict[Deferred[None], IDelayedCall]] = attrs.field(
        init=False, repr=False, factory=dict
    )

    def wait(self, key: str, timeout: float) -> Deferred[None]:
        """
        A Deferred that fires on the next L{notify} of C{key} or after
        C{timeout} seconds; cancelling it forgets the waiter and its timer.
        """
        waiters = self._waiters.setdefault(key, {})

        def cancel(d: Deferred[None]) -> None:
            waiters.pop(d).cancel()
            self._forget(key, waiters)

        def timed_out() -> None:
            del waiters[d]
            self._forget(key, waiters)
            d.callback(None)

        d: Deferred[None] = Deferred(cancel)
        waiters[d] = self.clock.callLater(max(timeout, 0.0), timed_out)
        return d

    def notify(self, key: str) -> None:
        """Wake every waiter of C{key}."""
        # Popped first, so that a waiter that waits again from its callback
        # waits for the next change, not this one.
        for d, call in self._waiters.pop(key, {}).items():
            call.cancel()
            d.callback(None)

    def notify_all(self) -> None:
        """Wake every waiter: changes may have been missed, or the store is stopping."""
        for key in list(self._waiters):
            self.notify(key)

    def keys(self) -> set[str]:
        """The keys that have waiters."""
        return set(self._waiters)

    def _forget(self, key: str, waiters: dict[Deferred[None], IDelayedCall]) -> None:
        if not waiters and self._waiters.get(key) is waiters:
            del self._waiters[key]
