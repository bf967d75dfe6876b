"""
The refresher: answers lookups from the store and runs fetches, one per key.

A request for a key finds its entry in the store and asks L{policy.decide}
what to answer and whether to refresh.  Fetches run as L{Flight}s: at most one
per key in this process (every request that needs the key while it runs joins
it), and, through the store's lease, at most one per key among every process
sharing the store (a process that finds the lease taken waits for the store to
change instead of fetching).  A flight first takes a slot among the job's
C{concurrency} (queueing at most C{max_queue}), then the lease, then makes up
to C{retries + 1} attempts with backoff, and writes the result fenced by its
lease.  Callers wait on their own Deferreds, so a caller that disconnects or
times out never cancels the fetch for the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from refresherd import policy
from refresherd.args import check_args, parse_query
from refresherd.config import JobConfig
from refresherd.entry import (
    Entry,
    Fetched,
    check_json_body,
    is_json_content_type,
    value_entry,
)
from refresherd.errors import (
    BadArgs,
    BadJson,
    BodyTooLarge,
    FetchError,
    FetchFailed,
    FetchTimeout,
    NotFound,
    Overloaded,
    StoreUnavailable,
    UnknownJob,
    WaitTimeout,
    one_line,
)
from refresherd.generations import GenerationKeys, Purge, generation_keys, purge_of
from refresherd.interfaces import IFetcher, IStore
from refresherd.keys import check_entry_key, entry_key, generation_key
from refresherd.metrics import Metrics
from refresherd.templates import render_tags

DRAIN_TIMEOUT = 10.0
"""Seconds that fetches in flight may take to finish when the service stops."""

RawArgs = Mapping[str, object] | bytes
"""A lookup's arguments as a caller gives them: a mapping, or a URL's query string."""

TARGETS_KEPT = 4096
"""How many L{Target}s a refresher remembers (all are forgotten when more come)."""


class ShuttingDown(Overloaded):
    """The service stopped before the fetch finished."""


@attrs.define
class Job:
    """A configured job with what runs it."""

    config: JobConfig
    fetcher: IFetcher
    slots: defer.DeferredSemaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.slots = defer.DeferredSemaphore(self.config.concurrency)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def queued(self) -> int:
        return len(self.slots.waiting)


@attrs.frozen
class Target:
    """What a job name and arguments name: the entry's key and its generation keys."""

    job: Job
    args: Mapping[str, str]
    key: str
    generations: GenerationKeys


Seen = tuple[Entry | None, tuple[str, str], policy.Decision]
"""What a lookup read at hand: the entry, the current purge marks, and the decision."""


@attrs.define
class Answer:
    """
    What a lookup answers: a value and how it was served, or C{pending}.
    (Not frozen, though nothing changes one: a frozen class costs every hit
    three times as much to make.)
    """

    job: str
    key: str
    status: str
    """C{hit}, C{stale}, C{miss} or C{pending}."""
    entry: Entry | None = None
    error: str | None = None
    """Why a stale value is served: the refreshes failing, or the wait running out."""
    stored: bool = True
    """For a miss: whether the value was written to the store."""


