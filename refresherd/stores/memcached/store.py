"""
The shared store on a pool of memcached servers
(C{memcached://host:port[,host:port...][?item_limit=N]}).

The layout other programs read is documented in C{docs/memcached.md}, and
built by L{refresherd.stores.memcached.layout}:

    K                                    ->  encode(entry), or a manifest of chunks
                                             (version 2: with the entry's metadata line)
    {ns}:chunk:{generation}:{i}:{rest}   ->  chunk i of a value too large for one item
    {ns}:lease:{rest}                    ->  the token of the fetch that holds K's lease

Each key lives on the server that consistent hashing gives it
(L{refresherd.stores.memcached.ring}), or on the next one round the ring while
that server is down.  Each server has one connection, a
L{twisted.protocols.memcache.MemCacheProtocol} kept up by a L{ClientService}.
Every key is checked before it is sent, every reply is checked against the
request it answers (a connection that goes out of step is dropped), no item
over the item limit is ever sent, and every call has a deadline.

memcached has no transactions and no notifications: a fenced write checks its
lease, then writes with C{cas}; waiters in other processes poll.  A put of a
large value whose body the manifest under its key already names (a renewal)
writes only a new manifest, and extends its chunks' expiry with C{touch}.  What that
makes weaker than Redis is in C{docs/memcached.md}.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.memcache import Command, MemCacheProtocol, ServerError
from twisted.python.compat import networkString
from twisted.python.failure import Failure
from zope.interface import implementer

from refresherd.entry import Entry, encode
from refresherd.errors import StoreUnavailable, one_line
from refresherd.interfaces import IStore
from refresherd.stores.memcached.layout import (
    CHUNK_MARGIN,
    MAX_ITEM_LIMIT,
    MIN_ITEM_LIMIT,
    Manifest,
    check_key,
    exptime,
    fits,
    inline_fits,
    is_manifest,
    lease_key,
    metadata_fits,
    parse_manifest,
    split,
)
from refresherd.stores.memcached.ring import Ring
from refresherd.stores.reader import DEFAULT_MAX_ENTRY_BYTES, EntryReader
from refresherd.stores.waiters import ChangeWaiters

T = TypeVar("T")

DEFAULT_PORT = 11211
DEFAULT_ITEM_LIMIT = 1024 * 1024
"""memcached's own default C{-I}."""

DEFAULT_TIMEOUT = 2.0
"""Seconds one store call may take, all its round trips together."""
DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds to connect to a server and have it answer C{stats settings}."""

RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0

DEAD_MIN = 5.0
DEAD_MAX = 30.0
"""
A server whose connection is lost is skipped for DEAD_MIN seconds, doubling
each time it is lost again, up to DEAD_MAX, even once it is connected again
(unless no other server is connected); after DEAD_MAX seconds up, its record
is clean again.
"""

MULTIGET_BATCH = 100
"""Keys in one C{get} command."""

SPOILED_KEPT = 1024
"""Generations whose chunks failed their manifest's check, remembered (all forgotten past this)."""

_REPLIES: dict[bytes, frozenset[bytes]] = {
    b"get": frozenset({b"VALUE", b"END"}),
    b"gets": frozenset({b"VALUE", b"END"}),
    b"set": frozenset({b"STORED", b"NOT_STORED"}),
    b"add": frozenset({b"STORED", b"NOT_STORED"}),
    b"cas": frozenset({b"STORED", b"EXISTS", b"NOT_FOUND"}),
    b"delete": frozenset({b"DELETED", b"NOT_FOUND"}),
    b"touch": frozenset({b"TOUCHED", b"NOT_FOUND"}),
    b"stats": frozenset({b"STAT", b"END"}),
    b"version": frozenset({b"VERSION"}),
}
"""The first word of every reply each command may get, errors aside."""

_STORAGE = frozenset({b"set", b"add", b"cas"})
"""Commands after whose C{SERVER_ERROR} memcached stays in step (it swallows the data)."""


class _Lost(StoreUnavailable):
    """The connection went before the reply: the call may go to the next server."""


class _OutOfStep(Exception):
    """A reply that does not answer the request it came for."""


@attrs.define(eq=False)
class _Server:
    """One server of the pool and what the store knows of it."""

    host: str
    port: int
    service: ClientService | None = None
    connection: _Connection | None = None
    """The connection once it has answered C{stats settings}; None while down."""
    item_size_max: int | None = None
    dead_until: float = 0.0
    losses: int = 0
    up_since: float = 0.0
    warned_limit: bool = False
    attempted: bool = False
    """Whether its first connection attempt has ended (connected or not)."""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@implementer(IStore)
