"""
A near cache: what lookups read from a shared store (L{IStore.read}: an entry
and the generation tokens of its job and tags), kept in this process for at
most C{ttl} seconds, so that a hot key costs no round trip to Redis or
memcached on most requests.

Coherence.  Every write, delete and purge made through this object drops
what it changes at once.  Changes made by other processes drop what they
change when the store tells of them (Redis: client-side caching tells this
process of every change to an entry or a generation key it read); when the
store may have missed changes (a connection lost or back, a flushed
database), everything is dropped.  Whatever the store tells or does not tell (memcached
tells nothing), nothing is served from here more than C{ttl} seconds after
it was read: that is the bound on how late a change made elsewhere is seen.

Lookups that miss here at once share one read of the store, unless a change
of one of its keys arrived since it began.  A read that was under way when a
change of one of its keys arrived is not kept (it may predate the change).
Only lookups go through here: L{get} (waiting for a fetch elsewhere,
operators' reads) and everything else go to the store itself.  Memory is
bounded by C{max_bytes}, least recently used first, by the same estimate as
the memory store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
from twisted.application.service import IService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from refresherd.entry import Entry
from refresherd.interfaces import IPurgeNotices, IReadsAtHand, IStore
from refresherd.stores.memory import entry_cost

DEFAULT_TTL = 1.0
"""
Seconds a read is served from the near cache at most: the longest a purge made
elsewhere goes unseen (docs/redis.md, "The near cache").
"""
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
TOKEN_COST = 100
"""What a cached generation token counts against C{max_bytes}."""


@attrs.define
class _Slot:
    value: Any
    """An L{Entry}, a token, or None for a key the store does not hold."""
    until: float
    cost: int


@implementer(IStore, IReadsAtHand, IService)
@attrs.define(eq=False)
class NearCache(Service):
    """
    An L{IStore} that keeps the lookups' reads of C{store} for C{ttl}
    seconds, within C{max_bytes}; see the module docstring.  Starting and
    stopping it starts and stops the store.

    @ivar store: the shared store.
    @ivar clock: gives the time that C{ttl} counts.
    """

    lags: ClassVar[bool] = True

    store: Any
    clock: IReactorTime
    ttl: float = DEFAULT_TTL
    max_bytes: int = DEFAULT_MAX_BYTES
    _slots: OrderedDict[str, _Slot] = attrs.field(init=False, repr=False, factory=OrderedDict)
    _used: int = attrs.field(init=False, repr=False, default=0)
    _changes: int = attrs.field(init=False, repr=False, default=0)
    """How many drops there have been: a read keeps only what no drop touched since it began."""
    _dropped_at: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    """For the keys dropped while reads were under way: the count at their last drop."""
    _reads: int = attrs.field(init=False, repr=False, default=0)
    _all_dropped_at: int = attrs.field(init=False, repr=False, default=0)
    """The count at the last L{clear}: no read begun before it is kept."""
    _joinable: dict[tuple[str, tuple[str, ...]], list[Deferred[Any]]] = attrs.field(
        init=False, repr=False, factory=dict
    )
    """The cached reads under way that no change has touched, with who waits for each."""

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)
        watch: Callable[..., None] | None = getattr(self.store, "watch", None)
        if watch is not None:
            watch(self.drop, self.clear)
        if IPurgeNotices.providedBy(self.store):
            alsoProvides(self, IPurgeNotices)

    @property
    def shared(self) -> bool:
        return bool(self.store.shared)

    @property
    def used_bytes(self) -> int:
        return self._used

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if IService.providedBy(self.store):
            self.store.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.clear()
        if IService.providedBy(self.store):
            return defer.maybeDeferred(self.store.stopService)
        return defer.succeed(None)

    # -- what the store tells ------------------------------------------------

    def drop(self, key: str) -> None:
        """Forget C{key}: it changed (here or elsewhere)."""
        self._changes += 1
        for which in [w for w in self._joinable if w[0] == key or key in w[1]]:
            del self._joinable[which]  # Its waiters get it; nobody else joins it.
        if self._reads:
            self._dropped_at[key] = self._changes
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._used -= slot.cost

    def clear(self) -> None:
        """Forget everything: changes may have been missed."""
        self._changes += 1
        self._joinable.clear()
        self._slots.clear()
        self._used = 0
        self._dropped_at.clear()
        self._all_dropped_at = self._changes

    # -- IStore: lookups -----------------------------------------------------

    def read(
        self, key: str, generation_keys: Sequence[str], cached: bool = True
    ) -> Deferred[tuple[Entry | None, dict[str, str]]]:
        """
        See L{IStore.read}: from here while fresh, else (or with C{cached}
        false) from the store, and kept.
        """
        if not cached:
            return Deferred.fromCoroutine(self._read(key, generation_keys))
        at_hand = self.read_at_hand(key, generation_keys)
        if at_hand is not None:
            return defer.succeed(at_hand)
        return self._joined(key, tuple(generation_keys))

    def _joined(
        self, key: str, generation_keys: tuple[str, ...]
    ) -> Deferred[tuple[Entry | None, dict[str, str]]]:
        """
        The store's answer to a cached read: one read of the store however
        many lookups miss here at once (when a hot slot expires, every request
        for it would read the store otherwise), unless a change of one of its
        keys came after the read began (then later lookups read again).
        """
        which = (key, generation_keys)
        joined: Deferred[tuple[Entry | None, dict[str, str]]] = Deferred()
        waiting = self._joinable.get(which)
        if waiting is not None:
            waiting.append(joined)
            return joined
        waiting = self._joinable[which] = [joined]

        def deliver(result: Any) -> None:
            if self._joinable.get(which) is waiting:
                del self._joinable[which]
            for d in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    entry, tokens = result
                    d.callback((entry, dict(tokens)))

        Deferred.fromCoroutine(self._read(key, generation_keys)).addBoth(deliver)
        return joined

    def read_at_hand(
        self, key: str, generation_keys: Sequence[str]
    ) -> tuple[Entry | None, dict[str, str]] | None:
        """See L{IReadsAtHand.read_at_hand}: while the entry and every token are fresh here."""
        # Every hit comes here: the slots' reads inlined.
        now = self.clock.seconds()
        slots = self._slots
        slot = slots.get(key)
        if slot is None or slot.until <= now:
            return None
        slots.move_to_end(key)
        tokens: dict[str, str] = {}
        for name in generation_keys:
            held = slots.get(name)
            if held is None or held.until <= now:
                return None
            slots.move_to_end(name)
            if held.value is not None:
                tokens[name] = held.value
        return slot.value, tokens

    async def _read(
        self, key: str, generation_keys: Sequence[str]
    ) -> tuple[Entry | None, dict[str, str]]:
        began = self._changes
        self._reads += 1
        try:
            entry, tokens = await self.store.read(key, generation_keys)
        finally:
            self._reads -= 1
        until = self.clock.seconds() + self.ttl
        if self._all_dropped_at <= began:
            self._keep(key, entry, until, began, entry_cost(key, entry) if entry else TOKEN_COST)
            for name in generation_keys:
                self._keep(name, tokens.get(name), until, began, TOKEN_COST)
        if not self._reads:
            self._dropped_at.clear()
        return entry, tokens

    def _keep(self, key: str, value: Any, until: float, began: int, cost: int) -> None:
        if self._dropped_at.get(key, -1) > began or cost > self.max_bytes:
            return
        old = self._slots.pop(key, None)
        if old is not None:
            self._used -= old.cost
        self._slots[key] = _Slot(value, until, cost)
        self._used += cost
        while self._used > self.max_bytes:
            _, evicted = self._slots.popitem(last=False)
            self._used -= evicted.cost

    # -- IStore: everything else goes to the store ---------------------------

    def get(self, key: str) -> Deferred[Entry | None]:
        """See L{IStore.get}: always the store's own answer."""
        return self.store.get(key)  # type: ignore[no-any-return]

    def get_purge_tokens(self, keys: Sequence[str]) -> Deferred[dict[str, str]]:
        return self.store.get_purge_tokens(keys)  # type: ignore[no-any-return]

    def put(self, key: str, entry: Entry, ttl: float, lease: str | None = None) -> Deferred[bool]:
        self.drop(key)
        return self._dropping(key, self.store.put(key, entry, ttl, lease))

    def delete(self, key: str) -> Deferred[bool]:
        self.drop(key)
        return self._dropping(key, self.store.delete(key))

    def new_purge_token(self, key: str, ttl: float) -> Deferred[str]:
        self.drop(key)
        return self._dropping(key, self.store.new_purge_token(key, ttl))

    def _dropping(self, key: str, d: Deferred[Any]) -> Deferred[Any]:
        """C{d}, dropping C{key} again once the store has changed it, whatever the outcome."""

        def dropped(result: Any) -> Any:
            self.drop(key)
            return result

        return d.addBoth(dropped)

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        return self.store.acquire_lease(key, ttl, token)  # type: ignore[no-any-return]

    def release_lease(self, key: str, token: str) -> Deferred[None]:
        return self.store.release_lease(key, token)  # type: ignore[no-any-return]

    def wait_for_change(self, key: str, timeout: float) -> Deferred[None]:
        return self.store.wait_for_change(key, timeout)  # type: ignore[no-any-return]

    def ping(self) -> Deferred[None]:
        return self.store.ping()  # type: ignore[no-any-return]

    # IPurgeNotices, provided when the store provides it.

    def publish_purge(self, notice: bytes) -> Deferred[None]:
        return self.store.publish_purge(notice)  # type: ignore[no-any-return]

    def listen_purges(self, heard: Callable[[bytes], None]) -> None:
        self.store.listen_purges(heard)