@attrs.define(eq=False)
class Flight:
    """One fetch of one key, and the callers waiting for it."""

    key: str
    job: Job
    args: Mapping[str, str]
    previous: Entry | None
    persist: bool
    """Write the result to the store (false while the store is unreachable)."""
    generations: tuple[str, str] = ("", "")
    """The purge marks of the job and tags when the flight began, for what it writes."""
    _waiters: list[Deferred[Entry]] = attrs.field(factory=list, init=False)
    _outcome: Entry | Exception | None = attrs.field(default=None, init=False)
    running: Deferred[None] | None = attrs.field(default=None, init=False)

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
class Refresher(Service):
    """
    Answers lookups and puts, and runs the fetches behind them.
    """

    store: IStore
    jobs: Mapping[str, Job]
    clock: IReactorTime
    namespace: str
    metrics: Metrics
    random: Callable[[], float] = random.random
    drain_timeout: float = DRAIN_TIMEOUT
    _flights: dict[str, Flight] = attrs.field(factory=dict)
    _targets: dict[tuple[object, ...], Target] = attrs.field(factory=dict, init=False)
    _log: Logger = attrs.field(factory=Logger, init=False)

    # Service is an old-style class with class attributes; attrs leaves them alone.
    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def job(self, name: str) -> Job:
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(f"no job named {name!r}") from None

    def key(self, job: Job, args: Mapping[str, str]) -> str:
        return entry_key(self.namespace, job.name, job.config.version, args)

    def target(self, job_name: str, raw_args: RawArgs) -> Target:
        """
        The job, checked arguments, key and generation keys that C{job_name}
        with C{raw_args} name: L{UnknownJob} or L{BadArgs} if they name none.
        Remembered (at most L{TARGETS_KEPT} of them): every lookup needs them.
        """
        memo: tuple[object, ...]
        if isinstance(raw_args, bytes):
            memo = (job_name, raw_args)
        else:
            memo = (job_name, *raw_args.items())
        try:
            target = self._targets.get(memo)
        except TypeError:  # An unhashable value (from JSON): checking will refuse it.
            memo, target = (), None
        if target is not None:
            return target
        job = self.job(job_name)
        given = parse_query(raw_args) if isinstance(raw_args, bytes) else raw_args
        args = check_args(job.config, given)
        target = Target(job, args, self.key(job, args), self.generation_keys(job, args))
        if memo:
            if len(self._targets) >= TARGETS_KEPT:
                self._targets.clear()
            self._targets[memo] = target
        return target

    # -- lookups -------------------------------------------------------------

    async def lookup(self, job_name: str, raw_args: RawArgs) -> Answer:
        """
        The answer for C{job_name} with C{raw_args}, starting a refresh when
        one is due (SPEC section 4).
        """
        return await self._lookup(self.target(job_name, raw_args))

    def lookup_now(self, job_name: str, raw_args: RawArgs) -> Answer | Deferred[Answer]:
        """
        L{lookup}, answered at once (no coroutine, no Deferred) when the store
        has the entry at hand (L{IStore.read_at_hand}) and nobody has to wait
        for a fetch or a read; else a Deferred of the answer.
        """
        target = self.target(job_name, raw_args)
        at_hand = self.store.read_at_hand(target.key, target.generations.all)
        if at_hand is None:
            return Deferred.fromCoroutine(self._lookup(target))
        entry, marks = self._seen(target, *at_hand)
        decision = self._decide(target.job, entry)
        if decision is policy.HIT:  # Nearly every lookup.
            return Answer(target.job.name, target.key, "hit", entry)
        if self._must_reread(target, decision, persist=True):
            return Deferred.fromCoroutine(self._lookup(target, (entry, marks, decision)))
        settled = self._settle(target, entry, marks, True, decision)
        if isinstance(settled, Answer):
            return settled
        return Deferred.fromCoroutine(self._wait(*settled))

    async def _lookup(self, target: Target, seen: Seen | None = None) -> Answer:
        """L{lookup} of C{target}; C{seen}: its entry, marks and decision, read at hand."""
        if seen is None:
            entry, marks, persist = await self._read(target)
            decision = self._decide(target.job, entry)
        else:
            (entry, marks, decision), persist = seen, True
        if self._must_reread(target, decision, persist):
            entry, marks, persist = await self._read(target, cached=False)
            decision = self._decide(target.job, entry)
        settled = self._settle(target, entry, marks, persist, decision)
        if isinstance(settled, Answer):
            return settled
        return await self._wait(*settled)

    def _decide(self, job: Job, entry: Entry | None) -> policy.Decision:
        return policy.decide(self.clock.seconds(), entry, job.config.early_refresh, self.random())

    def _must_reread(self, target: Target, decision: policy.Decision, persist: bool) -> bool:
        """
        A near cache may be behind the store (a refresh that landed
        elsewhere): act only on what the store holds now.  (A flight of this
        key running here is joined whatever the store holds.)
        """
        return (
            decision.refresh and persist and self.store.caches and target.key not in self._flights
        )

    def _settle(
        self,
        target: Target,
        entry: Entry | None,
        marks: tuple[str, str],
        persist: bool,
        decision: policy.Decision,
    ) -> Answer | tuple[Flight, Entry | None]:
        """
        What C{decision} answers, a refresh started if due: the answer, or
        the flight to wait for and the value to fall back on.
        """
        job, key = target.job, target.key
        pending = decision.state is policy.State.ABSENT and job.config.on_miss == "empty"
        if pending and not persist:
            raise StoreUnavailable("the store is unreachable; nothing can be queued")
        flight = None
        if decision.refresh:
            args, early = target.args, decision.early
            flight = self._flight(job, key, args, entry, persist, marks, early=early)
        if decision.state is policy.State.HIT:
            return Answer(job.name, key, "hit", entry)
        if decision.state is policy.State.STALE:
            assert entry is not None
            return self._stale(job, key, entry, entry.last_error)
        if decision.state is policy.State.FAILED:
            assert entry is not None
            raise FetchFailed(entry.last_error or "the last fetch failed")
        assert flight is not None
        if pending:
            return Answer(job.name, key, "pending")
        return flight, decision.fallback

    def generation_keys(self, job: Job, args: Mapping[str, str]) -> GenerationKeys:
        return generation_keys(self.namespace, job.name, render_tags(job.config.tags, args))

    async def _read(
        self, target: Target, cached: bool = True
    ) -> tuple[Entry | None, tuple[str, str], bool]:
        """
        The entry of C{target} as a request should see it, purges applied, the
        current purge marks of its job and tags, and whether the store
        answered.  The entry and the marks are read at once (one round trip).
        """
        try:
            entry, tokens = await self.store.read(target.key, target.generations.all, cached)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="get").inc()
            return None, ("", ""), False
        return (*self._seen(target, entry, tokens), True)

    def _seen(
        self, target: Target, entry: Entry | None, tokens: Mapping[str, str]
    ) -> tuple[Entry | None, tuple[str, str]]:
        """The entry as a request should see it, purges applied, and the current marks."""
        marks = target.generations.marks(tokens)
        if entry is not None and entry.generations != marks:
            entry = self._unpurged(target.job, entry, purge_of(entry.generations, marks))
        return entry, marks

    def _unpurged(self, job: Job, entry: Entry, purge: Purge | None) -> Entry | None:
        """C{entry} after a purge of its job or a tag: none (hard), or marked stale (soft)."""
        if purge is None:
            return entry
        if purge is Purge.HARD or entry.is_failure:
            return None
        return policy.soft_purged(entry, self.clock.seconds(), self._grace(job))

    @staticmethod
    def _grace(job: Job) -> float:
        """How long a soft-purged value stays servable at least: one refresh's lease."""
        return policy.lease_ttl(job.config.timeout, job.config.retries)

    def _stale(self, job: Job, key: str, entry: Entry, error: str | None) -> Answer:
        self.metrics.stale_age.labels(job=job.name).observe(
            max(0.0, self.clock.seconds() - entry.fresh_until)
        )
        return Answer(job.name, key, "stale", entry, error=error)

    async def _wait(self, flight: Flight, fallback: Entry | None) -> Answer:
        job = flight.job
        waiter = flight.wait()
        waiter.addTimeout(job.config.wait_timeout, self.clock)
        try:
            entry = await waiter
        except defer.TimeoutError:
            message = f"no value within wait_timeout ({job.config.wait_timeout:g}s)"
            if fallback is not None:
                return self._stale(job, flight.key, fallback, message)
            raise WaitTimeout(message + "; the fetch goes on") from None
        except (FetchError, FetchFailed, Overloaded) as e:
            if fallback is not None:
                return self._stale(job, flight.key, fallback, str(e))
            if isinstance(e, FetchError):
                raise FetchFailed(str(e)) from None
            raise
        return Answer(job.name, flight.key, "miss", entry, stored=flight.persist)

    # -- writes --------------------------------------------------------------

    async def put(
        self, job_name: str, raw_args: Mapping[str, object], body: bytes, content_type: str
    ) -> Answer:
        """Store C{body} as the fresh value of the key now (PUT)."""
        target = self.target(job_name, raw_args)
        job, args, key = target.job, target.args, target.key
        config = job.config
        if len(body) > config.max_value_bytes:
            raise BodyTooLarge(f"the value is larger than {config.max_value_bytes} bytes")
        if is_json_content_type(content_type):
            try:
                check_json_body(body)
            except ValueError as e:
                raise BadJson(one_line(f"the body is not valid JSON: {e}")) from None
        try:
            generations = target.generations
            marks = generations.marks(await self.store.get_generations(generations.all))
            entry = self._new_entry(job, args, Fetched(body, content_type), 0.0, marks)
            await self.store.put(key, entry, self._ttl(entry))
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()
            raise
        return Answer(job.name, key, "hit", entry)

    def _ttl(self, entry: Entry) -> float:
        """How long the store keeps C{entry}: its last window, plus a margin for clock skew."""
        return entry.expires_at - self.clock.seconds() + policy.STORE_MARGIN

    def _new_entry(
        self,
        job: Job,
        args: Mapping[str, str],
        fetched: Fetched,
        duration: float,
        generations: tuple[str, str],
    ) -> Entry:
        config = job.config
        return value_entry(
            fetched,
            job=job.name,
            args=args,
            tags=render_tags(config.tags, args),
            now=self.clock.seconds(),
            duration=duration,
            fresh=config.fresh,
            stale=config.stale,
            stale_if_error=config.stale_if_error,
            generations=generations,
        )

    # -- flights -------------------------------------------------------------

    def _flight(
        self,
        job: Job,
        key: str,
        args: Mapping[str, str],
        previous: Entry | None,
        persist: bool,
        generations: tuple[str, str],
        early: bool = False,
    ) -> Flight:
        """The flight of C{key}: the one running, or a new one."""
        flight = self._flights.get(key)
        if flight is not None:
            self.metrics.coalesced.labels(job=job.name).inc()
            return flight
        flight = Flight(key, job, args, previous, persist, generations)
        self._flights[key] = flight
        if early:
            self.metrics.early_refreshes.labels(job=job.name).inc()
        flight.running = Deferred.fromCoroutine(self._fly(flight))
        return flight

    async def _fly(self, flight: Flight) -> None:
        outcome: Entry | Exception
        try:
            outcome = await self._run(flight)
        except (FetchError, FetchFailed, Overloaded, StoreUnavailable) as e:
            outcome = e
        except CancelledError:
            outcome = ShuttingDown("refresherd is shutting down; try again")
        except Exception as e:
            self._log.failure("Unexpected error refreshing {key}", key=flight.key)
            outcome = FetchError(f"internal error: {type(e).__name__}")
        finally:
            del self._flights[flight.key]
        flight.finish(outcome)

    async def _run(self, flight: Flight) -> Entry:
        job = flight.job
        config = job.config
        if job.slots.tokens == 0 and job.queued >= config.max_queue:
            raise Overloaded(f"job {job.name!r} has {config.max_queue} fetches waiting")
        depth = self.metrics.queue_depth.labels(job=job.name)
        depth.inc()
        try:
            await job.slots.acquire()
        finally:
            depth.dec()
        try:
            lease = await self._lease(flight)
            if not (flight.persist and lease is None):
                try:
                    landed = await self._landed_meanwhile(flight) if lease is not None else None
                    if landed is not None:
                        self.metrics.coalesced.labels(job=job.name).inc()
                        return landed
                    return await self._fetch_and_store(flight, lease)
                finally:
                    if lease is not None:
                        await self._release(flight.key, lease)
        finally:
            job.slots.release()
        self.metrics.coalesced.labels(job=job.name).inc()
        return await self._await_elsewhere(flight)

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
            or current.generations != flight.generations
            or self.clock.seconds() >= current.fresh_until
        ):
            return None
        return current

    async def _lease(self, flight: Flight) -> str | None:
        """The lease for a flight that writes to the store; None when held elsewhere."""
        if not flight.persist:
            return None
        config = flight.job.config
        try:
            lease: str | None = await self.store.acquire_lease(
                flight.key, policy.lease_ttl(config.timeout, config.retries)
            )
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="lease").inc()
            flight.persist = False
            return None
        return lease

    async def _release(self, key: str, lease: str) -> None:
        try:
            await self.store.release_lease(key, lease)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="lease").inc()

    async def _fetch_and_store(self, flight: Flight, lease: str | None) -> Entry:
        job = flight.job
        try:
            fetched, duration = await self._attempts(flight)
        except FetchError as e:
            self._log.warn(
                "Fetch of {key} for job {job} failed: {reason}{detail}",
                key=flight.key,
                job=job.name,
                reason=str(e),
                detail=f"\n{e.detail}" if e.detail else "",
            )
            if flight.persist:
                await self._remember_failure(flight, lease, str(e))
            raise
        entry = self._new_entry(job, flight.args, fetched, duration, flight.generations)
        if not flight.persist:
            return entry
        try:
            written = await self.store.put(flight.key, entry, self._ttl(entry), lease=lease)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()
            flight.persist = False
            return entry
        if not written:
            # A PUT, a purge or another holder wrote since this fetch began:
            # theirs stands, and it is what the callers get.
            current = await self.store.get(flight.key)
            if current is not None and not current.is_failure:
                return current
        return entry

    async def _remember_failure(self, flight: Flight, lease: str | None, error: str) -> None:
        config = flight.job.config
        failed = policy.after_failure(
            self.clock.seconds(),
            flight.previous,
            job=flight.job.name,
            args=flight.args,
            error=error,
            error_ttl=config.error_ttl,
            rand=self.random(),
        )
        if failed is None:
            return
        # Marked with the current purges: a purge that made this refresh is spent.
        failed = attrs.evolve(failed, generations=flight.generations)
        try:
            await self.store.put(flight.key, failed, self._ttl(failed), lease=lease)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()

    async def _attempts(self, flight: Flight) -> tuple[Fetched, float]:
        """Up to C{retries + 1} attempts with backoff; the first success and its duration."""
        job = flight.job
        config = job.config
        error: FetchError = FetchError("no attempt made")
        for attempt in range(config.retries + 1):
            if attempt:
                pause = policy.backoff(
                    attempt - 1,
                    policy.ATTEMPT_BACKOFF_BASE,
                    policy.ATTEMPT_BACKOFF_CAP,
                    self.random(),
                )
                await task.deferLater(self.clock, pause)
            start = self.clock.seconds()
            self.metrics.in_flight.labels(job=job.name).inc()
            outcome = None
            try:
                d = defer.maybeDeferred(job.fetcher.fetch, flight.args)
                d.addTimeout(config.timeout, self.clock)
                fetched: Fetched = await d
                outcome = "success"
                return fetched, self.clock.seconds() - start
            except defer.TimeoutError:
                outcome = "timeout"
                error = FetchTimeout(f"the fetch took longer than {config.timeout:g}s")
            except FetchError as e:
                outcome = "error"
                error = e
            except CancelledError:
                outcome = "error"
                raise
            except Exception as e:
                outcome = "error"
                self._log.failure("Fetcher of job {job} raised", job=job.name)
                error = FetchError(one_line(f"{type(e).__name__}: {e}".splitlines()[0]))
            finally:
                self.metrics.in_flight.labels(job=job.name).dec()
                if outcome is not None:  # None: the coroutine was closed, nothing happened
                    self.metrics.fetches.labels(job=job.name, outcome=outcome).inc()
                    self.metrics.fetch_duration.labels(job=job.name).observe(
                        self.clock.seconds() - start
                    )
        raise error

    async def _await_elsewhere(self, flight: Flight) -> Entry:
        """
        Another process holds the lease: wait for the store to change, and
        answer with what that fetch wrote.  Between waits the store is read
        again, every C{POLL_FIRST} seconds doubling up to C{POLL_INTERVAL}, for
        a store with no notifications (memcached) or a notice that was lost.
        """
        config = flight.job.config
        deadline = self.clock.seconds() + policy.lease_ttl(config.timeout, config.retries)
        pause = policy.POLL_FIRST
        while (remaining := deadline - self.clock.seconds()) > 0:
            await self.store.wait_for_change(flight.key, min(remaining, pause))
            pause = min(2 * pause, policy.POLL_INTERVAL)
            current = await self.store.get(flight.key)
            if current is None or current == flight.previous:
                continue
            previous = flight.previous
            if current.is_failure or (
                previous is not None
                and current.etag == previous.etag
                and current.failures > previous.failures
            ):
                raise FetchError(current.last_error or "the fetch elsewhere failed")
            return current
        raise FetchError("the fetch running elsewhere did not finish in time")

    # -- operators -----------------------------------------------------------

    def check_key(self, key: str) -> str:
        """C{key} if it names an entry of this namespace; L{BadArgs} otherwise."""
        try:
            return check_entry_key(key, self.namespace)
        except ValueError as e:
            raise BadArgs(str(e)) from None

    async def purge(self, keys: list[str], jobs: list[str], tags: list[str], soft: bool) -> int:
        """
        Purge entries by key, and every entry of C{jobs} and of C{tags}, in
        every process sharing the store: removed, or with C{soft} marked stale
        so that the next request is answered with the old value while one
        refresh regenerates it.  Fires with how many keys, jobs and tags were
        named.  Nothing is done unless every key and job is valid.
        """
        keys = [self.check_key(key) for key in keys]
        for name in jobs:
            self.job(name)
        generations = [
            generation_key(self.namespace, kind, name, hard=not soft)
            for kind, names in (("job", jobs), ("tag", tags))
            for name in names
        ]
        writes = [Deferred.fromCoroutine(self._purge_key(key, soft)) for key in keys]
        writes += [self.store.new_generation(key) for key in generations]
        try:
            await defer.gatherResults(writes, consumeErrors=True)
        except defer.FirstError as e:
            if e.subFailure.check(StoreUnavailable):
                self.metrics.store_errors.labels(operation="purge").inc()
            e.subFailure.raiseException()
        for kind, named in (("key", keys), ("job", jobs), ("tag", tags)):
            if named:
                self.metrics.purged.labels(kind=kind).inc(len(named))
        return len(keys) + len(jobs) + len(tags)

    async def _purge_key(self, key: str, soft: bool) -> None:
        if not soft:
            await self.store.delete(key)
            return
        entry = await self.store.get(key)
        if entry is None:
            return
        job = self.jobs.get(entry.job)
        if entry.is_failure or job is None:
            # Nothing to serve meanwhile, or nothing to regenerate it with.
            await self.store.delete(key)
            return
        marked = policy.soft_purged(entry, self.clock.seconds(), self._grace(job))
        if marked is not entry:
            # Unfenced: a fetch that began before the purge cannot overwrite it.
            await self.store.put(key, marked, self._ttl(marked))

    async def inspect(self, key: str) -> tuple[Entry, Purge | None]:
        """The entry of C{key} as it is stored, and whether a purge of its job or a tag hit it."""
        key = self.check_key(key)
        entry: Entry | None = await self.store.get(key)
        if entry is None:
            raise NotFound(f"no entry {key!r}")
        generations = generation_keys(self.namespace, entry.job, entry.tags)
        tokens = await self.store.get_generations(generations.all)
        return entry, purge_of(entry.generations, generations.marks(tokens))

    async def refresh(self, job_name: str, raw_args: Mapping[str, object]) -> str:
        """
        Start a refresh of the key of C{job_name} and C{raw_args} now, or join
        the one running; fires with the key once it has started.
        """
        target = self.target(job_name, raw_args)
        job, args, key = target.job, target.args, target.key
        entry, marks, persist = await self._read(target, cached=False)
        if not persist:
            raise StoreUnavailable("the store is unreachable; a refresh would not be stored")
        self._flight(job, key, args, entry, persist, marks)
        return key

    # -- lifecycle -----------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """
        Let the fetches in flight finish for up to C{drain_timeout} seconds,
        then cancel the rest; their callers are answered either way.
        """
        Service.stopService(self)
        running = [f.running for f in self._flights.values() if f.running is not None]
        if not running:
            return defer.succeed(None)
        everything: Deferred[Any] = defer.DeferredList(running, consumeErrors=True)
        timer = self.clock.callLater(self.drain_timeout, everything.cancel)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()
            for flight in list(self._flights.values()):
                if flight.running is not None:
                    flight.running.cancel()

        everything.addBoth(done)
        return everything
