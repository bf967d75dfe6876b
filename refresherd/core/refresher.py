"""
The refresher, the front of the engine: lookups, puts, purges, inspection and
refreshes on demand.

A lookup reads its target's entry and the purge tokens of its job and tags
from the store, applies any purge, and asks L{policy.decide} what to answer
and whether to refresh (docs/README.md, "What it does").  A refresh or a miss
runs as a flight (L{refresherd.core.flights}): one per key, however many
callers and processes ask.  When the store holds the entry in this process
(L{IReadsAtHand}) and nobody has to wait, the answer is given at once,
with no Deferred: that is nearly every request.
"""

from __future__ import annotations

import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from refresherd.core import notices, policy
from refresherd.core.ahead import Ahead, after_purge
from refresherd.core.attempts import Attempts
from refresherd.core.flights import Flight, Flights, store_ttl
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job, Target, Targets
from refresherd.core.marks import (
    OwnTags,
    Purge,
    build_generation_keys,
    generation_ttl,
    purge_of,
    tag_purge_keys,
)
from refresherd.core.outage import Outage
from refresherd.entry import (
    Entry,
    Fetched,
    check_json_body,
    content_type_problem,
    is_json_content_type,
)
from refresherd.errors import (
    BadArgs,
    BadJson,
    BodyTooLarge,
    FetchError,
    FetchFailed,
    NotFound,
    Overloaded,
    StoreUnavailable,
    UnsupportedMediaType,
    WaitTimeout,
    one_line,
    public_reason,
)
from refresherd.interfaces import IPurgeNotices, IReadsAtHand, IStore, Tokens
from refresherd.keys import check_entry_key, generation_key
from refresherd.metrics import Metrics

DRAIN_TIMEOUT = 10.0
"""Seconds that fetches in flight may take to finish when the service stops."""

OWN_TAG_KEYS_KEPT = 65536
"""
How many generation keys of entries' own tags L{Refresher} remembers, the
oldest forgotten first: 256 entries with 64 tags of their own, 16384 with 2.
"""

NO_MARKS = ("", "")
"""The purge marks of a job and tags none of whose generation keys was ever written."""

