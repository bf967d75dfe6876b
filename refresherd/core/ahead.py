"""
Refresh-ahead of the hottest keys, and their regeneration right after a soft
purge (docs/README.md, "Background refreshes").

For each job with C{keep_hot = N}, once a second, the N keys this process's
requests asked for most lately (L{HotSource}) are looked at, and each that
would go stale within its lead (twice its last refresh's duration, from
asking for a slot to the write, at least 1 s, plus the second until the
next look) is refreshed in the background
(reason C{hot}).  A key that cools down leaves the top N and is no longer
refreshed.  After a soft purge, the hot keys it covers (by key, by job, or
by tag: the job's tags and the tags of their own the entries carried) are
refreshed at once (reason C{purge}).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from refresherd.core.jobs import Target
from refresherd.errors import RefresherdError

if typing.TYPE_CHECKING:
    from refresherd.core.refresher import Answer, Refresher

TICK = 1.0
"""Seconds between looks at the hottest keys."""

MIN_LEAD = 1.0
"""The shortest lead: a hot key is refreshed at least this long before it would go stale."""


class Hot(typing.Protocol):
    @property
    def key(self) -> str: ...

    @property
    def args(self) -> Mapping[str, str]: ...


class HotSource(typing.Protocol):
    """What the hot keys come from: the process's sketch of its requests."""

    def top(self, job: str, now: float, n: int | None = None) -> Sequence[Hot]: ...


def lead(duration: float) -> float:
    """
    How long before a hot key would go stale it is refreshed: twice its
    refresh (its fetch, or the wait for a slot and the fetch), 1 s at least.
    """
    return max(MIN_LEAD, 2 * duration) + TICK


@attrs.define(eq=False)
class Ahead:
    """Keeps each C{keep_hot} job's hottest keys fresh, and regenerates them after purges."""

    refresher: Refresher
    hot: HotSource
    clock: IReactorTime
    _due: dict[str, tuple[float, float]] = attrs.field(factory=dict, init=False)
    """
    When each hot key is next to be refreshed (its C{fresh_until} minus its
    lead), and that lead.
    """
    _running: set[str] = attrs.field(factory=set, init=False)
    _loop: LoopingCall | None = attrs.field(default=None, init=False)
    _log: Logger = attrs.field(factory=Logger, init=False)

    @property
    def jobs(self) -> dict[str, int]:
        """The jobs that keep keys hot, and how many."""
        return {
            name: job.config.keep_hot
            for name, job in self.refresher.jobs.items()
            if job.config.keep_hot > 0
        }

    def start(self) -> None:
        if not self.jobs:
            return
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(TICK, now=False).addErrback(
            lambda f: self._log.failure("Refresh-ahead stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def hottest(self, now: float) -> list[Target]:
        """The targets of the hottest keys of every C{keep_hot} job."""
        targets = []
        for name, count in self.jobs.items():
            for hot in self.hot.top(name, now, count):
                try:
                    targets.append(self.refresher.target(name, hot.args))
                except RefresherdError:  # the job changed since: not a key of it now
                    continue
        return targets

    def tick(self) -> None:
        """Refresh each hottest key that would go stale before its lead."""
        now = self.clock.seconds()
        hottest = self.hottest(now)
        keys = {target.key for target in hottest}
        for key in [key for key in self._due if key not in keys]:
            del self._due[key]  # cooled down
        for target in hottest:
            if now >= self._due.get(target.key, (0.0, 0.0))[0]:
                self._refresh(target, "hot")

    def regenerate(self, keys: Iterable[str], jobs: Iterable[str], tags: Iterable[str]) -> int:
        """
        After a soft purge of C{keys}, C{jobs} and C{tags}: refresh at once the
        hottest keys it covers; how many were started.
        """
        covered = self.refresher.covered(self.hottest(self.clock.seconds()), keys, jobs, tags)
        for target in covered:
            self._due.pop(target.key, None)
            self._refresh(target, "purge")
        return len(covered)

    def _refresh(self, target: Target, reason: str) -> None:
        if target.key in self._running:
            return
        self._running.add(target.key)
        key = target.key
        ahead = self._due.get(key, (0.0, lead(0.0)))[1]
        started = self.clock.seconds()

        def done(answer: Answer) -> None:
            entry = answer.entry
            now = self.clock.seconds()
            if entry is None or entry.is_failure:
                self._due[key] = (now + TICK, ahead)
            else:
                # Twice the whole refresh when it took longer than its fetch (it waited
                # for a slot behind requests): the next one starts that much earlier.
                took = now - started if answer.status == "miss" else 0.0
                ahead_next = max(lead(entry.duration), lead(took))
                due = max(entry.fresh_until - ahead_next, entry.retry_at)
                self._due[key] = (due, ahead_next)

        def failed(reason: object) -> None:
            # Looked at again next time: refresh_background waits out a backoff itself.
            self._due[key] = (self.clock.seconds() + TICK, ahead)

        def finished(_: object) -> None:
            self._running.discard(key)

        d: Deferred[Answer] = Deferred.fromCoroutine(
            self.refresher.refresh_background(target, reason, ahead)
        )
        d.addCallbacks(done, failed).addBoth(finished)


def after_purge(ahead: Ahead) -> Callable[[list[str], list[str], list[str], bool], None]:
    """The hook a L{Refresher} calls after a purge: soft purges regenerate hot keys."""

    def purged(keys: list[str], jobs: list[str], tags: list[str], soft: bool) -> None:
        if soft:
            ahead.regenerate(keys, jobs, tags)

    return purged