_NEAR_PARAMETERS = ("near_ttl", "near_bytes")


def near_options(url: str, default_ttl: float) -> tuple[str, float, int]:
    """
    C{url} without its near cache parameters, and their values:
    C{near_ttl} (seconds, from 0 (no near cache) to 1; default C{default_ttl})
    and C{near_bytes} (a positive number of bytes; default 32 MiB).  Anything
    wrong is a L{ValueError} whose message is one line.
    """
    base, _, query = url.partition("?")
    kept: list[str] = []
    ttl, max_bytes = default_ttl, DEFAULT_MAX_BYTES
    seen: set[str] = set()
    for param in query.split("&") if query else []:
        name, _, value = param.partition("=")
        if name not in _NEAR_PARAMETERS:
            kept.append(param)
            continue
        if name in seen:
            raise ValueError(f"the store URL gives {name} twice")
        seen.add(name)
        if name == "near_ttl":
            try:
                ttl = float(value)
            except ValueError:
                ttl = -1.0
            if not 0 <= ttl <= DEFAULT_TTL:
                raise ValueError(
                    f"near_ttl must be a number of seconds from 0 to {DEFAULT_TTL:g}, "
                    f"not {value[:40]!r}"
                )
        else:
            if not value.isdigit() or int(value) == 0:
                raise ValueError(
                    f"near_bytes must be a positive number of bytes, not {value[:40]!r}"
                )
            max_bytes = int(value)
    rest = "&".join(kept)
    return (base + "?" + rest if rest else base), ttl, max_bytes
