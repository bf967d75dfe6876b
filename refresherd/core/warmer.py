"""
Warm lists (docs/configuration.md, C{warm} and C{warm_file}): the argument
sets of a job kept ready with no request.

At start-up every warm key is refreshed once (reason C{warm}, through
L{Refresher.refresh_background}, so a value still fresh is not fetched);
after each refresh its next one is timed by the entry it left: a lead before
its C{fresh_until} (L{lead}), never before its C{retry_at} nor closer than
C{min_refresh} to its fetch, or after a backoff when it failed.  In a fleet
on one store each process keeps its own timers, and the lease and the
entry's actual C{fresh_until} make each refresh one fetch.  One timer per
warm key; at most C{concurrency - 1} refreshes of a job run at once here
(the background slots are no more), the others wait their turn in order.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from refresherd.core import policy
from refresherd.core.jobs import Target
from refresherd.core.refresher import Refresher
from refresherd.entry import Entry
from refresherd.errors import RefresherdError, StoreUnavailable

MIN_LEAD = 1.0
"""The least a warm key is refreshed before its value stops being fresh, in seconds."""
MIN_PAUSE = 0.1
"""The least time between two refreshes of one warm key, whatever its entry says."""
SLACK = 0.01
"""Added to the lead given to a refresh, so that one due at its time is not found fresh."""
UNAVAILABLE_BACKOFF = 1.0
"""Base of the backoff after a refresh the store did not let happen (its outage)."""
UNAVAILABLE_CAP = 30.0


def lead(entry: Entry) -> float:
    """How long before C{entry} stops being fresh its warm key is refreshed: twice its fetch."""
    return max(MIN_LEAD, 2 * entry.duration)


def next_refresh(now: float, entry: Entry, min_refresh: float) -> float:
    """
    When a warm key whose value is C{entry} is refreshed next: L{lead}
    before it stops being fresh, never before its C{retry_at}, nor less than
    C{min_refresh} after it was fetched, nor less than L{MIN_PAUSE} from now.
    """
    return max(
        entry.fresh_until - lead(entry),
        entry.retry_at,
        entry.fetched_at + min_refresh,
        now + MIN_PAUSE,
    )


def retry_after_failure(
    now: float, entry: Entry | None, failures: int, error_ttl: float, rand: float
) -> float:
    """
    When a warm key whose refresh failed for the C{failures}-th time in a
    row is tried again: at the C{retry_at} of what the store holds (the
    backoff of a value, or a failure remembered for C{error_ttl}), else
    after a backoff of our own on the same scale.
    """
    if entry is not None and entry.retry_at > now:
        return entry.retry_at
    base = max(error_ttl, 1.0)
    return now + policy.backoff(failures - 1, base, policy.REFRESH_BACKOFF_CAP, rand)


@attrs.define(eq=False)
class _Key:
    """One warm key: its target, its timer and how its refreshes go."""

    target: Target
    lead: float = MIN_LEAD
    failures: int = 0
    unavailable: int = 0
    timer: IDelayedCall | None = None
    reason: str = "warm"
    """Why its next refresh runs: C{warm}, or C{purge} right after a soft purge covering it."""


@attrs.define(eq=False)
class _Lane:
    """The warm refreshes of one job: at most C{limit} at once, the others in order."""

    limit: int
    active: int = 0
    due: deque[_Key] = attrs.field(factory=deque)


@attrs.define(eq=False)
class Warmer(Service):
    """Keeps the warm keys of every job ready (see the module)."""

    refresher: Refresher
    clock: IReactorTime
    random: Callable[[], float] = random.random
    keys: list[_Key] = attrs.field(init=False, factory=list)
    _lanes: dict[str, _Lane] = attrs.field(init=False, factory=dict)
    _starting: IDelayedCall | None = attrs.field(init=False, default=None)
    _log: Logger = attrs.field(factory=Logger, init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)
        for name, job in self.refresher.jobs.items():
            if not job.config.warm:
                continue
            self._lanes[name] = _Lane(max(1, job.config.concurrency - 1))
            for args in job.config.warm:
                # Resolved, not remembered: the requests' targets stay theirs.
                self.keys.append(_Key(self.refresher.targets.resolve(name, args)))
        self.refresher.purge_listeners.append(self.purged)

    def purged(self, keys: list[str], jobs: list[str], tags: list[str], soft: bool) -> None:
        """After a soft purge: refresh at once the warm keys it covers (reason C{purge})."""
        if not soft or not self.running:
            return
        targets = [key.target for key in self.keys]
        covered = {target.key for target in self.refresher.covered(targets, keys, jobs, tags)}
        for key in self.keys:
            if key.target.key not in covered:
                continue
            if key.timer is None or not key.timer.active():
                continue  # refreshing now, or queued: it reads the purge anyway
            key.timer.cancel()
            key.reason = "purge"
            self._due(key)

    def startService(self) -> None:
        """Warm every key once the reactor runs (after the start-up lines)."""
        Service.startService(self)
        if self.keys:
            self._starting = self.clock.callLater(0, self._start)

    def _start(self) -> None:
        self._starting = None
        self._log.info(
            "refresherd: warming {count} key(s) of {jobs}",
            count=len(self.keys),
            jobs=", ".join(sorted(self._lanes)),
        )
        for key in self.keys:
            self._due(key)

    def stopService(self) -> None:
        """No more refreshes start; those running finish with the refresher's drain."""
        Service.stopService(self)
        if self._starting is not None and self._starting.active():
            self._starting.cancel()
        self._starting = None
        for key in self.keys:
            if key.timer is not None and key.timer.active():
                key.timer.cancel()
            key.timer = None
        for lane in self._lanes.values():
            lane.due.clear()

    @property
    def timers(self) -> int:
        """How many warm keys wait for their next refresh."""
        return sum(1 for key in self.keys if key.timer is not None and key.timer.active())

    def _due(self, key: _Key) -> None:
        key.timer = None
        lane = self._lanes[key.target.job.name]
        lane.due.append(key)
        self._pump(lane)

    def _pump(self, lane: _Lane) -> None:
        while self.running and lane.due and lane.active < lane.limit:
            key = lane.due.popleft()
            lane.active += 1
            done = Deferred.fromCoroutine(self._refresh(key))
            done.addBoth(lambda _: self._finished(lane))

    def _finished(self, lane: _Lane) -> None:
        lane.active -= 1
        self._pump(lane)

    async def _refresh(self, key: _Key) -> None:
        """Refresh one warm key, then set its timer (unless the service stopped meanwhile)."""
        target, config = key.target, key.target.job.config
        try:
            reason, key.reason = key.reason, "warm"
            answer = await self.refresher.refresh_background(target, reason, key.lead + SLACK)
        except StoreUnavailable:
            key.unavailable += 1
            at = self.clock.seconds() + policy.backoff(
                key.unavailable - 1, UNAVAILABLE_BACKOFF, UNAVAILABLE_CAP, self.random()
            )
        except RefresherdError:  # The fetch failed (logged), or the service stops.
            key.failures += 1
            key.unavailable = 0
            entry = await self._stored(target)
            at = retry_after_failure(
                self.clock.seconds(), entry, key.failures, config.error_ttl, self.random()
            )
        except Exception:
            self._log.failure("Warm refresh of {key} failed", key=target.key)
            key.failures += 1
            at = retry_after_failure(
                self.clock.seconds(), None, key.failures, config.error_ttl, self.random()
            )
        else:
            key.failures = key.unavailable = 0
            assert answer.entry is not None
            key.lead = lead(answer.entry)
            at = next_refresh(self.clock.seconds(), answer.entry, config.min_refresh)
        if self.running:
            key.timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._due, key)

    async def _stored(self, target: Target) -> Entry | None:
        """What the store holds for C{target} after a failed refresh (None if it does not say)."""
        try:
            entry: Entry | None = await self.refresher.store.get(target.key)
        except StoreUnavailable:
            return None
        return entry