@attrs.define(eq=False)
class MemcachedStore(Service):
    """
    An L{IStore} on memcached servers, shared by every process that uses the
    same servers (listed in the same order or not: only their C{host:port}
    names count).  See the module docstring for its layout.

    L{startService} connects to every server; L{ready} fires once all of them
    answer.  L{stopService} disconnects: pending calls fail with
    L{StoreUnavailable}, and waiters fire as if their time had passed.

    @ivar reactor: provides C{IReactorTime} and C{IReactorTCP}.
    @ivar servers: C{(host, port)} of each server.
    @ivar namespace: the C{[store] namespace}; the keys carry it already, so the
        store only shows it in messages.
    @ivar item_limit: the largest item sent, key and header included: no more
        than the servers' C{-I}.  A server that says (C{stats settings}) that its
        limit is lower lowers it.
    @ivar timeout: seconds any one call may take.
    @ivar connect_timeout: seconds one connection attempt may take.
    @ivar max_entry_bytes: the largest entry read: larger ones, and manifests
        that claim more bytes or chunks than such an entry needs, read as absent.
    @ivar manifest_version: 2 (the default): a value in chunks gets a manifest
        of version 2 when its metadata fits in it, and a put of the body such a
        manifest already names writes only a new manifest.  1: every manifest
        is of version 1 and every put writes every chunk, as releases before
        version 2 did (for comparisons; both are always read).
    """

    shared: ClassVar[bool] = True

    reactor: Any = attrs.field(repr=False)
    servers: tuple[tuple[str, int], ...]
    namespace: str = "rfd"
    item_limit: int = DEFAULT_ITEM_LIMIT
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    dead_min: float = DEAD_MIN
    dead_max: float = DEAD_MAX
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    manifest_version: int = 2

    _log: ClassVar[Logger] = Logger()
    _pool: list[_Server] = attrs.field(init=False, repr=False, factory=list)
    _ring: Ring[_Server] = attrs.field(init=False, repr=False)
    _readiness: list[Deferred[None]] = attrs.field(init=False, repr=False, factory=list)
    _starting: list[Deferred[None]] | None = attrs.field(init=False, repr=False, factory=list)
    """The calls made before every server's first connection attempt ended,
    which wait for them (within their deadline); None once they have."""
    _spoiled: set[str] = attrs.field(init=False, repr=False, factory=set)
    """Generations whose chunks a read found not to match their manifest: never renewed."""
    _waiters: ChangeWaiters = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: ChangeWaiters(self.reactor), takes_self=True),
    )
    _reader: EntryReader = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: EntryReader("memcached", self.max_entry_bytes), takes_self=True
        ),
    )

    def __attrs_post_init__(self) -> None:
        if not self.servers:
            raise ValueError("a memcached store needs at least one server")
        if not MIN_ITEM_LIMIT <= self.item_limit <= MAX_ITEM_LIMIT:
            raise ValueError(f"item_limit must be from {MIN_ITEM_LIMIT} to {MAX_ITEM_LIMIT} bytes")
        if self.manifest_version not in (1, 2):
            raise ValueError("manifest_version must be 1 or 2")
        self._pool = [_Server(host, port) for host, port in self.servers]
        self._ring = Ring([(server.address, server) for server in self._pool])

    @property
    def addresses(self) -> str:
        """C{host:port,...}, for messages."""
        return ",".join(server.address for server in self._pool)

    @property
    def effective_item_limit(self) -> int:
        """L{item_limit}, or the lowest C{-I} a server has reported if lower."""
        learned = [s.item_size_max for s in self._pool if s.item_size_max is not None]
        return min([self.item_limit, *learned])

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        """Start connecting to every server, and reconnecting whenever a connection is lost."""
        super().startService()
        for server in self._pool:
            endpoint = HostnameEndpoint(
                self.reactor, server.host, server.port, timeout=self.connect_timeout
            )
            server.service = ClientService(
                endpoint,
                _Factory(self, server),
                retryPolicy=backoffPolicy(
                    RECONNECT_INITIAL_DELAY,
                    RECONNECT_MAX_DELAY,
                    factor=2.0,
                    jitter=lambda: random.random() * RECONNECT_INITIAL_DELAY,
                ),
                clock=self.reactor,
            )
            server.service.startService()
            first = server.service.whenConnected(failAfterFailures=1)
            first.addErrback(lambda _, server: self._attempted(server), server)

    def stopService(self) -> Deferred[None]:
        """Disconnect from every server; fires once every connection is closed."""
        super().stopService()
        for server in self._pool:
            self._attempted(server)
        readiness, self._readiness = self._readiness, []
        for d in readiness:
            d.errback(StoreUnavailable(f"the memcached store of {self.addresses} was stopped"))
        self._waiters.notify_all()
        stopping = []
        for server in self._pool:
            service, server.service, server.connection = server.service, None, None
            if service is not None:
                stopping.append(service.stopService())
        closed = defer.gatherResults(stopping, consumeErrors=True)
        return closed.addCallback(lambda _: None)

    def ready(self) -> Deferred[None]:
        """
        Fire once every server is connected and has answered (at once if they
        are).  It waits as long as that takes; add a timeout, or cancel it.
        """
        if all(server.connection is not None for server in self._pool):
            return defer.succeed(None)
        d: Deferred[None] = Deferred(self._readiness.remove)
        self._readiness.append(d)
        return d

    # -- IStore --------------------------------------------------------------

    def get(self, key: str) -> Deferred[Entry | None]:
        """
        See L{IStore.get}: the entry key, then every chunk it names (one
        multi-get per server).  A missing chunk reads as absent; a manifest that
        claims more than L{max_entry_bytes} needs, chunks that do not match
        their manifest, and bytes that are not an entry or fail a reader's
        checks read as absent with one warning per key.
        """
        return Deferred.fromCoroutine(self._get(key))

    def put(self, key: str, entry: Entry, ttl: float, lease: str | None = None) -> Deferred[bool]:
        """
        See L{IStore.put}.  A value too large for one item is written in
        chunks first, then its manifest.  Unfenced: the lease is deleted, then
        the entry key set.  Fenced: C{gets} of the entry key, then the lease
        is checked, then the entry key is written with C{cas} (C{add} if it
        was absent), so that a write made since by anyone makes it fire
        C{False}.  A C{ttl} of zero or less deletes the entry instead.
        """
        return Deferred.fromCoroutine(self._put(key, entry, ttl, lease))

    def delete(self, key: str) -> Deferred[bool]:
        """See L{IStore.delete}: the lease goes, then the entry key."""
        return Deferred.fromCoroutine(self._delete(key))

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        """See L{IStore.acquire_lease}: C{add} of the lease key, which is atomic."""
        return Deferred.fromCoroutine(self._acquire(key, ttl, token or secrets.token_hex(16)))

    def release_lease(self, key: str, token: str) -> Deferred[None]:
        """
        See L{IStore.release_lease}: C{gets} of the lease, then, if it holds
        C{token}, a C{cas} that expires it at once: a compare-and-delete, so a
        lease taken by someone else meanwhile is never released.
        """
        return Deferred.fromCoroutine(self._release(key, token))

    def wait_for_change(self, key: str, timeout: float) -> Deferred[None]:
        """
        See L{IStore.wait_for_change}.  Changes made through this object wake
        its waiters at once; memcached tells nobody of other processes'
        changes, so for those the waiter fires at its timeout and the caller
        reads the store again.  Cancelling the result forgets the waiter and its
        timer.
        """
        return self._waiters.wait(key, timeout)

    def read(
        self, key: str, generation_keys: Sequence[str], cached: bool = True
    ) -> Deferred[tuple[Entry | None, dict[str, str]]]:
        """
        See L{IStore.read}: one multi-get per server of the entry key and the
        generation keys, then the chunks of a large value.
        """
        return Deferred.fromCoroutine(self._read(key, generation_keys))

    async def _read(
        self, key: str, generation_keys: Sequence[str]
    ) -> tuple[Entry | None, dict[str, str]]:
        deadline = self._deadline()
        try:
            found = await self._get_many([key, *generation_keys], deadline)
        except _Lost:
            # A connection went under the multi-get: the entry alone is read
            # again, on the next server if need be.
            entry = await self._get(key)
            return entry, await self._purge_tokens(generation_keys)
        entry = await self._entry(key, found.pop(key, None), deadline)
        return entry, {name: value.decode("ascii", "replace") for name, value in found.items()}

    def get_purge_tokens(self, keys: Sequence[str]) -> Deferred[dict[str, str]]:
        """See L{IStore.get_purge_tokens}: one multi-get per server."""
        return Deferred.fromCoroutine(self._purge_tokens(keys))

    def new_purge_token(self, key: str, ttl: float) -> Deferred[str]:
        """
        See L{IStore.new_purge_token}: C{set} with no expiry, C{ttl} unused:
        memcached evicts the least recently used keys when full anyway (which
        reads as one more purge), and has no way to push an expiry out safely.
        """
        return Deferred.fromCoroutine(self._new_generation(key))

    def ping(self) -> Deferred[None]:
        """See L{IStore.ping}: C{version} to every connected server; one answer is enough."""
        return Deferred.fromCoroutine(self._ping())

    # -- the operations ------------------------------------------------------

    async def _get(self, key: str) -> Entry | None:
        deadline = self._deadline()
        return await self._entry(key, await self._raw(key, deadline), deadline)

    async def _raw(self, key: str, deadline: float) -> bytes | None:
        """The bytes C{key} holds, as they are."""
        k = check_key(key)
        _, (_, data) = await self._keyed(key, "get", lambda c: c.get(k), deadline)
        found: bytes | None = data
        return found

    async def _entry(self, key: str, data: bytes | None, deadline: float) -> Entry | None:
        """The entry of the bytes C{data} found under C{key}: itself, or its chunks."""
        if data is not None and is_manifest(data):
            try:
                manifest = parse_manifest(data, self.max_entry_bytes)
            except ValueError as e:
                self._reader.unreadable(key, str(e))
                return None
            chunks = await self._read_chunks(key, manifest, deadline)
            if chunks is None:
                return None
            try:
                data = manifest.join(chunks)
            except ValueError as e:
                if len(self._spoiled) >= SPOILED_KEPT:
                    self._spoiled.clear()
                self._spoiled.add(manifest.generation)
                self._reader.unreadable(key, str(e))
                return None
            entry = self._reader.entry(key, data)
            if entry is not None and entry.is_failure and manifest.version == 2:
                self._reader.unreadable(key, "a manifest of version 2 for an entry with no body")
                return None
            return entry
        return self._reader.entry(key, data)

    async def _read_chunks(
        self, key: str, manifest: Manifest, deadline: float
    ) -> list[bytes] | None:
        """The chunks of C{manifest} in order, or None if any is missing."""
        keys = manifest.chunk_keys(key)
        try:
            found = await self._get_many(keys, deadline)
        except _Lost:
            return None  # those chunks were on a server that is gone now
        chunks = [found.get(chunk) for chunk in keys]
        if any(chunk is None for chunk in chunks):
            return None
        return [chunk for chunk in chunks if chunk is not None]

    async def _get_many(self, keys: Sequence[str], deadline: float) -> dict[str, bytes]:
        """The values of those of C{keys} that exist: one multi-get per server and batch."""
        await self._started(deadline)
        by_server: dict[_Server, list[bytes]] = {}
        for key in keys:
            k = check_key(key)
            by_server.setdefault(self._route(k, ()), []).append(k)
        reads = [
            self._send(server, "get", _multiget(batch), deadline)
            for server, ks in by_server.items()
            for batch in (ks[i : i + MULTIGET_BATCH] for i in range(0, len(ks), MULTIGET_BATCH))
        ]
        found: dict[str, bytes] = {}
        replies = [await reads[0]] if len(reads) == 1 else await _all(reads)
        for reply in replies:
            for k, (_, value) in reply.items():
                if value is not None:
                    found[k.decode("ascii")] = value
        return found

    async def _purge_tokens(self, keys: Sequence[str]) -> dict[str, str]:
        found = await self._get_many(keys, self._deadline())
        return {key: value.decode("ascii", "replace") for key, value in found.items()}

    async def _new_generation(self, key: str) -> str:
        token = secrets.token_hex(16)
        await self._store(key, token.encode("ascii"), 0, self._deadline())
        return token

    async def _put(self, key: str, entry: Entry, ttl: float, lease: str | None) -> bool:
        check_key(key)
        deadline = self._deadline()
        now = self.reactor.seconds()
        if lease is not None:
            written = await self._put_fenced(key, entry, ttl, now, lease, deadline)
        else:
            value = None
            if ttl > 0:
                read = lambda: self._raw(key, deadline)  # noqa: E731
                value = await self._value(key, entry, ttl, now, deadline, read)
            await self._remove(lease_key(key), deadline)
            if value is None:
                await self._remove(key, deadline)
            else:
                await self._store(key, value, exptime(ttl, now), deadline)
            written = True
        if written:
            self._waiters.notify(key)
        return written

    async def _value(
        self,
        key: str,
        entry: Entry,
        ttl: float,
        now: float,
        deadline: float,
        current: Callable[[], Awaitable[bytes | None]],
    ) -> bytes:
        """
        The bytes to write under C{key} for C{entry}: the entry itself if it fits
        in one item, else a manifest whose chunks are written first.  When
        C{current} (what C{key} holds) is a manifest of version 2 whose chunks
        hold this very body (same length and SHA-256), those chunks get a new
        expiry (C{touch}) instead, and the new manifest names them; if one is
        gone, every chunk is written under a new generation.
        """
        limit = self.effective_item_limit
        body = entry.body
        if body is None or self.manifest_version == 1:
            data = encode(entry)
            if inline_fits(key, data, limit):
                return data
            manifest, chunks = split(data, limit)
        else:
            # The entry's bytes are its metadata line, then its body: an empty
            # body leaves the line alone, without copying the body.
            metadata = encode(attrs.evolve(entry, body=b""))
            if fits(key, len(metadata) + len(body), limit):
                return metadata + body
            if not metadata_fits(key, metadata, limit):
                manifest, chunks = split(encode(entry), limit)
            else:
                digest = hashlib.sha256(body).hexdigest()
                renewal = self._renewal(await current(), metadata, len(body), digest)
                if renewal is not None and await self._renew_chunks(
                    key, renewal, ttl, now, deadline
                ):
                    return renewal.to_bytes()
                manifest, chunks = split(body, limit, metadata, digest)
        expires = exptime(ttl + CHUNK_MARGIN, now)
        writes = [
            Deferred.fromCoroutine(self._store(chunk_key, chunk, expires, deadline))
            for chunk_key, chunk in zip(manifest.chunk_keys(key), chunks, strict=True)
        ]
        await _all(writes)
        return manifest.to_bytes()

    def _renewal(
        self, current: bytes | None, metadata: bytes, length: int, sha256: str
    ) -> Manifest | None:
        """
        The manifest of a renewal of C{current}, a manifest read from the store
        whose chunks hold the body of C{length} bytes and C{sha256}; else None.
        """
        if current is None or not is_manifest(current):
            return None
        try:
            manifest = parse_manifest(current, self.max_entry_bytes)
        except ValueError:
            return None
        if manifest.generation in self._spoiled:
            return None
        return manifest.renewal(metadata, length, sha256)

    async def _renew_chunks(
        self, key: str, manifest: Manifest, ttl: float, now: float, deadline: float
    ) -> bool:
        """
        Give every chunk of C{manifest} the expiry of chunks written now
        (C{touch}); whether every one was there.
        """
        expires = exptime(ttl + CHUNK_MARGIN, now)

        async def touch(chunk: str) -> bool:
            k = check_key(chunk)
            _, touched = await self._keyed(chunk, "touch", lambda c: c.touch(k, expires), deadline)
            return bool(touched)

        touches = [Deferred.fromCoroutine(touch(chunk)) for chunk in manifest.chunk_keys(key)]
        answers: list[bool] = await _all(touches)
        return all(answers)

    async def _put_fenced(
        self, key: str, entry: Entry, ttl: float, now: float, lease: str, deadline: float
    ) -> bool:
        """
        Write C{entry} (a C{ttl} of zero or less: delete it) under C{key} while
        C{lease} holds its lease.  The C{gets} comes first (what it reads is
        what a renewal is checked against), then the chunks, then the lease
        check, so that a write by anyone after that C{gets} makes the C{cas}
        fail.
        """
        k = check_key(key)
        gets = lambda c: c.get(k, withIdentifier=True)  # noqa: E731
        server, (_, cas, current) = await self._keyed(key, "gets", gets, deadline)
        value: bytes | None = None
        expires = exptime(ttl, now)
        if ttl > 0:
            read = lambda: defer.succeed(current)  # noqa: E731
            value = await self._value(key, entry, ttl, now, deadline, read)
        if not await self._holds(key, lease, deadline):
            return False
        if value is None:
            if current is None:
                return True
            value, expires = b"", -1  # a negative expiry expires the item at once
        self._check_fits(key, value)
        if current is None:
            store = lambda c: c.add(k, value, 0, expires)  # noqa: E731
        else:
            store = lambda c: c.checkAndSet(k, value, cas, 0, expires)  # noqa: E731
        stored: bool = await self._send(server, "cas", store, deadline)
        return stored

    async def _holds(self, key: str, lease: str, deadline: float) -> bool:
        where = lease_key(key)
        k = check_key(where)
        _, (_, held) = await self._keyed(where, "get", lambda c: c.get(k), deadline)
        return held is not None and held == lease.encode("utf-8", "replace")

    async def _delete(self, key: str) -> bool:
        check_key(key)
        deadline = self._deadline()
        await self._remove(lease_key(key), deadline)
        existed = await self._remove(key, deadline)
        self._waiters.notify(key)
        return existed

    async def _acquire(self, key: str, ttl: float, token: str) -> str | None:
        where = lease_key(key)
        k = check_key(where)
        expires = exptime(ttl, self.reactor.seconds())
        add = lambda c: c.add(k, token.encode("ascii"), 0, expires)  # noqa: E731
        _, added = await self._keyed(where, "add", add, self._deadline())
        return token if added else None

    async def _release(self, key: str, token: str) -> None:
        where = lease_key(key)
        k = check_key(where)
        deadline = self._deadline()
        gets = lambda c: c.get(k, withIdentifier=True)  # noqa: E731
        server, (_, cas, held) = await self._keyed(where, "gets", gets, deadline)
        if held is None or held != token.encode("utf-8", "replace"):
            return
        expire = lambda c: c.checkAndSet(k, b"", cas, 0, -1)  # noqa: E731
        await self._send(server, "cas", expire, deadline)

    async def _ping(self) -> None:
        connected = [server for server in self._pool if server.connection is not None]
        if not connected:
            raise self._none_connected()
        deadline = self._deadline()
        results = await defer.DeferredList(
            [self._send(s, "version", lambda c: c.version(), deadline) for s in connected],
            consumeErrors=True,
        )
        failures = [result for ok, result in results if not ok]
        if len(failures) == len(results):
            failures[0].raiseException()

    async def _remove(self, key: str, deadline: float) -> bool:
        k = check_key(key)
        _, deleted = await self._keyed(key, "delete", lambda c: c.delete(k), deadline)
        return bool(deleted)

    async def _store(self, key: str, value: bytes, expires: int, deadline: float) -> None:
        """C{set} one item, never one over the item limit."""
        k = check_key(key)
        self._check_fits(key, value)
        await self._keyed(key, "set", lambda c: c.set(k, value, 0, expires), deadline)

    def _check_fits(self, key: str, value: bytes) -> None:
        """Refuse, unsent, an item memcached would refuse and delete the old value of."""
        if not inline_fits(key, value, self.effective_item_limit):
            raise StoreUnavailable(
                f"an item of {len(value)} bytes is over the memcached item limit of "
                f"{self.effective_item_limit} bytes; not sent"
            )

    # -- routing and calls ---------------------------------------------------

    def _deadline(self) -> float:
        return float(self.reactor.seconds()) + self.timeout

    async def _started(self, deadline: float) -> None:
        """
        A call made while the store is still connecting for the first time (a
        request that reached a process just started) waits for every server's
        first attempt rather than routing as if some were down, until its deadline.
        """
        if self._starting is None or not self.running:
            return
        waiting: Deferred[None] = Deferred(self._starting.remove)
        self._starting.append(waiting)
        waiting.addTimeout(max(deadline - self.reactor.seconds(), 0.0), self.reactor)
        try:
            await waiting
        except defer.TimeoutError:
            pass  # routed as things are: a server not connected yet is skipped

    def _attempted(self, server: _Server) -> None:
        """C{server}'s first connection attempt has ended; once all have, waiting calls go on."""
        server.attempted = True
        if self._starting is not None and all(s.attempted for s in self._pool):
            waiting, self._starting = self._starting, None
            for d in waiting:
                d.callback(None)

    def _route(self, key: bytes, tried: Sequence[_Server]) -> _Server:
        """
        The server for C{key}: the first one round the ring from it that is
        connected and not in its dead period, else the first connected one.
        """
        now = self.reactor.seconds()
        fallback = None
        for server in self._ring.walk(key):
            if server.connection is None or any(server is t for t in tried):
                continue
            if now >= server.dead_until:
                return server
            fallback = fallback or server
        if fallback is None:
            raise self._none_connected()
        return fallback

    def _none_connected(self) -> StoreUnavailable:
        return StoreUnavailable(f"no memcached server of {self.addresses} is connected")

    async def _keyed(
        self,
        key: str,
        operation: str,
        call: Callable[[_Connection], Deferred[Any]],
        deadline: float,
    ) -> tuple[_Server, Any]:
        """
        Run C{call} on the server of C{key}; when its connection goes before
        the reply, on the next server, until the deadline.  The server that
        answered comes with the reply, for a C{cas} that must go to the same one.
        """
        k = check_key(key)
        await self._started(deadline)
        tried: list[_Server] = []
        while True:
            server = self._route(k, tried)
            try:
                return server, await self._send(server, operation, call, deadline)
            except _Lost:
                tried.append(server)
                if self.reactor.seconds() >= deadline:
                    raise

    def _send(
        self,
        server: _Server,
        operation: str,
        call: Callable[[_Connection], Deferred[Any]],
        deadline: float,
    ) -> Deferred[Any]:
        """
        Run C{call} on C{server}'s connection within the deadline, turning every
        failure to reach it, and every error reply, into L{StoreUnavailable}.
        """
        connection = server.connection
        if connection is None or connection.broken:
            return defer.fail(_Lost(f"memcached at {server.address} is not connected"))
        d = defer.maybeDeferred(call, connection)
        d.addTimeout(max(deadline - self.reactor.seconds(), 0.0), self.reactor)
        return d.addErrback(self._unavailable, server, connection, operation)

    def _unavailable(
        self, failure: Failure, server: _Server, connection: _Connection, operation: str
    ) -> Failure:
        where = f"memcached at {server.address}"
        if failure.check(defer.TimeoutError):
            # No answer in time: the connection is dead or hopelessly behind,
            # and the server is skipped for a while.
            connection.abort()
            message = f"{where} did not answer {operation} within {self.timeout:g} s"
            return Failure(StoreUnavailable(message))
        if failure.check(ServerError):
            return Failure(
                StoreUnavailable(one_line(f"{where} refused {operation}: {failure.value}"))
            )
        if failure.check(ConnectionClosed, _OutOfStep):
            return Failure(_Lost(one_line(f"{where} failed {operation}: {failure.value}")))
        return failure

    # -- connections ---------------------------------------------------------

    def _handshake(self, server: _Server, connection: _Connection) -> None:
        """A new connection: usable once it answers C{stats settings}."""
        d = connection.stats(b"settings")
        d.addTimeout(self.connect_timeout, self.reactor)
        d.addCallbacks(
            lambda settings: self._up(server, connection, settings),
            lambda _: connection.abort(),
        )
        d.addBoth(lambda _: self._attempted(server))

    def _up(self, server: _Server, connection: _Connection, settings: dict[bytes, bytes]) -> None:
        if not self.running or connection.broken:
            connection.abort()
            return
        limit = settings.get(b"item_size_max", b"")
        server.item_size_max = int(limit) if limit.isdigit() else None
        if server.item_size_max is not None and server.item_size_max < MIN_ITEM_LIMIT:
            if not server.warned_limit:
                self._log.error(
                    "memcached at {address} has an item limit of {limit} bytes, under "
                    "{minimum}; it is not used",
                    address=server.address,
                    limit=server.item_size_max,
                    minimum=MIN_ITEM_LIMIT,
                )
            server.warned_limit = True
            server.item_size_max = None
            connection.abort()
            return
        if server.item_size_max is not None and server.item_size_max < self.item_limit:
            if not server.warned_limit:
                self._log.warn(
                    "memcached at {address} takes items of at most {limit} bytes "
                    "(its -I), under the store's item_limit of {configured}; "
                    "using {limit}",
                    address=server.address,
                    limit=server.item_size_max,
                    configured=self.item_limit,
                )
            server.warned_limit = True
        server.connection = connection
        server.up_since = self.reactor.seconds()
        self._log.info("Connected to memcached at {address}", address=server.address)
        if all(s.connection is not None for s in self._pool):
            readiness, self._readiness = self._readiness, []
            for d in readiness:
                d.callback(None)

    def _lost(self, server: _Server, connection: _Connection) -> None:
        """A connection was lost: if it was in use, the server is dead for a while."""
        if server.connection is not connection:
            return
        server.connection = None
        if not self.running:
            return
        now = self.reactor.seconds()
        if now - server.up_since >= self.dead_max:
            server.losses = 0
        server.losses += 1
        period = min(self.dead_max, self.dead_min * 2 ** (server.losses - 1))
        server.dead_until = now + period
        self._log.warn(
            "Lost memcached at {address}; its keys go to the next servers on the ring "
            "until it is back and for {period:g} s at least",
            address=server.address,
            period=period,
        )

    def _out_of_step(self, server: _Server, why: str) -> None:
        self._log.warn(
            "memcached at {address} answered {why}; dropping the connection, whose "
            "later replies could answer the wrong requests",
            address=server.address,
            why=why,
        )


