"""
Refresh-ahead of the hottest keys, and their regeneration right after a soft
purge (docs/README.md, "Background refreshes").

For each job with C{keep_hot = N}, once a second, the keys this process's
requests asked for most lately (L{HotSource}) are looked at: the N hottest
are kept hot, and a key kept already stays kept while it is among the 2N
hottest (so that a key near the bottom of the N, whose rank moves with the
sketch's noise, keeps its schedule).  Only keys asked at least once per
C{fresh} (by their estimated rate, read as a steady rate would be by a sketch
as young as theirs) are kept: refreshing ahead a key asked
more rarely spares no request a stale answer but costs a fetch per C{fresh}
that no request would have caused.  The job's sketch is made to hold at
least 10N keys (L{SKETCH_PER_KEPT}), so that the N-th hottest key's rate is
told from the others'.  Each key kept is refreshed in the background
(reason C{hot}) at its own time: when it would go stale within its lead
(twice its last refresh's duration, from asking for a slot to the write, at
least 1 s or a tenth of C{fresh} if shorter), with a timer per key.  A key
that cools down past the 2N hottest is dropped, its timer cancelled: nothing
is fetched for keys nobody reads.  After a soft purge, the keys kept that it
covers (by key, by job, or by tag: the job's tags and the tags of their own
the entries carried) are refreshed at once (reason C{purge}).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from refresherd.core.jobs import Target
from refresherd.errors import RefresherdError

if typing.TYPE_CHECKING:
    from refresherd.core.refresher import Answer, Refresher

TICK = 1.0
"""Seconds between looks at the hottest keys (which keys are kept)."""

MIN_LEAD = 1.0
"""The shortest lead: a hot key is refreshed at least this long before it would go stale..."""

MIN_LEAD_SHARE = 0.1
"""...or this share of its C{fresh} if that is shorter (a lead of 1 s would double the
fetches of a key fresh for 2 s)."""

ASKED_PER_FRESH = 1.0
"""A key is kept hot only if its estimated rate × C{fresh} is at least this."""

SKETCH_PER_KEPT = 10
"""A C{keep_hot = N} job's sketch holds at least this × N keys (at most L{SKETCH_MOST})."""

SKETCH_MOST = 10_000

RETRY = 1.0
"""Seconds after a refresh that failed before a key kept is refreshed again."""

MARGIN = 2
"""A key kept stays kept while it is among the C{MARGIN × N} hottest."""


class Hot(typing.Protocol):
    @property
    def key(self) -> str: ...

    @property
    def args(self) -> Mapping[str, str]: ...

    @property
    def rate(self) -> float: ...


class HotSource(typing.Protocol):
    """What the hot keys come from: the process's sketch of its requests."""

    def top(self, job: str, now: float, n: int | None = None) -> Sequence[Hot]: ...

    def hold(self, job: str, n: int) -> None:
        """Let C{job}'s sketch hold at least C{n} keys."""

    def warmed(self, job: str, now: float) -> float:
        """The share of a steady rate that C{job}'s rates read at C{now} (a young sketch's less)."""


def lead(duration: float, fresh: float) -> float:
    """
    How long before a hot key would go stale it is refreshed: twice its
    refresh (its fetch, or the wait for a slot and the fetch), at least 1 s
    or a tenth of its C{fresh} if that is shorter.
    """
    return max(min(MIN_LEAD, MIN_LEAD_SHARE * fresh), 2 * duration)


def still_kept(top: Sequence[str], kept: Iterable[str], n: int) -> list[str]:
    """
    Which of C{top} (keys, hottest first: the C{MARGIN × n} hottest) to keep
    hot: the C{n} hottest, and those further down that were C{kept} already.
    """
    before = set(kept)
    return [key for rank, key in enumerate(top) if rank < n or key in before]


