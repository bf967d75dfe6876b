"""
The Redis store on the primary Redis Sentinel names (docs/redis.md,
"Sentinel"), on a real primary, replica and three C{redis-sentinel}s: it
finds the primary; after the primary is killed it writes to the new one
within a bound, with no restart; sentinels that disagree or lie do not make
it use a replica; and when no sentinel can say where the primary is, calls
fail at once, with the reason logged once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from refresherd.errors import StoreUnavailable
from refresherd.stores.redis import RedisStore
from refresherd.stores.sentinel import SentinelEndpoint, sentinel_store_from_url
from tests.redis_server import (
    RedisServer,
    SentinelServer,
    SentinelSet,
    ServerTLS,
    TLSFiles,
    free_port,
)
from tests.redis_stores import NAMESPACE, READY, RedisTestCase, sleep
from tests.store_contract import LONG_TTL, sample_entry

FAILOVER_BOUND = 10.0
"""
Seconds from the primary's death to the store's first write on the new one:
Sentinel's failover (down-after 0.5 s, then agreement and promotion, about
2.5 s here) and the store's reconnection (at most 1 s apart, each asking the
sentinels again).
"""

PLANNED_BOUND = 6.0
"""
The same after C{SENTINEL FAILOVER}: the old primary, still up, accepts
writes until Sentinel turns it into a replica, about 8 s after the promotion;
the store leaves it sooner, at its next check of the sentinels (every 2 s).
"""


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels, for the tests that kill nothing."""
    with SentinelSet() as group:
        yield group


