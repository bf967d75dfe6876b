"""
What a process keeps while its shared store does not answer.

Without it, every request during an outage would be its own origin fetch (the
value fetched is given to its callers, and not kept anywhere).  The values
fetched meanwhile are kept here instead, in this process only, bounded in
bytes (least recently used first), each for at most its C{fresh} and
L{KEPT_AT_MOST} seconds, since a purge made elsewhere cannot reach it, and
never served stale.  The first read the store answers again drops them all.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

from refresherd.entry import Entry
from refresherd.stores.memory import MemoryStore

KEPT_AT_MOST = 30.0
"""Seconds a value fetched during an outage is served from this process at most."""

DEFAULT_OUTAGE_BYTES = 16 * 1024 * 1024
"""What the values kept during an outage may take (L{MemoryStore}'s estimate)."""


@attrs.define(eq=False)
class Outage:
    """The values fetched while the store did not answer; C{max_bytes} 0 keeps none."""

    clock: IReactorTime
    max_bytes: int = DEFAULT_OUTAGE_BYTES
    _kept: MemoryStore | None = attrs.field(default=None, init=False)

    @property
    def holding(self) -> bool:
        """Whether anything is kept (until L{clear})."""
        return self._kept is not None

    def keep(self, key: str, entry: Entry) -> None:
        """Keep C{entry}, fresh for at most L{KEPT_AT_MOST} seconds and never stale."""
        now = self.clock.seconds()
        until = min(entry.fresh_until, now + KEPT_AT_MOST)
        if self.max_bytes <= 0 or entry.is_failure or until <= now:
            return
        if self._kept is None:
            self._kept = MemoryStore(self.clock, self.max_bytes)
        kept = attrs.evolve(entry, fresh_until=until, stale_until=until, error_until=until)
        self._kept.put(key, kept, until - now)

    def get(self, key: str) -> Entry | None:
        """The value kept for C{key}, if any."""
        if self._kept is None:
            return None
        return self._kept.read_at_hand(key, ())[0]

    def clear(self) -> None:
        """The store answers again: what it holds is the truth."""
        self._kept = None