@attrs.define(eq=False)
class Ahead:
    """Keeps each C{keep_hot} job's hottest keys fresh, and regenerates them after purges."""

    refresher: Refresher
    hot: HotSource
    clock: IReactorTime
    _kept: dict[str, Target] = attrs.field(factory=dict, init=False)
    """The keys kept hot, of every job."""
    _due: dict[str, tuple[float, float]] = attrs.field(factory=dict, init=False)
    """
    When each key kept is next to be refreshed (its C{fresh_until} minus its
    lead), and that lead.
    """
    _timers: dict[str, IDelayedCall] = attrs.field(factory=dict, init=False)
    """The timer of each key kept whose refresh is not running."""
    _running: set[str] = attrs.field(factory=set, init=False)
    _purged: set[str] = attrs.field(factory=set, init=False)
    """Keys soft-purged while their refresh ran: regenerated once it ends."""
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
        for key in list(self._kept):
            self._drop(key)  # (a refresh running schedules nothing when it ends)

    def kept(self, now: float) -> list[Target]:
        """
        Look at the hottest keys of every C{keep_hot} job: the targets to keep
        hot from now on (L{still_kept}); those kept before and not now are dropped.
        """
        targets = []
        for name, count in self.jobs.items():
            self.hot.hold(name, min(SKETCH_PER_KEPT * count, SKETCH_MOST))
            # Rates read low while the sketch is young (after a start): so does the bar.
            bar = ASKED_PER_FRESH * self.hot.warmed(name, now)
            fresh = self.refresher.jobs[name].config.fresh
            top: dict[str, Hot] = {
                hot.key: hot
                for hot in self.hot.top(name, now, MARGIN * count)
                if hot.rate * fresh >= bar
            }
            for key in still_kept(list(top), self._kept, count):
                target = self._kept.get(key)
                if target is None:
                    try:
                        target = self.refresher.target(name, top[key].args)
                    except RefresherdError:  # the job changed since: not a key of it now
                        continue
                targets.append(target)
        keys = {target.key for target in targets}
        for key in [key for key in self._kept if key not in keys]:
            self._drop(key)  # cooled down
        return targets

    def tick(self) -> None:
        """
        Keep the hottest keys: refresh now (if due) each that has no timer
        and no refresh running (those that were not kept).
        """
        targets = self.kept(self.clock.seconds())
        self._keep(targets)
        for target in targets:
            if target.key not in self._timers and target.key not in self._running:
                self._refresh(target, "hot")

    def _keep(self, targets: list[Target]) -> list[Target]:
        """Keep C{targets}; those not kept before."""
        new = [target for target in targets if target.key not in self._kept]
        for target in new:
            self._kept[target.key] = target
        return new

    def _drop(self, key: str) -> None:
        del self._kept[key]
        self._purged.discard(key)
        self._due.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()

    def regenerate(self, keys: Iterable[str], jobs: Iterable[str], tags: Iterable[str]) -> int:
        """
        After a soft purge of C{keys}, C{jobs} and C{tags}: refresh at once the
        keys kept hot it covers; how many were started.
        """
        targets = self.kept(self.clock.seconds())
        new = self._keep(targets)
        covered = self.refresher.covered(targets, keys, jobs, tags)
        for target in covered:
            self._due.pop(target.key, None)
            self._refresh(target, "purge")
        for target in new:
            self._refresh(target, "hot")  # (skipped if covered: already running)
        return len(covered)

    def _again(self, target: Target) -> bool:
        """Regenerate C{target} now if it was soft-purged while its refresh ran."""
        if target.key not in self._purged:
            return False
        self._purged.discard(target.key)
        if target.key not in self._kept:
            return False
        self._refresh(target, "purge")
        return True

    def _schedule(self, key: str, due: float, ahead: float) -> None:
        """Refresh C{key} at C{due} (with the lead C{ahead}), if it is still kept."""
        if key not in self._kept:
            return
        self._due[key] = (due, ahead)
        self._timers[key] = self.clock.callLater(
            max(0.0, due - self.clock.seconds()), self._when_due, key
        )

    def _when_due(self, key: str) -> None:
        self._timers.pop(key, None)
        target = self._kept.get(key)
        if target is not None:
            self._refresh(target, "hot")

    def _refresh(self, target: Target, reason: str) -> None:
        if target.key in self._running:
            if reason == "purge":
                self._purged.add(target.key)
            return
        key = target.key
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._running.add(key)
        fresh = target.job.config.fresh
        ahead = self._due.get(key, (0.0, lead(0.0, fresh)))[1]
        started = self.clock.seconds()

        def done(answer: Answer) -> None:
            entry = answer.entry
            now = self.clock.seconds()
            self._running.discard(key)
            if self._again(target):
                return
            if entry is None or entry.is_failure:
                self._schedule(key, now + RETRY, ahead)
                return
            # Twice the whole refresh when it took longer than its fetch (it waited
            # for a slot behind requests): the next one starts that much earlier.
            took = now - started if answer.status == "miss" else 0.0
            ahead_next = max(lead(entry.duration, fresh), lead(took, fresh))
            self._schedule(key, max(entry.fresh_until - ahead_next, entry.retry_at), ahead_next)

        def failed(reason: object) -> None:
            # Again a little later: refresh_background waits out a backoff itself.
            self._running.discard(key)
            if not self._again(target):
                self._schedule(key, self.clock.seconds() + RETRY, ahead)

        d: Deferred[Answer] = Deferred.fromCoroutine(
            self.refresher.refresh_background(target, reason, ahead)
        )
        d.addCallbacks(done, failed)


def after_purge(ahead: Ahead) -> Callable[[list[str], list[str], list[str], bool], None]:
    """The hook a L{Refresher} calls after a purge: soft purges regenerate hot keys."""

    def purged(keys: list[str], jobs: list[str], tags: list[str], soft: bool) -> None:
        if soft:
            ahead.regenerate(keys, jobs, tags)

    return purged
