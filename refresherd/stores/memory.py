"""
The embedded store: entries in this process's memory (C{memory://}).

It is not shared, so single-flight holds within one process only.  Entries are
kept as L{Entry} objects, never encoded.  Memory is bounded by C{max_bytes}
with least-recently-used eviction; see L{entry_cost} for what an entry counts.
Expired entries are dropped when read, and on every write all entries whose
time has passed (a heap of expiry times), so no timer runs per entry.
"""

from __future__ import annotations

import heapq
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from refresherd.core.marks import GENERATION_MARGIN, renewed
from refresherd.entry import Entry
from refresherd.interfaces import IHoldsEntries, IReadsAtHand, IStore
from refresherd.stores.waiters import ChangeWaiters

DEFAULT_MAX_BYTES = 64 * 1024 * 1024

ENTRY_OVERHEAD = 200
"""What one entry counts beyond its strings: the objects that hold it."""

_LEASE_SWEEP_MIN = 1024


def entry_cost(key: str, entry: Entry) -> int:
    """
    What keeping C{entry} under C{key} counts against C{max_bytes}: the body's
    bytes, plus the length in characters of the key and of every string of the
    entry (content type, job, ETag, last error, tags, argument names and
    values), plus L{ENTRY_OVERHEAD}.  An estimate, not Python's real usage.
    """
    strings = (
        len(key)
        + len(entry.content_type)
        + len(entry.job)
        + len(entry.etag)
        + len(entry.last_error or "")
        + sum(len(tag) for tag in entry.tags)
        + sum(len(name) + len(value) for name, value in entry.args.items())
    )
    return ENTRY_OVERHEAD + entry.size() + strings


@attrs.frozen
class _Slot:
    entry: Entry
    expires_at: float
    cost: int