NOTICE_WARNING_INTERVAL = 60.0
"""Seconds between two warnings of purge notices ignored."""


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
class Refresher(Service):
    """Answers lookups and puts, and runs the fetches behind them."""

    # What the flights were built on cannot change under them.
    store: IStore = attrs.field(on_setattr=attrs.setters.frozen)
    jobs: Mapping[str, Job] = attrs.field(on_setattr=attrs.setters.frozen)
    """The configured jobs; a reload replaces them (L{set_jobs}), never changes one."""
    clock: IReactorTime = attrs.field(on_setattr=attrs.setters.frozen)
    namespace: str = attrs.field(on_setattr=attrs.setters.frozen)
    metrics: Metrics = attrs.field(on_setattr=attrs.setters.frozen)
    random: Callable[[], float] = attrs.field(
        default=random.random, on_setattr=attrs.setters.frozen
    )
    drain_timeout: float = DRAIN_TIMEOUT
    outage: Outage = attrs.field(
        default=attrs.Factory(lambda self: Outage(self.clock), takes_self=True),
        on_setattr=attrs.setters.frozen,
    )
    """The values fetched while the store does not answer."""
    targets: Targets = attrs.field(init=False)
    flights: Flights = attrs.field(init=False)
    _at_hand: Callable[[str, Sequence[str]], tuple[Entry | None, Tokens] | None] | None = (
        attrs.field(init=False, default=None)
    )
    """The store's L{IReadsAtHand.read_at_hand}, if it has one."""
    _observe: Callable[[str, str, Mapping[str, str], float], None] | None = attrs.field(
        init=False, default=None
    )
    """L{hot}'s C{observe}, if there is one."""
    _lags: bool = attrs.field(init=False, default=False)
    """Whether what the store has at hand may be behind it (L{IReadsAtHand.lags})."""
    _own_tags: OrderedDict[str, OwnTags] = attrs.field(init=False, factory=OrderedDict)
    """
    The tags of its own (an origin's) that each entry carried when last
    read, so that the next read of it takes their generation keys in the
    same round trip (and a near cache keeps them).
    """
    _own_tag_keys: int = attrs.field(init=False, default=0)
    """How many generation keys L{_own_tags} holds."""
    hot: HotKeysRegistry | None = attrs.field(
        default=None, kw_only=True, on_setattr=attrs.setters.frozen
    )
    """The keys this process's requests ask for most lately: every lookup is counted."""
    after_purge: Callable[[list[str], list[str], list[str], bool], None] | None = attrs.field(
        default=None, kw_only=True
    )
    """
    Told of every purge done here (keys, jobs, tags, soft), and of every soft
    purge another process tells of (L{IPurgeNotices}): unless set otherwise,
    each of L{purge_listeners} (the regeneration of hot and warm keys).
    """
    purge_listeners: list[Callable[[list[str], list[str], list[str], bool], None]] = attrs.field(
        init=False, factory=list
    )
    """What L{after_purge} tells by default: the regeneration of hot and warm keys."""
    ahead: Ahead | None = attrs.field(init=False, default=None)
    """Refresh-ahead of the hottest keys of C{keep_hot} jobs, with L{hot}."""
    _notices: IPurgeNotices | None = attrs.field(init=False, default=None)
    _origin: str = attrs.field(init=False, factory=lambda: secrets.token_hex(16))
    """Names this process in the purge notices it publishes, so that it ignores its own."""
    _notice_warned_at: float | None = attrs.field(init=False, default=None)
    _notices_ignored: int = attrs.field(init=False, default=0)
    """Notices ignored since the last warning."""
    _log: Logger = attrs.field(factory=Logger, init=False)

    # Service is an old-style class with class attributes; attrs leaves them alone.
    def __attrs_post_init__(self) -> None:
        Service.__init__(self)
        self.targets = Targets(self.jobs, self.namespace)
        attempts = Attempts(self.clock, self.metrics, self.random)
        self.flights = Flights(
            self.store, self.clock, self.metrics, self.random, attempts, self.outage
        )
        if IReadsAtHand.providedBy(self.store):
            self._at_hand = self.store.read_at_hand
            self._lags = bool(self.store.lags)
        if self.hot is not None:
            self._observe = self.hot.observe
            self.ahead = Ahead(self, self.hot, self.clock)
            self.purge_listeners.append(after_purge(self.ahead))
        if self.after_purge is None:
            self.after_purge = self._purged
        if IPurgeNotices.providedBy(self.store):
            self._notices = self.store
            self.store.listen_purges(self._heard)

    def set_jobs(self, jobs: Mapping[str, Job]) -> None:
        """
        Serve C{jobs} from now on (a reload): lookups resolve their targets
        anew; the fetches in flight finish with the jobs they started with, and
        answer the callers that wait on them.
        """
        object.__setattr__(self, "jobs", jobs)
        self.targets = Targets(jobs, self.namespace)
        if self.ahead is not None and self.running:
            self.ahead.stop()  # started again for the keep_hot jobs there are now
            self.ahead.start()

    def target(self, job_name: str, args: Mapping[str, object]) -> Target:
        """What C{job_name} with C{args} names: L{UnknownJob} or L{BadArgs} if nothing."""
        return self.targets.target(job_name, args)

    # -- lookups -------------------------------------------------------------

    def lookup(self, target: Target, now: float | None = None) -> Answer | Deferred[Answer]:
        """
        The answer for C{target}, a refresh started when one is due: at once
        when the store has the entry at hand and nobody has to wait for a
        fetch or a read; else a Deferred of it.  Errors a caller can cause
        (L{refresherd.errors.RefresherdError}) are raised or failed with.
        C{now}: the clock's time, if the caller has just read it.
        """
        if now is None:
            now = self.clock.seconds()
        job = target.job
        if self._observe is not None:
            self._observe(job.name, target.key, target.args, now)
        keys = target.generation_keys.all
        remembered = self._own_tags.get(target.key) if self._own_tags else None
        if remembered is not None:
            keys = keys + remembered.keys
        at_hand = self._at_hand and self._at_hand(target.key, keys)
        if at_hand is None:
            return Deferred.fromCoroutine(self._read_and_decide(target))
        entry, tokens = at_hand
        own = self._own(target, entry)
        if own is not remembered:  # Tags of its own not read with it: read them.
            return Deferred.fromCoroutine(self._read_and_decide(target))
        entry, marks = self._seen(target, entry, tokens, own, now)
        decision = policy.decide(now, entry, job.config.early_refresh, self.random())
        if decision is policy.HIT:  # Nearly every lookup.
            return Answer(job.name, target.key, "hit", entry)
        if self._must_reread(target, decision, persist=True):
            return Deferred.fromCoroutine(self._read_and_decide(target, cached=False))
        return self._settle(target, entry, marks, True, decision, now)

    async def _read_and_decide(self, target: Target, cached: bool = True) -> Answer:
        """L{lookup} of an entry that was not at hand: read it (again, if C{cached} is false)."""
        entry, marks, persist = await self._read(target, cached)
        decision = self._decide(target.job, entry)
        if cached and self._must_reread(target, decision, persist):
            entry, marks, persist = await self._read(target, cached=False)
            decision = self._decide(target.job, entry)
        settled = self._settle(target, entry, marks, persist, decision)
        return settled if isinstance(settled, Answer) else await settled

    def _decide(self, job: Job, entry: Entry | None) -> policy.Decision:
        return policy.decide(self.clock.seconds(), entry, job.config.early_refresh, self.random())

    def _must_reread(self, target: Target, decision: policy.Decision, persist: bool) -> bool:
        """
        What the store has at hand may be behind it (a near cache, which has
        not yet heard of a refresh that landed elsewhere): act only on what the
        store holds now.  (A flight of this key running here is joined
        whatever the store holds.)
        """
        return (
            decision.refresh and persist and self._lags and target.key not in self.flights.running
        )

    def _settle(
        self,
        target: Target,
        entry: Entry | None,
        marks: tuple[str, str],
        persist: bool,
        decision: policy.Decision,
        now: float | None = None,
    ) -> Answer | Deferred[Answer]:
        """
        What C{decision} (made at C{now}, default: the clock's time) answers, a
        refresh started if due: an answer, or one to wait for.
        """
        job, key = target.job, target.key
        pending = decision.state is policy.State.ABSENT and job.config.on_miss == "empty"
        if pending and not persist:
            raise StoreUnavailable("the store is unreachable; nothing can be queued")
        flight = None
        if decision.refresh:
            flight = self.flights.start(target, entry, persist, marks, early=decision.early)
        if decision.state is policy.State.HIT:
            return Answer(job.name, key, "hit", entry)
        if decision.state is policy.State.STALE:
            assert entry is not None
            error = public_reason(entry.last_error) if entry.last_error else None
            return self._stale(target, entry, error, now)
        if decision.state is policy.State.FAILED:
            assert entry is not None
            raise FetchFailed(public_reason(entry.last_error or ""))
        assert flight is not None
        if pending:
            return Answer(job.name, key, "pending")
        return Deferred.fromCoroutine(self._wait(flight, decision.fallback))

    async def _read(
        self, target: Target, cached: bool = True
    ) -> tuple[Entry | None, tuple[str, str], bool]:
        """
        The entry of C{target} as a request should see it, purges applied, the
        current purge marks of its job and tags, and whether the store
        answered.  The entry and the tokens are read at once (one round trip).
        """
        keys = target.generation_keys.all
        remembered = self._own_tags.get(target.key)
        if remembered is not None:
            keys = keys + remembered.keys
        try:
            entry, tokens = await self.store.read(target.key, keys, cached)
            own = self._own(target, entry)
            if own is not remembered:
                self._remember(target.key, own)
                if own is not None and (remembered is None or own.keys != remembered.keys):
                    tokens = {**tokens, **await self.store.get_purge_tokens(own.keys)}
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="get").inc()
            return self.outage.get(target.key), NO_MARKS, False
        if self.outage.holding:
            self.outage.clear()
        return (*self._seen(target, entry, tokens, own), True)

    def _own(self, target: Target, entry: Entry | None) -> OwnTags | None:
        """The tags of its own C{entry} carries (an origin's), as remembered if they are."""
        if entry is None or entry.tags is target.tags:
            return None
        remembered = self._own_tags.get(target.key)
        if remembered is not None and remembered.tags == entry.tags:
            return remembered
        return target.own_tags(entry.tags)

    def _remember(self, key: str, own: OwnTags | None) -> None:
        """
        Read the generation keys of C{own} with C{key} from now on: at most
        L{OWN_TAG_KEYS_KEPT} keys in all, the oldest forgotten first.
        """
        forgotten = self._own_tags.pop(key, None)
        if forgotten is not None:
            self._own_tag_keys -= len(forgotten.keys)
        if own is None:
            return
        self._own_tags[key] = own
        self._own_tag_keys += len(own.keys)
        while self._own_tag_keys > OWN_TAG_KEYS_KEPT:
            _, oldest = self._own_tags.popitem(last=False)
            self._own_tag_keys -= len(oldest.keys)

    def _seen(
        self,
        target: Target,
        entry: Entry | None,
        tokens: Mapping[str, str],
        own: OwnTags | None = None,
        now: float | None = None,
    ) -> tuple[Entry | None, tuple[str, str]]:
        """
        The entry as a request should see it at C{now} (default: the clock's
        time), purges applied (those of its job's tags and of its C{own}, an
        origin's: C{tokens} has theirs), and the current marks of its job and
        the job's tags.
        """
        marks = target.generation_keys.marks(tokens)
        if entry is None:
            return entry, marks
        current = marks if own is None else own.all.marks(tokens)
        if entry.marks != current:
            purge = purge_of(entry.marks, current)
            if now is None:
                now = self.clock.seconds()
            entry = self._unpurged(target.job, entry, purge, now)
        return entry, marks

    def _unpurged(self, job: Job, entry: Entry, purge: Purge | None, now: float) -> Entry | None:
        """
        C{entry} after a purge of its job or a tag: none (hard), or marked
        stale (soft) as of C{now}, the time it is decided on.
        """
        if purge is None:
            return entry
        if purge is Purge.HARD or entry.is_failure:
            return None
        return policy.soft_purged(entry, now, self._grace(job))

    @staticmethod
    def _grace(job: Job) -> float:
        """How long a soft-purged value stays servable at least: one refresh's lease."""
        return policy.lease_ttl(job.config.timeout, job.config.retries)

    def _stale(
        self, target: Target, entry: Entry, error: str | None, now: float | None = None
    ) -> Answer:
        """C{entry} served stale at C{now} (default: the clock's time), its staleness measured."""
        if now is None:
            now = self.clock.seconds()
        self.metrics.stale_age.labels(job=target.job.name).observe(
            max(0.0, now - entry.fresh_until)
        )
        return Answer(target.job.name, target.key, "stale", entry, error=error)

    async def _wait(self, flight: Flight, fallback: Entry | None) -> Answer:
        target = flight.target
        config = target.job.config
        waiter = flight.wait()
        waiter.addTimeout(config.wait_timeout, self.clock)
        try:
            entry = await waiter
        except defer.TimeoutError:
            message = f"no value within wait_timeout ({config.wait_timeout:g}s)"
            if fallback is not None:
                return self._stale(target, fallback, message)
            raise WaitTimeout(message + "; the fetch goes on") from None
        except (FetchError, FetchFailed, Overloaded) as e:
            reason = public_reason(str(e)) if isinstance(e, FetchError) else str(e)
            if fallback is not None:
                return self._stale(target, fallback, reason)
            if isinstance(e, FetchError):
                raise FetchFailed(reason) from None
            raise
        return Answer(target.job.name, target.key, "miss", entry, stored=flight.persist)

    # -- writes --------------------------------------------------------------

    async def put(self, target: Target, body: bytes, content_type: str) -> Answer:
        """Store C{body} as the fresh value of C{target} now (PUT)."""
        config = target.job.config
        if len(body) > config.max_value_bytes:
            raise BodyTooLarge(f"the value is larger than {config.max_value_bytes} bytes")
        why = content_type_problem(content_type)
        if why is not None:
            raise UnsupportedMediaType(why)
        if is_json_content_type(content_type):
            try:
                check_json_body(body)
            except ValueError as e:
                raise BadJson(one_line(f"the body is not valid JSON: {e}")) from None
        try:
            keys = target.generation_keys
            marks = keys.marks(await self.store.get_purge_tokens(keys.all))
            now = self.clock.seconds()
            entry = target.new_entry(Fetched(body, content_type), now, 0.0, marks)
            await self.store.put(target.key, entry, store_ttl(entry, now))
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="put").inc()
            raise
        return Answer(target.job.name, target.key, "hit", entry)

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
        named.  Nothing is done unless every key and job is valid.  After a
        soft purge, the processes sharing the store are told of it when the
        store can (L{IPurgeNotices}), so that each regenerates its hot keys.
        """
        keys = [self.check_key(key) for key in keys]
        for name in jobs:
            self.targets.job(name)
        named = [
            generation_key(self.namespace, kind, name, hard=not soft)
            for kind, names in (("job", jobs), ("tag", tags))
            for name in names
        ]
        ttl = generation_ttl(self._longest_lifetime())
        try:
            if tags:
                # Told to fetches whose tags come with their answer, before the
                # tags' own keys (flights.Flights._marked reads them after).
                key = tag_purge_keys(self.namespace)[1 if soft else 0]
                await self.store.new_purge_token(key, ttl)
            writes: list[Deferred[Any]] = [
                Deferred.fromCoroutine(self._purge_key(key, soft)) for key in keys
            ]
            writes += [self.store.new_purge_token(key, ttl) for key in named]
            await defer.gatherResults(writes, consumeErrors=True)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="purge").inc()
            raise
        except defer.FirstError as e:
            if e.subFailure.check(StoreUnavailable):
                self.metrics.store_errors.labels(operation="purge").inc()
            e.subFailure.raiseException()
        for kind, given in (("key", keys), ("job", jobs), ("tag", tags)):
            if given:
                self.metrics.purged.labels(kind=kind).inc(len(given))
        if self.after_purge is not None:
            self.after_purge(keys, jobs, tags, soft)
        if soft and self._notices is not None:
            await self._tell(self._notices, keys, jobs, tags)
        return len(keys) + len(jobs) + len(tags)

    def _purged(self, keys: list[str], jobs: list[str], tags: list[str], soft: bool) -> None:
        for listener in self.purge_listeners:
            listener(keys, jobs, tags, soft)

    async def _tell(
        self, to: IPurgeNotices, keys: list[str], jobs: list[str], tags: list[str]
    ) -> None:
        """Publish the notice of a soft purge; a failure is logged (the purge is done)."""
        try:
            for notice in notices.encode(self._origin, keys, jobs, tags):
                await to.publish_purge(notice)
        except StoreUnavailable as e:
            self.metrics.store_errors.labels(operation="notice").inc()
            self._log.warn(
                "Soft purge done, but other processes were not told of it: {why}",
                why=one_line(e.message),
            )

    def _heard(self, data: bytes) -> None:
        """
        A purge notice, published by any client of the store: one of another
        process that names keys of this namespace and jobs configured here
        regenerates the hot keys it covers; anything else is ignored.
        """
        try:
            notice = notices.decode(data)
            if notice.origin == self._origin:
                return  # Regenerated when it was made.
            for key in notice.keys:
                check_entry_key(key, self.namespace)
            for name in notice.jobs:
                if name not in self.jobs:
                    raise ValueError(f"no job named {name[:80]!r}")
        except ValueError as e:
            self._ignored(str(e))
            return
        if self.after_purge is not None:
            self.after_purge(notice.keys, notice.jobs, notice.tags, True)

    def _ignored(self, why: str) -> None:
        """A notice ignored: a warning at most every L{NOTICE_WARNING_INTERVAL} seconds."""
        self._notices_ignored += 1
        now = self.clock.seconds()
        if self._notice_warned_at is not None and now < (
            self._notice_warned_at + NOTICE_WARNING_INTERVAL
        ):
            return
        self._log.warn(
            "Ignored {count} purge notice(s) heard on the store (the last: {why})",
            count=self._notices_ignored,
            why=one_line(why),
        )
        self._notice_warned_at, self._notices_ignored = now, 0

    def covered(
        self,
        targets: Iterable[Target],
        keys: Iterable[str],
        jobs: Iterable[str],
        tags: Iterable[str],
    ) -> list[Target]:
        """
        Those of C{targets} that a purge of C{keys}, C{jobs} and C{tags}
        covers: by key, by job, or by one of the tags of their entry as last
        read here (the job's, and its own).
        """
        keys, jobs, tags = set(keys), set(jobs), set(tags)
        return [
            target
            for target in targets
            if target.key in keys
            or target.job.name in jobs
            or (tags and not tags.isdisjoint(self._tags_of(target)))
        ]

    def _tags_of(self, target: Target) -> tuple[str, ...]:
        own = self._own_tags.get(target.key)
        return target.tags + own.names if own is not None else target.tags

    def _longest_lifetime(self) -> float:
        """How long the store may keep an entry of any job: its windows, a soft purge's
        grace and the margin for clocks."""
        return max(
            (
                c.fresh + max(c.stale, c.stale_if_error) + self._grace(job) + policy.STORE_MARGIN
                for job in self.jobs.values()
                for c in (job.config,)
            ),
            default=policy.STORE_MARGIN,
        )

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
        now = self.clock.seconds()
        marked = policy.soft_purged(entry, now, self._grace(job))
        if marked is not entry:
            # Unfenced: a fetch that began before the purge cannot overwrite it.
            await self.store.put(key, marked, store_ttl(marked, now))

    async def inspect(self, key: str) -> tuple[Entry, Purge | None]:
        """The entry of C{key} as it is stored, and whether a purge of its job or a tag hit it."""
        key = self.check_key(key)
        entry: Entry | None = await self.store.get(key)
        if entry is None:
            raise NotFound(f"no entry {key!r}")
        keys = build_generation_keys(self.namespace, entry.job, entry.tags)
        tokens = await self.store.get_purge_tokens(keys.all)
        return entry, purge_of(entry.marks, keys.marks(tokens))

    async def refresh_background(self, target: Target, reason: str, lead: float = 0.0) -> Answer:
        """
        A refresh no request waits for (C{reason}: C{warm}, C{hot} or
        C{purge}): its fetch takes a slot only after requests' and holds at
        most C{concurrency - 1} (L{refresherd.core.slots}).  Nothing is
        fetched while the value stays fresh for C{lead} more seconds (the
        answer is its C{hit}), nor before its C{retry_at} (C{min_refresh},
        or backoff after failures: the answer is the value as it is, or
        L{FetchFailed} for a failure remembered).  Otherwise it fetches (or
        joins the fetch running) and answers C{miss} with what was written,
        failing as a waiting lookup does (L{FetchFailed}, L{StoreUnavailable},
        L{Overloaded} when the service stops).
        A fetch of the key running that began before a purge of its job or a
        tag is not joined (what it writes is purged): it is waited for, then
        the refresh goes on as above.
        """
        entry, marks, persist = await self._read(target, cached=False)
        running = self.flights.running.get(target.key)
        while persist and running is not None and running.marks != marks:
            try:
                await running.wait()
            except (FetchError, FetchFailed, Overloaded, StoreUnavailable, WaitTimeout):
                pass  # Refreshed again below, as after any failure.
            entry, marks, persist = await self._read(target, cached=False)
            running = self.flights.running.get(target.key)
        job, now = target.job, self.clock.seconds()
        if not persist:
            raise StoreUnavailable("the store is unreachable; a refresh would not be stored")
        if entry is not None and target.key not in self.flights.running:
            if entry.is_failure and now < entry.retry_at:
                raise FetchFailed(public_reason(entry.last_error or ""))
            if not entry.is_failure and (now + lead < entry.fresh_until or now < entry.retry_at):
                status = "hit" if now < entry.fresh_until else "stale"
                return Answer(job.name, target.key, status, entry)
        flight = self.flights.start(target, entry, persist, marks, reason=reason)
        try:
            fetched = await flight.wait()
        except FetchError as e:
            raise FetchFailed(public_reason(str(e))) from None
        return Answer(job.name, target.key, "miss", fetched, stored=flight.persist)

    async def refresh(self, target: Target) -> str:
        """Start a refresh of C{target} now, or join the one running; fires with its key."""
        entry, marks, persist = await self._read(target, cached=False)
        if not persist:
            raise StoreUnavailable("the store is unreachable; a refresh would not be stored")
        self.flights.start(target, entry, persist, marks)
        return target.key

    # -- lifecycle -----------------------------------------------------------

    def stopService(self, drain: float | None = None) -> Deferred[None]:
        """
        Let the fetches in flight finish for up to C{drain} seconds (else
        C{drain_timeout}), then cancel the rest; their callers are answered
        either way.
        """
        Service.stopService(self)
        if self.ahead is not None:
            self.ahead.stop()
        return self.flights.drain(self.drain_timeout if drain is None else drain)

    def startService(self) -> None:
        Service.startService(self)
        if self.ahead is not None:
            self.ahead.start()
