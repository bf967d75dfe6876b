"""
Single-flight: at most one fetch per key.

In this process, every request that needs a key while its fetch runs joins
that L{Flight}.  Among every process sharing the store, the store's lease
makes the fetch one: a flight first takes a slot among the job's
C{concurrency} (queueing at most C{max_queue}), then the lease, then makes its
attempts (L{refresherd.core.attempts}), and writes the result fenced by its
lease, so a write that lost its lease (to a PUT, a purge, or a holder after
expiry) never lands.  A process that finds the lease taken waits for the store
to change instead of fetching, and takes the lease over when it is free again
with no new value (its holder died, froze past the lease, or gave up).
Callers wait on their own Deferreds, so a caller that disconnects or times out
never cancels the fetch for the others.  When the process stops, a flight is
aborted only where that is safe (waiting for a slot, fetching, waiting on the
store): a lease it took is always released, never left behind.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from refresherd.core import policy
from refresherd.core.attempts import Attempts
from refresherd.core.jobs import Target, may_tag
from refresherd.core.marks import OwnTags, namespace_of, tag_purge_keys
from refresherd.core.outage import Outage
from refresherd.entry import NO_VALIDATORS, Entry
from refresherd.errors import FetchError, FetchFailed, Overloaded, StoreUnavailable, WaitTimeout
from refresherd.interfaces import IStore
from refresherd.metrics import Metrics

T = TypeVar("T")

RELEASE_RETRY = 0.5
"""Seconds between tries of a lease release the store did not answer."""

ABORT_TIMEOUT = 5.0
"""When the drain's time is up, how long aborted flights may take to release
their leases (store operations are not cut: a cut lease SET would leave the
lease behind) before the stop goes on without them."""


BACKGROUND = frozenset({"warm", "hot", "purge"})
"""The reasons of fetches no request waits for (L{refresherd.core.slots})."""


class ShuttingDown(Overloaded):
    """The service stopped before the fetch finished."""


def store_ttl(entry: Entry, now: float) -> float:
    """How long the store keeps C{entry}: its last window, plus a margin for clock skew."""
    return entry.expires_at - now + policy.STORE_MARGIN


@attrs.define(eq=False)
class Flight:
    """One fetch of one key, and the callers waiting for it."""

    target: Target
    previous: Entry | None
    """The entry the lookup that started the flight saw (none: absent)."""
    persist: bool
    """Write the result to the store (false while the store is unreachable)."""
    marks: tuple[str, str] = ("", "")
    """The purge marks of the job and tags when the flight began, for what it writes."""
    reason: str = "request"
    """Why it runs: C{request}, C{early} (XFetch), or in the background (L{BACKGROUND})."""
    background: bool = attrs.field(init=False)
    """Whether it runs in the background: its slot comes after requests' (L{Slots})."""
    _slot_wait: Deferred[None] | None = attrs.field(default=None, init=False)
    slot_background: bool = attrs.field(default=False, init=False)
    """Whether the slot it holds is a background one (released as such)."""
    _waiters: list[Deferred[Entry]] = attrs.field(factory=list, init=False)
    _outcome: Entry | Exception | None = attrs.field(default=None, init=False)
    running: Deferred[None] | None = attrs.field(default=None, init=False)
    aborted: bool = attrs.field(default=False, init=False)
    _abortable: Deferred[Any] | None = attrs.field(default=None, init=False)

    @background.default
    def _in_background(self) -> bool:
        return self.reason in BACKGROUND

    @property
    def key(self) -> str:
        return self.target.key

    def promote(self) -> None:
        """A request needs it now: it waits for a slot as a request's fetch would."""
        if not self.background:
            return
        waiting = self._slot_wait
        if waiting is None or self.target.job.slots.promote(waiting):
            self.background = False  # its slot, when it comes, is a request's

    def wait(self) -> Deferred[Entry]:
        """The flight's entry for one caller; cancelling it leaves the flight alone."""
        if self._outcome is not None:
            return self._fired(self._outcome)

        def forget(d: Deferred[Entry]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[Entry] = Deferred(forget)
        self._waiters.append(waiter)
        return waiter

    @staticmethod
    def _fired(outcome: Entry | Exception) -> Deferred[Entry]:
        if isinstance(outcome, Entry):
            return defer.succeed(outcome)
        return defer.fail(outcome)

    async def abortable(self, start: Callable[[], Deferred[T]]) -> T:
        """
        What C{start()} gives: a step that L{abort} may cut (waiting for a
        slot, a fetch, waiting on the store), never a store write or a lease.
        """
        if self.aborted:
            raise CancelledError()
        d = self._abortable = start()
        try:
            return await d
        finally:
            self._abortable = None

    def abort(self) -> None:
        """Cut the step running and refuse the next (L{abortable})."""
        self.aborted = True
        if self._abortable is not None:
            self._abortable.cancel()

    def finish(self, outcome: Entry | Exception) -> None:
        """Give C{outcome} (an entry or an error) to every caller, now and later."""
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Entry):
                waiter.callback(outcome)
            else:
                waiter.errback(outcome)