class _FakeSentinel(protocol.Protocol):
    """Answers every command (a RESP array) with C{reply}, and AUTH with +OK."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            lines = self.buffer.split(b"\r\n")
            if not lines[0].startswith(b"*") or len(lines) < 2:
                return
            needed = 1 + 2 * int(lines[0][1:])
            if len(lines) <= needed:
                return
            command = lines[2].upper()
            self.buffer = b"\r\n".join(lines[needed:])
            assert self.transport is not None
            self.transport.write(b"+OK\r\n" if command == b"AUTH" else self.reply)


def address_reply(server: RedisServer) -> bytes:
    host, port = server.host.encode(), str(server.port).encode()
    return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(host), host, len(port), port)


class SentinelStoreTests(RedisTestCase):
    group: SentinelSet

    @pytest.fixture(autouse=True)
    def _group(self, sentinel_set: SentinelSet) -> None:
        self.group = sentinel_set

    def sentinel_store(self, url: str) -> RedisStore:
        store = sentinel_store_from_url(url, NAMESPACE, reactor, {})
        return self.started(store)

    def fake_sentinel(self, reply: bytes) -> str:
        """A sentinel that answers every question with C{reply}: its C{host:port}."""
        factory = protocol.Factory.forProtocol(lambda: _FakeSentinel(reply))
        listen: Any = reactor.listenTCP  # typed for the IReactorTCP it provides
        port = listen(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"127.0.0.1:{address.port}"

    def real(self, *indexes: int) -> list[str]:
        return [f"{s.host}:{s.port}" for i, s in enumerate(self.group.sentinels) if i in indexes]

    def url(self, sentinels: list[str]) -> str:
        return f"redis+sentinel://{','.join(sentinels)}/{self.group.service}/0"

    async def assert_writes_to_primary(self, store: RedisStore) -> None:
        await store.ready().addTimeout(READY, reactor)
        key = self.unique_key(n=str(time.monotonic_ns()))
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertIsNotNone(self.group.primary.command("GET", key))
        assert isinstance(store.endpoint, SentinelEndpoint)
        primary = self.group.primary
        self.assertEqual(store.endpoint.primary, (primary.host, primary.port))

    async def test_the_store_finds_the_primary(self) -> None:
        await self.assert_writes_to_primary(self.sentinel_store(self.group.url()))

    async def test_a_sentinel_naming_a_replica_is_outvoted(self) -> None:
        liar = self.fake_sentinel(address_reply(self.group.replica))
        store = self.sentinel_store(self.url([liar, *self.real(0, 1)]))
        await self.assert_writes_to_primary(store)

    async def test_a_tie_is_settled_by_role(self) -> None:
        """One liar, one honest sentinel: the address whose server says it is a primary wins."""
        liar = self.fake_sentinel(address_reply(self.group.replica))
        store = self.sentinel_store(self.url([liar, *self.real(2)]))
        await self.assert_writes_to_primary(store)

    async def test_a_replica_named_by_every_sentinel_is_not_used(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        liars = [self.fake_sentinel(address_reply(self.group.replica)) for _ in range(2)]
        store = self.sentinel_store(self.url(liars))
        await sleep(1.0)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertIn("is not connected", raised.exception.message)
        warnings = [e for e in observer if e["log_level"] == LogLevel.warn]
        replica = self.group.replica
        self.assertIn(
            f"{replica.host}:{replica.port} is not a primary (ROLE: slave)",
            warnings[0]["why"],
        )
        self.assertEqual(len(warnings), 1)  # once, not at every attempt

    async def test_no_sentinel_answers(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = self.sentinel_store(f"redis+sentinel://127.0.0.1:{free_port()}/svc/0")
        await sleep(0.5)
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        [warning] = [e for e in observer if e["log_level"] == LogLevel.warn]
        self.assertIn("no sentinel answered (127.0.0.1:", warning["why"])
        self.assertNotIn("\n", warning["why"])

    async def test_no_sentinel_knows_the_service(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = self.sentinel_store(self.url(self.real(0, 1, 2)).replace("/rfd/", "/other/"))
        await sleep(0.5)
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        [warning] = [e for e in observer if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["why"], "no sentinel knows the service 'other'")

    async def test_a_sentinel_that_never_answers_costs_its_deadline_only(self) -> None:
        silent = self.fake_sentinel(b"")
        store = self.sentinel_store(self.url([silent, *self.real(0)]))
        start = time.monotonic()
        await self.assert_writes_to_primary(store)
        self.assertLess(time.monotonic() - start, 2.5)


class FailoverTests(RedisTestCase):
    async def failover(self, fault: str, bound: float = FAILOVER_BOUND) -> float:
        """
        Seconds from C{fault} (C{kill}: SIGKILL of the primary; C{failover}: a
        SENTINEL FAILOVER, the primary demoted) to the store's first write on
        the new primary, which it then uses, with its change channel.
        """
        group = SentinelSet()
        group.__enter__()
        self.addCleanup(group.cleanup)
        store = sentinel_store_from_url(group.url(), NAMESPACE, reactor, {})
        self.started(store)
        await store.ready().addTimeout(READY, reactor)
        await store.put(self.unique_key(n="before"), sample_entry(), LONG_TTL)

        if fault == "kill":
            group.primary.kill()
        else:
            group.sentinels[0].command("SENTINEL", "FAILOVER", group.service)
        began = time.monotonic()
        key = self.unique_key(n="after")
        endpoint = store.endpoint
        assert isinstance(endpoint, SentinelEndpoint)
        new = (group.replica.host, group.replica.port)
        written: Any = None
        while not written or endpoint.primary != new:
            self.assertLess(time.monotonic() - began, bound, "no write after failover")
            try:
                written = await store.put(key, sample_entry(), LONG_TTL)
            except StoreUnavailable:
                pass
            await sleep(0.1)
        took = time.monotonic() - began
        self.assertIsNotNone(group.replica.command("GET", key))
        # The change channel is back too, on the new primary.
        await store.ready().addTimeout(READY, reactor)
        with group.replica.subscribed(store.channel) as message:
            # A fetch's fenced write: it publishes, and waits for no replica.
            lease = await store.acquire_lease(key, LONG_TTL)
            self.assertTrue(await store.put(key, sample_entry(), LONG_TTL, lease=lease))
            self.assertEqual(message(), [b"message", store.channel.encode(), key.encode()])
        return took

    async def test_after_the_primary_is_killed_the_store_writes_to_the_new_one(self) -> None:
        took = await self.failover("kill")
        print(f"a write on the new primary {took:.2f} s after the old one was killed")

    async def test_after_a_planned_failover_the_store_writes_to_the_new_one(self) -> None:
        took = await self.failover("failover", PLANNED_BOUND)
        print(f"a write on the new primary {took:.2f} s after SENTINEL FAILOVER")


class SentinelTLSTests(RedisTestCase):
    """
    C{rediss+sentinel://}: the sentinel and the primary are reached over TLS;
    the primary's certificate is checked against C{server_name}, not against
    the address the sentinel reports.
    """

    def tls_set(self) -> tuple[TLSFiles, SentinelServer]:
        directory = tempfile.mkdtemp(prefix="rfd-sentinel-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        files = TLSFiles.make(directory)
        primary = RedisServer(tls=ServerTLS(files))
        self.addCleanup(primary.cleanup)
        primary.start()
        sentinel = SentinelServer(primary=primary, quorum=1, tls=ServerTLS(files), monitor_tls=True)
        self.addCleanup(sentinel.cleanup)
        sentinel.start()
        assert sentinel.primary_address() == (primary.host, primary.tls_port)
        return files, sentinel

    def url(self, files: TLSFiles, sentinel: SentinelServer, server_name: str) -> str:
        return (
            f"rediss+sentinel://127.0.0.1:{sentinel.tls_port}/rfd/0"
            f"?server_name={server_name}&ca={files.ca}"
        )

    async def test_over_tls_the_primary_is_found_and_used(self) -> None:
        files, sentinel = self.tls_set()
        store = sentinel_store_from_url(
            self.url(files, sentinel, "localhost"), NAMESPACE, reactor, {}
        )
        self.started(store)
        await store.ready().addTimeout(READY, reactor)
        key = self.unique_key(id="tls")
        self.assertTrue(await store.put(key, sample_entry(), LONG_TTL))
        self.assertEqual(await store.get(key), sample_entry())

    async def test_a_primary_whose_certificate_is_not_for_server_name_is_not_used(self) -> None:
        """
        The certificate is for 127.0.0.1 and localhost, the address the
        sentinel reports is 127.0.0.1: with server_name=other.example the
        primary is refused all the same.
        """
        files, sentinel = self.tls_set()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = sentinel_store_from_url(
            self.url(files, sentinel, "other.example"), NAMESPACE, reactor, {}
        )
        self.started(store)
        ready = store.ready()
        await sleep(1.5)
        self.assertNoResult(ready)
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        said = [formatEvent(e) for e in logged if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(said), 1, said)  # once, not at every retry
        self.assertIn("it is not valid for 'other.example'", said[0])
        self.logged_errors.clear()
        ready.cancel()
        ready.addErrback(lambda _: None)