class _Connection(MemCacheProtocol):
    """
    Twisted's memcache client, minus what is unsafe in it: every reply must be
    one that the oldest pending request can get.  C{ERROR}, C{CLIENT_ERROR}
    (after which memcached reads the rest of the request as new commands), a
    C{SERVER_ERROR} to anything but a storage command, or any other reply out of
    place fail every pending request and drop the connection at once.  It never
    logs through C{twisted.python.log}, and keeps no timer of its own: deadlines
    are the store's.
    """

    def __init__(self, store: MemcachedStore, server: _Server) -> None:
        super().__init__(timeOut=None)
        self.store = store
        self.server = server
        self.broken = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.store._handshake(self.server, self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.broken = True
        self.store._lost(self.server, self)
        super().connectionLost(reason)

    def lineReceived(self, line: bytes) -> None:
        if self.broken:
            return
        if not self._current:
            self._out_of_step(f"{line[:80]!r} to no request")
            return
        head: Command = self._current[0]
        token = line.split(b" ", 1)[0]
        if token == b"SERVER_ERROR" and head.command in _STORAGE:
            self._current.popleft().fail(ServerError(line[len(b"SERVER_ERROR ") :].decode()))
            return
        if token not in _REPLIES.get(head.command, frozenset()):
            self._out_of_step(f"{line[:80]!r} to {head.command.decode()}")
            return
        try:
            super().lineReceived(line)
        except Exception as e:
            self._out_of_step(f"{line[:80]!r} to {head.command.decode()} ({e})", head)

    def touch(self, key: bytes, expireTime: int) -> Deferred[bool]:
        """
        Give C{key} a new expiry time (C{touch}, which Twisted's client lacks):
        fires True if the item was there (C{TOUCHED}), False if not
        (C{NOT_FOUND}).  Any other reply drops the connection, as for every
        command.  C{key} must have passed L{check_key}.
        """
        if self._disconnected:
            return defer.fail(RuntimeError("not connected"))
        self.sendLine(b"touch " + key + b" " + networkString(str(int(expireTime))))
        command = Command(b"touch", key=key)
        self._current.append(command)
        answer: Deferred[bool] = command._deferred
        return answer

    def cmd_TOUCHED(self) -> None:
        self._current.popleft().success(True)

    def rawDataReceived(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            super().rawDataReceived(data)
        except Exception as e:
            self._out_of_step(f"a value that answers no request ({e})")

    def _out_of_step(self, why: str, head: Command | None = None) -> None:
        self.broken = True
        self._disconnected = True
        pending = list(self._current)
        if head is not None and all(head is not cmd for cmd in pending):
            pending.insert(0, head)
        self._current.clear()
        self.store._out_of_step(self.server, why)
        error = _OutOfStep(why)
        for cmd in pending:
            if not cmd._deferred.called:
                cmd.fail(error)
        self.abort()

    def abort(self) -> None:
        """Close the connection at once, whatever is still to be sent."""
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


class _Factory(Factory):
    noisy = False

    def __init__(self, store: MemcachedStore, server: _Server) -> None:
        self.store = store
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> _Connection:
        connection = _Connection(self.store, self.server)
        connection.factory = self
        return connection


def _multiget(keys: list[bytes]) -> Callable[[_Connection], Deferred[Any]]:
    return lambda c: c.getMultiple(keys)


async def _all(ds: list[Deferred[T]]) -> list[T]:
    """The results of C{ds}, or the first failure itself (not wrapped in FirstError)."""
    try:
        return await defer.gatherResults(ds, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()
        raise


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
_DIGITS = re.compile(r"[0-9]+")


def memcached_store_from_url(
    url: str, namespace: str, reactor: Any, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
) -> MemcachedStore:
    """
    The L{MemcachedStore} of C{memcached://host[:port][,host[:port]...][?item_limit=N]}
    (and C{manifest_version=1} to write manifests as releases before 2 did)
    (port 11211 by default; IPv6 addresses in brackets), reading entries of
    at most C{max_entry_bytes}.  Anything wrong is a L{ValueError} whose
    message is one line.
    """
    what = "the memcached store URL"
    if not url.lower().startswith("memcached://"):
        raise ValueError(f"{what} must start with memcached://")
    rest = url[len("memcached://") :]
    if "#" in rest:
        raise ValueError(f"{what} takes no fragment")
    hosts, _, query = rest.partition("?")
    hosts = hosts[:-1] if hosts.endswith("/") else hosts
    if "/" in hosts:
        raise ValueError(f"{what} takes no path: memcached://host:port[,host:port...]")
    if "@" in hosts:
        raise ValueError(f"{what} takes no user name or password")
    if not hosts:
        raise ValueError(f"{what} names no server: memcached://host:port[,host:port...]")
    servers = [_server(part, what) for part in hosts.split(",")]
    for i, server in enumerate(servers):
        if server in servers[:i]:
            raise ValueError(f"{what} names {server[0]}:{server[1]} twice")
    item_limit = DEFAULT_ITEM_LIMIT
    manifest_version = 2
    seen: set[str] = set()
    for param in query.split("&") if query else []:
        name, _, value = param.partition("=")
        if name not in ("item_limit", "manifest_version"):
            raise ValueError(
                f"{what}: unknown parameter {name[:40]!r}; only item_limit and manifest_version"
            )
        if name in seen:
            raise ValueError(f"{what}: {name} is given twice")
        seen.add(name)
        if name == "manifest_version":
            if value not in ("1", "2"):
                raise ValueError(f"{what}: manifest_version must be 1 or 2, not {value[:40]!r}")
            manifest_version = int(value)
            continue
        if not _DIGITS.fullmatch(value) or not MIN_ITEM_LIMIT <= int(value) <= MAX_ITEM_LIMIT:
            raise ValueError(
                f"{what}: item_limit must be a number of bytes from {MIN_ITEM_LIMIT} "
                f"to {MAX_ITEM_LIMIT}, not {value[:40]!r}"
            )
        item_limit = int(value)
    return MemcachedStore(
        reactor,
        tuple(servers),
        namespace=namespace,
        item_limit=item_limit,
        max_entry_bytes=max_entry_bytes,
        manifest_version=manifest_version,
    )


def _server(text: str, what: str) -> tuple[str, int]:
    """C{(host, port)} of one C{host[:port]} of the URL."""
    if not text:
        raise ValueError(f"{what} has an empty server in its list")
    port: str | None = None
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not _IPV6.fullmatch(host) or (after and not after.startswith(":")):
            raise ValueError(f"{what}: {text[:60]!r} is not [IPv6 address]:port")
        port = after[1:] if after else None
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if not _HOST.fullmatch(host):
            raise ValueError(f"{what}: {host[:60]!r} is not a host name or address")
    else:
        host = text
        if not _HOST.fullmatch(host):
            raise ValueError(f"{what}: {host[:60]!r} is not a host name or address")
    if port is None:
        return host.lower(), DEFAULT_PORT
    if not _DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what}: {text[:60]!r} needs a port from 1 to 65535 after the host")
    return host.lower(), int(port)