@attrs.define(eq=False)
class Flights:
    """The flights of one process: started, joined, run, and drained when it stops."""

    store: IStore
    clock: IReactorTime
    metrics: Metrics
    random: Callable[[], float]
    attempts: Attempts
    outage: Outage
    """Where what is fetched while the store does not answer is kept."""
    running: dict[str, Flight] = attrs.field(factory=dict, init=False)
    """The flight of each key being fetched."""
    stopping: bool = attrs.field(default=False, init=False)
    """The drain's time is up: no flight starts any more."""
    _idle: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _retrying: set[IDelayedCall] = attrs.field(factory=set, init=False)
    """The timers of releases to try again (L{_release})."""
    _log: Logger = attrs.field(factory=Logger, init=False)

    def start(
        self,
        target: Target,
        previous: Entry | None,
        persist: bool,
        marks: tuple[str, str],
        early: bool = False,
        reason: str = "request",
    ) -> Flight:
        """
        The flight of C{target}'s key: the one running (promoted to a
        request's if it ran in the background and this is not), or a new one
        started for C{reason}.
        """
        job = target.job
        flight = self.running.get(target.key)
        if flight is not None:
            if reason not in BACKGROUND:
                flight.promote()
            self.metrics.coalesced.labels(job=job.name).inc()
            return flight
        if early:
            reason = "early"
        flight = Flight(target, previous, persist, marks, reason)
        if self.stopping:
            flight.finish(ShuttingDown("refresherd is shutting down; try again"))
            return flight
        self.running[target.key] = flight
        self.metrics.refreshes.labels(job=job.name, reason=reason).inc()
        if early:
            self.metrics.early_refreshes.labels(job=job.name).inc()
        flight.running = Deferred.fromCoroutine(self._fly(flight))
        return flight

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Let the flights running, and those that start meanwhile, finish for up
        to C{timeout} seconds; then start no more and abort the rest, waiting up
        to L{ABORT_TIMEOUT} for them to release their leases.  Their callers
        are answered either way.
        """
        return Deferred.fromCoroutine(self._drain(timeout))

    async def _drain(self, timeout: float) -> None:
        await self._until_idle(timeout)
        self.stopping = True
        for flight in list(self.running.values()):
            flight.abort()
        await self._until_idle(ABORT_TIMEOUT)
        for call in self._retrying:  # the store stops: those leases expire on their own
            if call.active():
                call.cancel()
        self._retrying.clear()

    async def _until_idle(self, timeout: float) -> None:
        """Until no flight runs, for up to C{timeout} seconds."""
        if not self.running:
            return
        idle: Deferred[None] = Deferred(lambda d: self._idle.remove(d))
        self._idle.append(idle)
        idle.addTimeout(timeout, self.clock)
        try:
            await idle
        except defer.TimeoutError:
            pass

    async def _fly(self, flight: Flight) -> None:
        outcome: Entry | Exception
        try:
            outcome = await self._run(flight)
        except (FetchError, FetchFailed, Overloaded, StoreUnavailable, WaitTimeout) as e:
            outcome = e
        except CancelledError:
            outcome = ShuttingDown("refresherd is shutting down; try again")
        except Exception as e:
            self._log.failure("Unexpected error refreshing {key}", key=flight.key)
            outcome = FetchError(f"internal error: {type(e).__name__}")
        finally:
            del self.running[flight.key]
            if not self.running:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)
        flight.finish(outcome)

    async def _run(self, flight: Flight) -> Entry:
        """
        Fetch with the lease; or, while another process holds it, wait for
        what that fetch writes, and take the lease over should it come free
        with nothing new written (up to two lease lifetimes in all).
        """
        config = flight.target.job.config
        lease: str | None = None
        deadline = 0.0
        for turn in itertools.count():
            entry = await self._turn(flight, lease)
            if entry is not None:
                return entry
            if turn == 0:
                self.metrics.coalesced.labels(job=flight.target.job.name).inc()
                ttl = policy.lease_ttl(config.timeout, config.retries)
                deadline = self.clock.seconds() + 2 * ttl
            waited = await self._await_elsewhere(flight, deadline)
            if isinstance(waited, Entry):
                return waited
            lease = waited
            self._log.info(
                "Took over the fetch of {key}: {why}",
                key=flight.key,
                why="its lease came free with no new value"
                if lease is not None
                else "the store stopped answering (fetching without storing)",
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _turn(self, flight: Flight, lease: str | None) -> Entry | None:
        """
        With one of the job's C{concurrency} slots: the lease (unless taken
        over already), then what landed meanwhile or the fetch; None when
        another process holds the lease.
        """
        job = flight.target.job
        try:
            await self._slot(flight)
        except BaseException:
            if lease is not None:
                await self._release(flight, lease)
            raise
        try:
            if lease is None:
                lease = await self._lease(flight)
                if flight.persist and lease is None:
                    return None
            try:
                landed = await self._landed_meanwhile(flight) if lease is not None else None
                if landed is not None:
                    self.metrics.coalesced.labels(job=job.name).inc()
                    return landed
                return await self._fetch_and_store(flight, lease)
            finally:
                if lease is not None:
                    await self._release(flight, lease)
        finally:
            job.slots.release(background=flight.slot_background)

    async def _slot(self, flight: Flight) -> None:
        """
        One of the job's slots: a request's (L{Overloaded} past C{max_queue}),
        or a background one, which waits behind every request's.
        """
        job = flight.target.job
        if flight.background:
            waiting = flight._slot_wait = job.slots.acquire_background()
            try:
                await flight.abortable(lambda: waiting)
            finally:
                flight._slot_wait = None
            flight.slot_background = flight.background  # unless promoted meanwhile
            return
        if job.slots.free == 0 and job.queued >= job.config.max_queue:
            raise Overloaded(f"job {job.name!r} has {job.config.max_queue} fetches waiting")
        depth = self.metrics.queue_depth.labels(job=job.name)
        depth.inc()
        try:
            await flight.abortable(job.slots.acquire)
        finally:
            depth.dec()
        flight.slot_background = False

    async def _landed_meanwhile(self, flight: Flight) -> Entry | None:
        """
        A fresh value another process wrote between this flight's read and
        its lease (it fetched, wrote and released in that time), or None: with
        it, no second fetch runs.  A value written before a purge this flight
        knows of is not one.
        """
        try:
            current: Entry | None = await self.store.get(flight.key)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="get").inc()
            return None
        if (
            current is None
            or current.is_failure
            or current == flight.previous
            or self.clock.seconds() >= current.fresh_until
        ):
            return None
        own = flight.target.own_tags(current.tags)
        if own is None:
            return current if current.marks == flight.marks else None
        # Tags of its own (an origin's): purged since it was written?
        try:
            tokens = await self.store.get_purge_tokens(own.all.all)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="get").inc()
            return None
        return current if own.all.marks(tokens) == current.marks else None

    async def _lease(self, flight: Flight) -> str | None:
        """
        The lease for a flight that writes to the store; None when held
        elsewhere, or when the store did not answer: then the flight fetches
        without storing, and the lease is released as one whose release
        failed would be, since the store may have taken it before its answer
        was lost (a connection cut or timed out), which would leave the key
        blocked for the lease's lifetime with nobody fetching it.
        """
        if not flight.persist:
            return None
        config = flight.target.job.config
        ttl = policy.lease_ttl(config.timeout, config.retries)
        token = secrets.token_hex(16)
        try:
            lease: str | None = await self.store.acquire_lease(flight.key, ttl, token)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="lease").inc()
            flight.persist = False
            self._try_release(flight.key, token, self.clock.seconds() + ttl)
            return None
        return lease

    async def _release(self, flight: Flight, lease: str) -> None:
        """
        Release C{lease}; should the store not answer, try again every
        L{RELEASE_RETRY} seconds for as long as the lease may live, so that a
        lease taken just before an outage does not block its key after it.
        """
        config = flight.target.job.config
        until = self.clock.seconds() + policy.lease_ttl(config.timeout, config.retries)
        await self._try_release(flight.key, lease, until)

    def _try_release(self, key: str, lease: str, until: float) -> Deferred[None]:
        """
        Release C{lease} now, and again every L{RELEASE_RETRY} seconds until
        C{until} while the store does not answer; never fails.
        """

        def failed(reason: Failure) -> None:
            if not reason.check(StoreUnavailable):
                self._log.failure("Unexpected error releasing the lease of {key}", reason, key=key)
                return
            self.metrics.store_errors.labels(operation="lease").inc()
            if self.clock.seconds() + RELEASE_RETRY < until:
                call = self.clock.callLater(RELEASE_RETRY, again)
                self._retrying.add(call)

        def again() -> None:
            self._retrying.difference_update([c for c in self._retrying if not c.active()])
            self._try_release(key, lease, until)

        return defer.maybeDeferred(self.store.release_lease, key, lease).addErrback(failed)

    async def _fetch_and_store(self, flight: Flight, lease: str | None) -> Entry:
        target = flight.target
        job = target.job
        previous = flight.previous
        if previous is not None and previous.is_failure:
            previous = None
        validators = previous.validators if previous is not None else NO_VALIDATORS
        if job.config.fetch != "http" or job.config.method != "GET":
            # Only GETs of the http fetcher revalidate (a POST's condition is a 412).
            validators = NO_VALIDATORS
        before = await self._tag_purges(flight) if flight.persist and may_tag(job) else None
        try:
            fetched, duration = await flight.abortable(
                lambda: Deferred.fromCoroutine(
                    self.attempts.fetch(target.job, target.args, validators)
                )
            )
        except FetchError as e:
            self._log.warn(
                "Fetch of {key} for job {job} failed: {reason}{detail}",
                key=flight.key,
                job=target.job.name,
                reason=str(e),
                detail=f"\n{e.detail}" if e.detail else "",
            )
            if flight.persist:
                await self._remember_failure(flight, lease, str(e))
            raise
        now = self.clock.seconds()
        entry = target.new_entry(fetched, now, duration, flight.marks, previous)
        if fetched.no_store:
            # The origin said not to store it: the callers here get it, and
            # the next refresh of a value stored before waits min_refresh.
            if flight.persist and previous is not None:
                await self._hold_off(flight, previous, lease, now)
            flight.persist = False
            return entry
        if not flight.persist:
            self.outage.keep(flight.key, entry)
            return entry
        own = target.own_tags(entry.tags)
        if own is not None:
            marked = await self._marked(flight, entry, own, before, now)
            if marked is None:
                if previous is not None:
                    await self._hold_off(flight, previous, lease, now)
                flight.persist = False
                return entry
            entry = marked
        try:
            written = await self.store.put(flight.key, entry, store_ttl(entry, now), lease=lease)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()
            flight.persist = False
            self.outage.keep(flight.key, entry)
            return entry
        if not written:
            # A PUT, a purge or another holder wrote since this fetch began:
            # theirs stands, and it is what the callers get.
            current = await self.store.get(flight.key)
            if current is not None and not current.is_failure:
                return current
        return entry

    async def _tag_purges(self, flight: Flight) -> tuple[str, str] | None:
        """
        The tokens of the keys every purge by tag renews (L{tag_purge_keys}),
        read before a fetch that may bring tags of its own; None when the
        store does not answer.
        """
        keys = tag_purge_keys(namespace_of(flight.key))
        try:
            tokens = await self.store.get_purge_tokens(keys)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="get").inc()
            return None
        return tokens.get(keys[0], ""), tokens.get(keys[1], "")

    async def _marked(
        self,
        flight: Flight,
        entry: Entry,
        own: OwnTags,
        before: tuple[str, str] | None,
        now: float,
    ) -> Entry | None:
        """
        C{entry}, which carries tags of its C{own} (from the origin), with the
        purge marks of all its tags; or None when it must not be stored.  The
        tokens of those tags are read only now, so a purge that ran during
        the fetch is told by the keys every purge by tag renews (written
        before the tags' own keys, and read here after them), and by the
        job's and its own tags' marks: a hard purge meanwhile leaves the
        value unstored (its callers get it), a soft one stores it stale at
        once (one more refresh).
        """
        purge_keys = tag_purge_keys(namespace_of(flight.key))
        try:
            tokens = await self.store.get_purge_tokens(own.all.all)
            purges = await self.store.get_purge_tokens(purge_keys)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="get").inc()
            return None
        after = (purges.get(purge_keys[0], ""), purges.get(purge_keys[1], ""))
        marks = flight.target.generation_keys.marks(tokens)
        if before is None or after[0] != before[0] or marks[0] != flight.marks[0]:
            return None
        entry = attrs.evolve(entry, marks=own.all.marks(tokens))
        if after[1] != before[1] or marks[1] != flight.marks[1]:
            config = flight.target.job.config
            grace = policy.lease_ttl(config.timeout, config.retries)
            entry = policy.soft_purged(entry, now, grace)
        return entry

    async def _hold_off(
        self, flight: Flight, previous: Entry, lease: str | None, now: float
    ) -> None:
        """Keep C{previous} as it is, with no refresh before C{min_refresh} from now."""
        retry_at = now + flight.target.job.config.min_refresh
        if previous.retry_at >= retry_at or now >= previous.expires_at:
            return
        held = attrs.evolve(previous, retry_at=retry_at)
        try:
            await self.store.put(flight.key, held, store_ttl(held, now), lease=lease)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()

    async def _remember_failure(self, flight: Flight, lease: str | None, error: str) -> None:
        target = flight.target
        config = target.job.config
        now = self.clock.seconds()
        failed = policy.after_failure(
            now,
            flight.previous,
            job=target.job.name,
            args=target.args,
            error=error,
            error_ttl=config.error_ttl,
            rand=self.random(),
        )
        if failed is None:
            return
        # Marked with the current purges: a purge that made this refresh is spent.
        failed = attrs.evolve(failed, marks=flight.marks)
        try:
            await self.store.put(flight.key, failed, store_ttl(failed, now), lease=lease)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()

    async def _await_elsewhere(self, flight: Flight, deadline: float) -> Entry | str | None:
        """
        Another process holds the lease: wait for the store to change, and
        answer with what that fetch wrote.  Between waits the store is read
        again, every C{POLL_FIRST} seconds doubling up to C{POLL_INTERVAL}, for
        a store with no notifications (memcached) or a notice that was lost;
        when nothing new was written, the lease is asked for again: a lease
        that came free (its holder died, froze past its lifetime or gave up
        without writing) is taken over, and its token returned (None: the
        store became unreachable, while reading or leasing: fetch without
        storing).
        """
        pause = policy.POLL_FIRST
        while (remaining := deadline - self.clock.seconds()) > 0:
            wait = min(remaining, pause)
            await flight.abortable(functools.partial(self.store.wait_for_change, flight.key, wait))
            pause = min(2 * pause, policy.POLL_INTERVAL)
            try:
                current = await self.store.get(flight.key)
            except StoreUnavailable:
                # The store went away meanwhile (a failover): fetch here, unstored.
                self.metrics.store_errors.labels(operation="get").inc()
                flight.persist = False
                return None
            if current is not None and current != flight.previous:
                previous = flight.previous
                if current.is_failure or (
                    previous is not None
                    and current.etag == previous.etag
                    and current.failures > previous.failures
                ):
                    raise FetchError(current.last_error or "the fetch elsewhere failed")
                return current
            lease = await self._lease(flight)
            if lease is not None or not flight.persist:
                return lease
        raise WaitTimeout("the fetch running in another process did not finish in time")