@implementer(IStore, IReadsAtHand, IHoldsEntries)
@attrs.define(eq=False)
class MemoryStore:
    """
    An L{IStore} in this process's memory, bounded by C{max_bytes}.

    A C{put} of an entry larger than C{max_bytes} on its own writes nothing,
    drops any previous entry of the key (as memcached does) and fires C{False}.
    A C{put} with a C{ttl} of zero or less leaves the key absent and fires
    C{True}.  Leases do not count against C{max_bytes}.
    """

    lags: ClassVar[bool] = False
    shared: ClassVar[bool] = False

    clock: IReactorTime
    max_bytes: int = DEFAULT_MAX_BYTES
    _entries: OrderedDict[str, _Slot] = attrs.field(init=False, repr=False, factory=OrderedDict)
    _used: int = attrs.field(init=False, repr=False, default=0)
    _expiries: list[tuple[float, str]] = attrs.field(init=False, repr=False, factory=list)
    """A heap of (expiry, key), so expired entries go without waiting to be read."""
    _leases: dict[str, tuple[str, float]] = attrs.field(init=False, repr=False, factory=dict)
    _lease_sweep_at: int = attrs.field(init=False, repr=False, default=_LEASE_SWEEP_MIN)
    _purge_tokens: dict[str, tuple[str, float]] = attrs.field(init=False, repr=False, factory=dict)
    """Each generation key's token and when it expires."""
    _token_sweep_at: int = attrs.field(init=False, repr=False, default=_LEASE_SWEEP_MIN)
    _waiters: ChangeWaiters = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: ChangeWaiters(self.clock), takes_self=True),
    )

    @property
    def used_bytes(self) -> int:
        """What the entries kept now count, per L{entry_cost}."""
        return self._used

    def entry_count(self) -> int:
        """See L{IHoldsEntries.entry_count}."""
        return len(self._entries)

    def get(self, key: str) -> Deferred[Entry | None]:
        """See L{IStore.get}; a hit makes C{key} the most recently used."""
        return defer.succeed(self._entry(key))

    def _entry(self, key: str) -> Entry | None:
        slot = self._entries.get(key)
        if slot is None:
            return None
        if slot.expires_at <= self.clock.seconds():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return slot.entry

    def put(self, key: str, entry: Entry, ttl: float, lease: str | None = None) -> Deferred[bool]:
        """See L{IStore.put}, and L{MemoryStore} for oversize entries and C{ttl <= 0}."""
        now = self.clock.seconds()
        if lease is not None:
            if not self._holds(key, lease, now):
                return defer.succeed(False)
        else:
            self._leases.pop(key, None)
        self._drop(key)
        self._expire(now)
        cost = entry_cost(key, entry)
        written = cost <= self.max_bytes
        if written and ttl > 0:
            self._entries[key] = _Slot(entry, now + ttl, cost)
            heapq.heappush(self._expiries, (now + ttl, key))
            self._used += cost
            while self._used > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._used -= evicted.cost
            if self._purge_tokens:
                self._renew(renewed(key, entry.job, entry.tags, entry.marks), now + ttl)
        self._waiters.notify(key)
        return defer.succeed(written)

    def delete(self, key: str) -> Deferred[bool]:
        """See L{IStore.delete}; an expired entry counts as absent."""
        self._leases.pop(key, None)
        slot = self._drop(key)
        self._waiters.notify(key)
        return defer.succeed(slot is not None and slot.expires_at > self.clock.seconds())

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        """See L{IStore.acquire_lease}."""
        now = self.clock.seconds()
        held = self._leases.get(key)
        if held is not None and held[1] > now:
            return defer.succeed(None)
        self._sweep_leases(now)
        token = token or secrets.token_hex(16)
        self._leases[key] = (token, now + ttl)
        return defer.succeed(token)

    def release_lease(self, key: str, token: str) -> Deferred[None]:
        """See L{IStore.release_lease}."""
        held = self._leases.get(key)
        if held is not None and held[0] == token:
            del self._leases[key]
        return defer.succeed(None)

    def wait_for_change(self, key: str, timeout: float) -> Deferred[None]:
        """
        See L{IStore.wait_for_change}.  Cancelling the result forgets the
        waiter and its timer.
        """
        return self._waiters.wait(key, timeout)

    def read(
        self, key: str, generation_keys: Sequence[str], cached: bool = True
    ) -> Deferred[tuple[Entry | None, dict[str, str]]]:
        """See L{IStore.read}."""
        return defer.succeed(self.read_at_hand(key, generation_keys))

    def read_at_hand(
        self, key: str, generation_keys: Sequence[str]
    ) -> tuple[Entry | None, dict[str, str]]:
        """See L{IReadsAtHand.read_at_hand}: always."""
        return self._entry(key), self._tokens(generation_keys)

    def get_purge_tokens(self, keys: Sequence[str]) -> Deferred[dict[str, str]]:
        """See L{IStore.get_purge_tokens}."""
        return defer.succeed(self._tokens(keys))

    def _tokens(self, keys: Sequence[str]) -> dict[str, str]:
        tokens = self._purge_tokens
        if not tokens:  # Nothing ever purged: most reads.
            return {}
        now = self.clock.seconds()
        found = {}
        for k in keys:
            held = tokens.get(k)
            if held is not None and held[1] > now:
                found[k] = held[0]
        return found

    def new_purge_token(self, key: str, ttl: float) -> Deferred[str]:
        """
        See L{IStore.new_purge_token}.  Generations do not count against
        C{max_bytes}: there is one per job or tag purged within their lifetime.
        """
        now = self.clock.seconds()
        if len(self._purge_tokens) >= self._token_sweep_at:
            self._purge_tokens = {k: v for k, v in self._purge_tokens.items() if v[1] > now}
            self._token_sweep_at = max(_LEASE_SWEEP_MIN, 2 * len(self._purge_tokens))
        token = secrets.token_hex(16)
        self._purge_tokens[key] = (token, now + ttl)
        return defer.succeed(token)

    def _renew(self, keys: Sequence[str], until: float) -> None:
        """Keep the generation keys C{keys} that exist until C{until} and GENERATION_MARGIN."""
        now, until = self.clock.seconds(), until + GENERATION_MARGIN
        for k in keys:
            held = self._purge_tokens.get(k)
            if held is not None and now < held[1] < until:
                self._purge_tokens[k] = (held[0], until)

    def ping(self) -> Deferred[None]:
        """See L{IStore.ping}: memory always answers."""
        return defer.succeed(None)

    def _drop(self, key: str) -> _Slot | None:
        slot = self._entries.pop(key, None)
        if slot is not None:
            self._used -= slot.cost
        return slot

    def _expire(self, now: float) -> None:
        """
        Drop the entries whose time has passed, in amortized O(log n) per
        write; rebuild the heap when overwritten keys have left it mostly stale.
        """
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            slot = self._entries.get(key)
            if slot is not None and slot.expires_at <= now:
                self._drop(key)
        if len(heap) > 2 * len(self._entries) + _LEASE_SWEEP_MIN:
            self._expiries = [(slot.expires_at, key) for key, slot in self._entries.items()]
            heapq.heapify(self._expiries)

    def _holds(self, key: str, token: str, now: float) -> bool:
        held = self._leases.get(key)
        return held is not None and held[0] == token and held[1] > now

    def _sweep_leases(self, now: float) -> None:
        """Forget expired leases nobody touched, in amortized constant time."""
        if len(self._leases) < self._lease_sweep_at:
            return
        self._leases = {k: held for k, held in self._leases.items() if held[1] > now}
        self._lease_sweep_at = max(_LEASE_SWEEP_MIN, 2 * len(self._leases))


_MAX_BYTES = re.compile(r"[0-9]+")


def memory_store_from_url(url: str, clock: IReactorTime) -> MemoryStore:
    """
    The L{MemoryStore} of a C{memory://} or C{memory://?max_bytes=N} URL (N a
    positive number of bytes).  Anything else is a L{ValueError} whose message
    is one line.
    """
    parts = urlsplit(url)
    if parts.scheme != "memory" or not url.lower().startswith("memory://"):
        raise ValueError(f"not a memory store URL: {url!r}")
    if parts.netloc or parts.path or parts.fragment:
        raise ValueError(f"a memory store URL has no host, path or fragment: {url!r}")
    max_bytes = DEFAULT_MAX_BYTES
    seen: set[str] = set()
    for param in parts.query.split("&") if parts.query else []:
        name, _, value = param.partition("=")
        if name != "max_bytes":
            raise ValueError(f"unknown memory store parameter {name!r} in {url!r}")
        if name in seen:
            raise ValueError(f"repeated memory store parameter {name!r} in {url!r}")
        seen.add(name)
        if not _MAX_BYTES.fullmatch(value) or int(value) == 0:
            raise ValueError(f"max_bytes must be a positive integer, not {value!r}, in {url!r}")
        max_bytes = int(value)
    return MemoryStore(clock, max_bytes=max_bytes)
