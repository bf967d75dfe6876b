"""
The memcached store against real C{memcached} processes that the tests
start: the store contract unchanged, then what is memcached's own (the layout
other programs read, values in chunks, keys that must never reach the wire,
item limits, expiry beyond 30 days, pools of servers, outages).  Its
connection, layout functions, ring and URL: tests/unit/test_store_memcached.py.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import sys
import time
import types
import unittest.mock
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from refresherd.entry import Entry, decode, encode
from refresherd.errors import StoreUnavailable
from refresherd.interfaces import IStore
from refresherd.keys import entry_key
from refresherd.stores.memcached.layout import (
    MIN_ITEM_LIMIT,
    Manifest,
    chunk_size,
    lease_key,
    parse_manifest,
    split,
)
from refresherd.stores.memcached.ring import Ring
from refresherd.stores.memcached.store import (
    DEFAULT_ITEM_LIMIT,
    MemcachedStore,
    memcached_store_from_url,
)
from refresherd.stores.reader import DEFAULT_MAX_ENTRY_BYTES
from tests.memcached_keys import BAD_KEYS
from tests.memcached_server import MemcachedServer
from tests.store_contract import LONG_TTL, StoreContract, failure_entry, sample_entry
from tests.store_hostile import FETCHED, SECRET, HostileEntries

NAMESPACE = "rfdtest"
MIB = 1024 * 1024
READY = 5.0
LARGEST = DEFAULT_MAX_ENTRY_BYTES
"""Seconds a store may take to connect, after a start or a restart."""


def sleep(seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds)


class MemcachedTestCase(TestCase):
    """Starts stores on real servers, and stops them (and any own server) after the test."""

    server: MemcachedServer
    logged_errors: list[dict[str, Any]]

    @pytest.fixture(autouse=True)
    def _fixtures(
        self, memcached_server: MemcachedServer, no_logged_errors: list[dict[str, Any]]
    ) -> None:
        self.server = memcached_server
        self.logged_errors = no_logged_errors

    def own_server(self, item_limit: str | None = None) -> MemcachedServer:
        """A server of this test's own, to stop, kill or fill."""
        server = MemcachedServer(item_limit)
        self.addCleanup(server.cleanup)
        server.start()
        return server

    def new_store(self, *servers: MemcachedServer, **options: Any) -> MemcachedStore:
        """A started store, stopped after the test; it may still be connecting."""
        addresses = tuple((s.host, s.port) for s in servers or (self.server,))
        options.setdefault("namespace", NAMESPACE)
        store = MemcachedStore(reactor, addresses, **options)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def ready_store(self, *servers: MemcachedServer, **options: Any) -> MemcachedStore:
        """A started store, connected to every server."""
        store = self.new_store(*servers, **options)
        await store.ready().addTimeout(READY, reactor)
        return store

    def unique_key(self, **args: str) -> str:
        return entry_key(f"{NAMESPACE}-{self.id().rsplit('.', 1)[-1][:40]}", "job", 1, args)


class MemcachedStoreContractTests(StoreContract, MemcachedTestCase):
    """The store contract against a L{MemcachedStore} on a real server (whose generation
    keys do not expire)."""

    generations_expire = False

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._contract_store())

    async def _contract_store(self) -> IStore:
        return await self.ready_store()

    def advance(self, seconds: float) -> Deferred[None]:
        return sleep(seconds)


class MemcachedHostileEntryTests(HostileEntries, MemcachedTestCase):
    """Entries and manifests another program wrote in memcached that no reader may take."""

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._hostile_store())

    async def _hostile_store(self) -> IStore:
        return await self.ready_store()

    def write_raw(self, key: str, data: bytes) -> None:
        self.server.set(key.encode(), data)

    async def test_a_manifest_claiming_more_than_the_store_reads_is_fetched_instead(
        self,
    ) -> None:
        """999,999,999 chunk keys built on the reactor once hung every request."""
        stub, fetcher, namespace = await self.api()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        generation, digest = "0" * 32, "0" * 64
        for i, (count, length) in enumerate([(999_999_999, 999_999_999_999), (999_999_999, 1000)]):
            key = entry_key(namespace, "j", 1, {"id": str(i)})
            self.write_raw(key, f"manifest 1 {generation} {count} {length} {digest}\n".encode())
            response, body = await self.answer(stub, fetcher, "GET", f"/v1/jobs/j?id={i}")
            self.assertEqual((response.code, body["status"]), (200, "miss"))
            self.assertEqual(len(fetcher.calls), i + 1)
            [warning] = [
                formatEvent(e)
                for e in logged
                if e["log_level"] == LogLevel.warn and e["key"] == key
            ]
            self.assertIn(
                f"{count} chunks" if length == 1000 else "over the largest entry", warning
            )

    def write_in_chunks(self, key: str, entry: Entry, **claims: Any) -> None:
        """
        C{entry} written as a manifest of version 2 and its chunks, by another
        program; the manifest claiming C{claims} (count, length) if given.
        """
        assert entry.body is not None
        data = encode(entry)
        manifest, chunks = split(entry.body, MIN_ITEM_LIMIT, data[: data.index(b"\n") + 1])
        for chunk_key, chunk in zip(manifest.chunk_keys(key), chunks, strict=True):
            self.write_raw(chunk_key, chunk)
        self.write_raw(key, attrs.evolve(manifest, **claims).to_bytes())

    async def test_a_manifest_of_version_2_well_formed_is_a_hit(self) -> None:
        """The baseline of the tests below: a value in chunks that another program wrote."""
        stub, fetcher, namespace = await self.api()
        key, entry = self.hit(namespace, body=b'{"stored": true}' + b" " * 10_000)
        self.write_in_chunks(key, entry)
        response, body = await self.answer(stub, fetcher, "GET", "/v1/jobs/j?id=1")
        self.assertEqual((body["status"], body["value"]), ("hit", {"stored": True}))
        self.assertEqual(fetcher.calls, [])

    async def test_a_manifest_of_version_2_with_a_hostile_metadata_line_is_fetched_instead(
        self,
    ) -> None:
        """Its metadata line goes through every check an entry's does."""
        hostile: list[dict[str, Any]] = [{"etag": 'W/"caf\u00e9"'}, {"fresh_until": 1e300}]
        for i, changes in enumerate(hostile):
            stub, fetcher, namespace = await self.api()
            logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            key, entry = self.hit(namespace, body=b'{"stored": true}' + b" " * 10_000)
            key = key.replace("id=1", f"id={i}")
            self.write_in_chunks(key, attrs.evolve(entry, **changes))
            response, body = await self.answer(stub, fetcher, "GET", f"/v1/jobs/j?id={i}")
            self.assertEqual((body["status"], body["value"]), ("miss", FETCHED))
            warnings = [formatEvent(e) for e in logged if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn(key, warnings[0])
            self.assertNotIn(SECRET, warnings[0])

    async def test_a_manifest_of_version_2_claiming_more_than_the_store_reads_is_fetched_instead(
        self,
    ) -> None:
        stub, fetcher, namespace = await self.api()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        claims: list[dict[str, int]] = [
            {"count": 999_999_999, "length": 999_999_999_999},
            {"count": 999_999_999},
            {"length": LARGEST},  # with the metadata line, over the largest entry
        ]
        for i, claim in enumerate(claims):
            key, entry = self.hit(namespace, body=b'{"stored": true}' + b" " * 10_000)
            key = key.replace("id=1", f"id={i}")
            self.write_in_chunks(key, entry, **claim)
            response, body = await self.answer(stub, fetcher, "GET", f"/v1/jobs/j?id={i}")
            self.assertEqual((response.code, body["status"]), (200, "miss"))
            self.assertEqual(len(fetcher.calls), i + 1)
            [warning] = [
                formatEvent(e)
                for e in logged
                if e["log_level"] == LogLevel.warn and e["key"] == key
            ]
            self.assertIn("chunks for" if len(claim) == 1 and "count" in claim else "over", warning)


class MemcachedLayoutTests(MemcachedTestCase):
    """What other programs find in memcached: docs/memcached.md."""

    async def test_small_entry_is_the_entry_format_byte_for_byte(self) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(b"\x00body\r\n\xff")
        await store.put(key, entry, LONG_TTL)
        self.assertEqual(self.server.get(key.encode()), encode(entry))

    def chunks_of(self, key: str, generation: str, count: int, item_limit: int) -> bytes:
        """The chunks of C{generation} under C{key}, joined, read as docs/memcached.md says."""
        namespace, _, rest = key.partition(":")
        chunks = []
        for i in range(count):
            chunk = f"{namespace}:chunk:{generation}:{i}:{rest}"
            value = self.server.get(chunk.encode())
            assert value is not None
            self.assertLessEqual(len(chunk) + len(value) + 1024, item_limit)
            chunks.append(value)
        return b"".join(chunks)

    async def test_large_entry_is_a_manifest_with_its_metadata_naming_chunks_of_its_body(
        self,
    ) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await store.put(key, entry, LONG_TTL)
        raw = self.server.get(key.encode())
        assert raw is not None and entry.body is not None
        data = encode(entry)
        metadata = data[: data.index(b"\n") + 1]
        head, _, rest = raw.partition(b"\n")
        self.assertTrue(head.startswith(b"manifest 2 "), head)
        self.assertEqual(rest, metadata)
        _, version, generation, count, length, digest = head.decode().split(" ")
        body = entry.body
        self.assertEqual(int(count), math.ceil(len(body) / chunk_size(DEFAULT_ITEM_LIMIT)))
        self.assertEqual(int(length), len(body))
        self.assertEqual(digest, hashlib.sha256(body).hexdigest())
        joined = self.chunks_of(key, generation, int(count), DEFAULT_ITEM_LIMIT)
        self.assertEqual(rest + joined, data)

    async def test_the_reader_of_docs_memcached_md_reads_both_versions(self) -> None:
        """Its reference code, as printed there, with a stand-in for pymemcache's client."""
        page = (Path(__file__).parents[2] / "docs" / "memcached.md").read_text()
        [code] = [
            block
            for block in re.findall(r"```python\n(.*?)```", page, flags=re.S)
            if "def read_value" in block
        ]
        code = code[: code.index("\nkey = entry_key(")]  # its example, which needs more

        class Client:
            def __init__(client, *args: Any, **kwargs: Any) -> None:
                pass

            def get(client, key: str) -> bytes | None:
                return self.server.get(key.encode())

        base = types.ModuleType("pymemcache.client.base")
        base.Client = Client  # type: ignore[attr-defined]
        names: dict[str, Any] = {"server_of": lambda key, servers: servers[0]}
        with unittest.mock.patch.dict(sys.modules, {"pymemcache.client.base": base}):
            exec(compile(code, "docs/memcached.md", "exec"), names)
        read_value = names["read_value"]
        for version in (1, 2):
            store = await self.ready_store(manifest_version=version, item_limit=MIN_ITEM_LIMIT)
            key, entry = self.unique_key(id=str(version)), sample_entry(os.urandom(20_000))
            await store.put(key, entry, LONG_TTL)
            raw = self.server.get(key.encode()) or b""
            self.assertTrue(raw.startswith(f"manifest {version} ".encode()), raw[:20])
            self.assertEqual(read_value(key), encode(entry))
            chunk = parse_manifest(raw, LARGEST).chunk_keys(key)
            self.server.set(chunk[-1].encode(), b"x")
            self.assertIsNone(read_value(key))

    async def test_metadata_too_large_for_a_manifest_makes_one_of_version_1(self) -> None:
        """Version 1 names chunks that join into the whole entry, as older releases wrote."""
        store = await self.ready_store(item_limit=MIN_ITEM_LIMIT)
        key = self.unique_key(id="1")
        entry = sample_entry(
            os.urandom(20_000), tags=tuple(f"tag:{i:04}:{'x' * 20}" for i in range(250))
        )
        data = encode(entry)
        self.assertGreater(data.index(b"\n"), MIN_ITEM_LIMIT)
        await store.put(key, entry, LONG_TTL)
        raw = self.server.get(key.encode())
        assert raw is not None
        self.assertTrue(raw.startswith(b"manifest 1 "), raw[:40])
        self.assertTrue(raw.endswith(b"\n") and raw.count(b"\n") == 1)
        _, version, generation, count, length, digest = raw.decode().split()
        self.assertEqual((int(length), digest), (len(data), hashlib.sha256(data).hexdigest()))
        self.assertEqual(self.chunks_of(key, generation, int(count), MIN_ITEM_LIMIT), data)
        self.assertEqual(await store.get(key), entry)

    async def test_chunks_expire_after_their_manifest(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(os.urandom(2 * MIB)), 100)
        expires = int(self.server.item(key)["exp"])
        manifest = parse_manifest(self.server.get(key.encode()) or b"", LARGEST)
        for chunk in manifest.chunk_keys(key):
            self.assertGreaterEqual(int(self.server.item(chunk)["exp"]), expires + 4)

    async def test_lease_is_a_key_with_lease_after_the_namespace(self) -> None:
        store = await self.ready_store()
        key = entry_key("rfdtest", "tweets", 1, {"username": "bob", "id": self.id()[-20:]})
        token = await store.acquire_lease(key, 30)
        assert token is not None
        where = lease_key(key)
        self.assertTrue(where.startswith("rfdtest:lease:tweets:v1:"))
        self.assertEqual(self.server.get(where.encode()), token.encode("ascii"))
        await store.release_lease(key, token)
        self.assertIsNone(self.server.get(where.encode()))

    async def test_expiry_is_the_ttl_rounded_up_plus_one_tick(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), 99.2)
        left = int(self.server.item(key)["exp"]) - time.time()
        self.assertTrue(99 < left <= 102, left)

    async def test_expiry_beyond_30_days_is_an_absolute_time(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        forty_days = 40 * 86_400
        await store.put(key, sample_entry(os.urandom(2 * MIB)), forty_days)
        token = await store.acquire_lease(key, forty_days)
        self.assertEqual(await store.get(key), sample_entry(self.server_body(key)))
        for item in (key, lease_key(key)):
            left = int(self.server.item(item)["exp"]) - time.time()
            self.assertTrue(forty_days < left <= forty_days + 3, (item, left))
        self.assertIsNone(await store.acquire_lease(key, 1))
        assert token is not None
        self.assertIs(await store.put(key, sample_entry(), forty_days, lease=token), True)

    def server_body(self, key: str) -> bytes:
        """The body of the entry under C{key}, read from the server without the store."""
        manifest = parse_manifest(self.server.get(key.encode()) or b"", LARGEST)
        chunks = [self.server.get(c.encode()) or b"" for c in manifest.chunk_keys(key)]
        body = decode(manifest.join(chunks)).body
        assert body is not None
        return body

    async def test_unreadable_bytes_read_as_absent_with_one_warning(self) -> None:
        store = await self.ready_store()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for i, raw in enumerate([b"007", b"manifest 1 nonsense\n", b"manifest 2 " + b"0" * 40]):
            key = self.unique_key(id=str(i))
            self.server.set(key.encode(), raw)
            self.assertIsNone(await store.get(key))
            self.assertIsNone(await store.get(key))
            warnings = [e for e in logged if e["log_level"] == LogLevel.warn and e["key"] == key]
            self.assertEqual(len(warnings), 1)

    async def test_a_manifest_of_version_2_of_a_failure_reads_as_absent(self) -> None:
        """No writer puts a remembered failure in chunks: its chunks would name no body."""
        store = await self.ready_store()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        key = self.unique_key(id="1")
        manifest, chunks = split(b"x" * 10_000, MIN_ITEM_LIMIT, encode(failure_entry()))
        for chunk_key, chunk in zip(manifest.chunk_keys(key), chunks, strict=True):
            self.server.set(chunk_key.encode(), chunk)
        self.server.set(key.encode(), manifest.to_bytes())
        self.assertIsNone(await store.get(key))
        [warning] = [e for e in logged if e["log_level"] == LogLevel.warn and e["key"] == key]
        self.assertIn("no body", formatEvent(warning))


class MemcachedChunkTests(MemcachedTestCase):
    """Values of any size, never torn, never sent over the item limit."""

    async def assertRoundTrips(self, store: MemcachedStore, key: str, size: int) -> None:
        entry = sample_entry(os.urandom(size))
        self.assertIs(await store.put(key, entry, LONG_TTL), True)
        got = await store.get(key)
        assert got is not None and got.body is not None and entry.body is not None
        self.assertEqual(hashlib.sha256(got.body).digest(), hashlib.sha256(entry.body).digest())
        self.assertEqual(got, entry)

    async def test_5_mib_value_round_trips_byte_exact_with_the_default_limit(self) -> None:
        await self.assertRoundTrips(await self.ready_store(), self.unique_key(id="1"), 5 * MIB)

    async def test_5_mib_value_round_trips_byte_exact_with_a_2_mib_limit(self) -> None:
        server = self.own_server("2m")
        store = memcached_store_from_url(server.url(item_limit=2 * MIB), NAMESPACE, reactor)
        store.startService()
        self.addCleanup(store.stopService)
        await store.ready().addTimeout(READY, reactor)
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(5 * MIB))
        await store.put(key, entry, LONG_TTL)
        self.assertEqual(parse_manifest(server.get(key.encode()) or b"", LARGEST).count, 3)
        self.assertEqual(await store.get(key), entry)

    async def test_values_around_every_threshold_round_trip(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        meta = len(encode(sample_entry(b"")))
        inline = DEFAULT_ITEM_LIMIT - 1024 - len(key)
        chunk = chunk_size(DEFAULT_ITEM_LIMIT)
        for length, first in [
            (inline, b"{"),
            (inline + 1, b"m"),
            (2 * chunk, b"m"),
            (2 * chunk + 1, b"m"),
        ]:
            await self.assertRoundTrips(store, key, length - meta)
            self.assertEqual((self.server.get(key.encode()) or b"")[:1], first, length)

    async def test_hundreds_of_chunks_are_read_in_batches(self) -> None:
        store = await self.ready_store(item_limit=MIN_ITEM_LIMIT)
        key = self.unique_key(id="1")
        await self.assertRoundTrips(store, key, MIB)
        self.assertGreater(parse_manifest(self.server.get(key.encode()) or b"", LARGEST).count, 300)

    async def test_a_lower_limit_of_the_server_is_learnt_and_never_exceeded(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = self.own_server()
        store = await self.ready_store(server, item_limit=4 * MIB)
        self.assertEqual(store.effective_item_limit, DEFAULT_ITEM_LIMIT)
        self.assertTrue(any("-I" in formatEvent(e) for e in logged))
        key = self.unique_key(id="1")
        for size in (MIB // 2, 3 * MIB // 2, 3 * MIB, MIB - 2000):
            await store.put(key, sample_entry(b"previous"), LONG_TTL)
            await store.put(key, sample_entry(os.urandom(size)), LONG_TTL)
            got = await store.get(key)
            assert got is not None and got.body is not None
            self.assertEqual(len(got.body), size)
        items = server.metadump()
        self.assertGreater(len(items), 3)
        for name, item in items.items():
            # The size memcached counts: item header, key and value.
            self.assertLessEqual(int(item["size"]), DEFAULT_ITEM_LIMIT - 900, name)

    async def test_an_item_over_the_limit_is_never_sent_and_the_previous_value_stays(
        self,
    ) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(b"previous"), LONG_TTL)
        sets = server.stats()["cmd_set"]
        with self.assertRaises(StoreUnavailable) as raised:
            await store._store(key, b"x" * DEFAULT_ITEM_LIMIT, 0, time.time() + 1)
        self.assertIn("not sent", raised.exception.message)
        self.assertEqual(server.stats()["cmd_set"], sets)
        self.assertEqual(await store.get(key), sample_entry(b"previous"))

    async def test_a_deleted_chunk_reads_as_absent(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(os.urandom(3 * MIB)), LONG_TTL)
        manifest = parse_manifest(self.server.get(key.encode()) or b"", LARGEST)
        self.assertEqual(self.server.delete(manifest.chunk_keys(key)[1].encode()), b"DELETED")
        self.assertIsNone(await store.get(key))

    async def test_chunks_of_two_generations_never_mix(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        one, two = sample_entry(os.urandom(3 * MIB)), sample_entry(os.urandom(3 * MIB))
        (m1, c1), (m2, c2) = (
            split(encode(one), DEFAULT_ITEM_LIMIT),
            split(encode(two), DEFAULT_ITEM_LIMIT),
        )
        # Two writers, their chunk writes interleaved by hand.
        for k1, v1, k2, v2 in zip(m1.chunk_keys(key), c1, m2.chunk_keys(key), c2, strict=True):
            self.server.set(k1.encode(), v1)
            self.server.set(k2.encode(), v2)
        self.server.set(key.encode(), m1.to_bytes())
        self.assertEqual(await store.get(key), one)
        self.server.set(key.encode(), m2.to_bytes())
        self.assertEqual(await store.get(key), two)
        # A chunk of the other generation where one of this one should be: absent.
        self.server.set(m2.chunk_keys(key)[1].encode(), c1[1])
        self.assertIsNone(await store.get(key))
        # The same with a manifest that lies about the length.
        self.server.set(key.encode(), attrs.evolve(m1, length=m1.length - 1).to_bytes())
        self.assertIsNone(await store.get(key))

    async def test_racing_writers_and_a_reader_never_see_a_mixed_value(self) -> None:
        here, there = await self.ready_store(), await self.ready_store()
        key = self.unique_key(id="1")
        one, two = sample_entry(os.urandom(2 * MIB)), sample_entry(os.urandom(2 * MIB))
        for _ in range(8):
            writes: list[Deferred[Any]] = [
                here.put(key, one, LONG_TTL),
                there.put(key, two, LONG_TTL),
            ]
            reads = [here.get(key) for _ in range(4)]
            results = await defer.gatherResults(writes + reads)
            self.assertEqual(results[:2], [True, True])
            for got in results[2:]:
                self.assertIn(got, (None, one, two))
            self.assertIn(await there.get(key), (one, two))

    async def test_racing_fenced_writers_detect_each_other(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        token = await store.acquire_lease(key, LONG_TTL)
        await store.put(key, sample_entry(b"first"), LONG_TTL, lease=token)
        results = await defer.gatherResults(
            [
                store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL, lease=token),
                store.put(key, sample_entry(b"user"), LONG_TTL),
            ]
        )
        self.assertEqual(results[1], True)
        got = await store.get(key)
        # The unfenced write broke the lease: the fenced one lost, or came first.
        self.assertEqual(got, sample_entry(b"user"))


def renewed(entry: Entry, after: float = 10.0, **changes: Any) -> Entry:
    """C{entry} as a renewal C{after} seconds later writes it: same body, new times."""
    return attrs.evolve(
        entry,
        fetched_at=entry.fetched_at + after,
        fresh_until=entry.fresh_until + after,
        stale_until=entry.stale_until + after,
        error_until=entry.error_until + after,
        duration=0.25,
        failures=0,
        last_error=None,
        retry_at=0.0,
        **changes,
    )


class MemcachedRenewalTests(MemcachedTestCase):
    """
    A put of the body a manifest of version 2 already names writes only a new
    manifest and extends its chunks' expiry; anything else writes every chunk.
    """

    def manifest(self, server: MemcachedServer, key: str) -> Manifest:
        return parse_manifest(server.get(key.encode()) or b"", LARGEST)

    def counts(self, server: MemcachedServer) -> dict[str, int]:
        stats = server.stats()
        names = ("cmd_set", "cmd_touch", "touch_hits", "touch_misses", "bytes_read")
        return {name: int(stats[name]) for name in names}

    async def put_counted(
        self, server: MemcachedServer, call: Callable[[], Deferred[bool]]
    ) -> dict[str, int]:
        """What the server counted while C{call} ran: commands and bytes it read."""
        before = self.counts(server)
        self.assertIs(await call(), True)
        after = self.counts(server)
        return {name: after[name] - before[name] for name in after}

    async def test_a_renewal_writes_only_the_manifest_and_touches_every_chunk(self) -> None:
        server = self.own_server()
        store, reader = await self.ready_store(server), await self.ready_store(server)
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await store.put(key, entry, LONG_TTL)
        first = self.manifest(server, key)
        self.assertEqual(first.version, 2)
        self.assertGreater(first.count, 2)
        for fenced in (False, True):
            lease = await store.acquire_lease(key, LONG_TTL) if fenced else None
            again = renewed(entry, after=10.0 + fenced, validators=('"v2"', ""))
            put = functools.partial(store.put, key, again, LONG_TTL, lease=lease)
            counted = await self.put_counted(server, put)
            self.assertEqual(counted["cmd_set"], 1, counted)  # the manifest: set, or cas
            self.assertEqual(counted["cmd_touch"], first.count, counted)
            self.assertEqual(counted["touch_hits"], first.count, counted)
            self.assertLess(counted["bytes_read"], 16 * 1024, counted)
            now = self.manifest(server, key)
            self.assertEqual(now, attrs.evolve(first, metadata=now.metadata))
            self.assertNotEqual(now.metadata, first.metadata)
            self.assertEqual(await store.get(key), again)
            self.assertEqual(await reader.get(key), again)

    async def test_a_put_of_another_body_writes_every_chunk_under_a_new_generation(
        self,
    ) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await store.put(key, entry, LONG_TTL)
        first = self.manifest(server, key)
        assert entry.body is not None
        other = renewed(entry, body=entry.body[:-1] + bytes([entry.body[-1] ^ 1]))
        counted = await self.put_counted(server, lambda: store.put(key, other, LONG_TTL))
        self.assertEqual(counted["cmd_set"], first.count + 1, counted)
        self.assertEqual(counted["cmd_touch"], 0, counted)
        self.assertGreater(counted["bytes_read"], 3 * MIB, counted)
        self.assertNotEqual(self.manifest(server, key).generation, first.generation)
        self.assertEqual(await store.get(key), other)

    async def test_a_renewal_extends_the_chunks_expiry_past_the_new_manifest(self) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(2 * MIB))
        await store.put(key, entry, 100)
        await store.put(key, renewed(entry), 1000)
        expires = int(self.server.item(key)["exp"])
        self.assertTrue(998 < expires - time.time() <= 1003, expires - time.time())
        for chunk in self.manifest(self.server, key).chunk_keys(key):
            self.assertGreaterEqual(int(self.server.item(chunk)["exp"]), expires + 4)

    async def test_a_renewed_entry_reads_after_its_chunks_would_have_expired(self) -> None:
        """Chunks written to expire in 2 s, renewed for longer: they are there after 2 s."""
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(2 * MIB))
        assert entry.body is not None
        data = encode(entry)
        manifest, chunks = split(entry.body, DEFAULT_ITEM_LIMIT, data[: data.index(b"\n") + 1])
        for chunk_key, chunk in zip(manifest.chunk_keys(key), chunks, strict=True):
            self.server.set(chunk_key.encode(), chunk, exptime=2)
        self.server.set(key.encode(), manifest.to_bytes(), exptime=2)
        written = time.monotonic()
        self.assertEqual(await store.get(key), entry)
        again = renewed(entry)
        await store.put(key, again, 5)
        self.assertEqual(self.manifest(self.server, key).generation, manifest.generation)
        # memcached's clock ticks once a second: past 3 s, the old expiry has passed.
        deadline = written + 3.5
        while time.monotonic() < deadline:
            self.assertEqual(await store.get(key), again)
            await sleep(0.25)
        self.assertEqual(await store.get(key), again)

    async def test_a_renewal_whose_chunk_is_gone_writes_every_chunk(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await store.put(key, entry, LONG_TTL)
        first = self.manifest(server, key)
        self.assertEqual(server.delete(first.chunk_keys(key)[1].encode()), b"DELETED")
        again = renewed(entry)
        token = await store.acquire_lease(key, LONG_TTL)
        counted = await self.put_counted(
            server, lambda: store.put(key, again, LONG_TTL, lease=token)
        )
        self.assertEqual(counted["touch_misses"], 1, counted)
        self.assertEqual(counted["cmd_set"], first.count + 1, counted)
        self.assertNotEqual(self.manifest(server, key).generation, first.generation)
        self.assertEqual(await store.get(key), again)

    async def test_chunks_that_failed_their_check_are_never_renewed(self) -> None:
        """Else a value whose chunks were spoiled would stay absent while its body stands."""
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await store.put(key, entry, LONG_TTL)
        first = self.manifest(self.server, key)
        chunk = first.chunk_keys(key)[0].encode()
        spoiled = self.server.get(chunk)
        assert spoiled is not None
        self.server.set(chunk, bytes(len(spoiled)))
        self.assertIsNone(await store.get(key))
        again = renewed(entry)
        await store.put(key, again, LONG_TTL)
        self.assertNotEqual(self.manifest(self.server, key).generation, first.generation)
        self.assertEqual(await store.get(key), again)

    async def test_a_renewal_that_lost_its_lease_never_lands(self) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        token = await store.acquire_lease(key, LONG_TTL)
        assert token is not None
        self.assertIs(await store.put(key, entry, LONG_TTL, lease=token), True)
        await store.release_lease(key, token)
        other = await store.acquire_lease(key, LONG_TTL)
        self.assertIsNotNone(other)
        raw = self.server.get(key.encode())
        self.assertIs(await store.put(key, renewed(entry), LONG_TTL, lease=token), False)
        self.assertEqual(self.server.get(key.encode()), raw)
        self.assertEqual(await store.get(key), entry)

    async def test_a_manifest_of_version_1_reads_and_its_renewal_writes_version_2(self) -> None:
        """What an older release wrote (manifest_version=1 writes as it did)."""
        server = self.own_server()
        old = await self.ready_store(server, manifest_version=1)
        store = await self.ready_store(server)
        key, entry = self.unique_key(id="1"), sample_entry(os.urandom(3 * MIB))
        await old.put(key, entry, LONG_TTL)
        first = self.manifest(server, key)
        self.assertEqual(first.version, 1)
        self.assertEqual(await store.get(key), entry)
        again = renewed(entry)
        counted = await self.put_counted(server, lambda: old.put(key, again, LONG_TTL))
        self.assertEqual(counted["cmd_set"], first.count + 1, counted)
        counted = await self.put_counted(server, lambda: store.put(key, entry, LONG_TTL))
        self.assertEqual(counted["cmd_touch"], 0, counted)
        self.assertEqual(self.manifest(server, key).version, 2)
        self.assertEqual(await old.get(key), entry)


class MemcachedKeyTests(MemcachedTestCase):
    """Keys that could inject commands or desynchronise a connection never reach the wire."""

    async def test_unsafe_keys_are_refused_and_never_sent(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        self.assertEqual(server.set(b"canary", b"alive"), b"STORED")
        before = server.stats()
        calls: list[Callable[[str], Deferred[Any]]] = [
            lambda key: store.get(key),
            lambda key: store.put(key, sample_entry(), LONG_TTL),
            lambda key: store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL),
            lambda key: store.put(key, sample_entry(), LONG_TTL, lease="0" * 32),
            lambda key: store.put(key, sample_entry(), 0),
            lambda key: store.delete(key),
            lambda key: store.acquire_lease(key, LONG_TTL),
            lambda key: store.release_lease(key, "0" * 32),
        ]
        for key in BAD_KEYS:
            for call in calls:
                with self.assertRaises(ValueError):
                    await call(key)
        after = server.stats()
        for stat in (
            "cmd_flush",
            "cmd_set",
            "cmd_get",
            "cmd_touch",
            "delete_hits",
            "delete_misses",
        ):
            self.assertEqual(after[stat], before[stat], stat)
        self.assertEqual(after["cmd_flush"], "0")
        self.assertEqual(server.get(b"canary"), b"alive")
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertEqual(await store.get(key), sample_entry())

    async def test_longest_memcached_key_works_with_hashed_lease_and_chunk_keys(self) -> None:
        store = await self.ready_store()
        key = f"{NAMESPACE}:job:v1:id=" + "x" * (250 - len(NAMESPACE) - 11)
        self.assertEqual(len(key), 250)
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIn(":lease:#", lease_key(key))
        entry = sample_entry(os.urandom(2 * MIB))
        self.assertIs(await store.put(key, entry, LONG_TTL, lease=token), True)
        self.assertEqual(await store.get(key), entry)
        self.assertIs(await store.delete(key), True)


class MemcachedPoolTests(MemcachedTestCase):
    """Several servers: keys spread by consistent hashing, dead servers skipped."""

    async def eventually(self, call: Callable[[], Deferred[Any]], within: float = READY) -> None:
        """Retry C{call} while it fails with StoreUnavailable, for at most C{within} seconds."""
        deadline = time.monotonic() + within
        while True:
            try:
                await call()
                return
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await sleep(0.05)

    def holder(self, servers: list[MemcachedServer], key: str) -> MemcachedServer:
        """The one server that holds C{key}, read without the store."""
        holders = [s for s in servers if s.running and s.get(key.encode()) is not None]
        self.assertEqual(len(holders), 1, key)
        return holders[0]

    async def test_keys_spread_over_every_server_as_the_ring_says(self) -> None:
        servers = [self.own_server() for _ in range(3)]
        store = await self.ready_store(*servers)
        ring = Ring([(s.address, s) for s in servers])
        expected = {id(server): 0 for server in servers}
        for i in range(90):
            key = self.unique_key(id=str(i))
            await store.put(key, sample_entry(), LONG_TTL)
            owner = ring.server(key.encode())
            self.assertIs(self.holder(servers, key), owner)
            expected[id(owner)] += 1
        for server in servers:
            # Exactly what the ring assigns, and some to each: the servers' ports are random,
            # so their shares vary (a server with none of 90 keys: far below one in a billion).
            self.assertEqual(int(server.stats()["curr_items"]), expected[id(server)])
            self.assertGreater(expected[id(server)], 0)

    async def test_calls_made_while_it_first_connects_go_to_the_servers_the_ring_says(
        self,
    ) -> None:
        # Requests reaching a process just started: not servers down.
        servers = [self.own_server() for _ in range(3)]
        store = self.new_store(*servers)
        keys = [self.unique_key(id=str(i)) for i in range(12)]
        for key in keys:
            self.assertIs(await store.put(key, sample_entry(), LONG_TTL), True)
        ring = Ring([(s.address, s) for s in servers])
        for key in keys:
            self.assertIs(self.holder(servers, key), ring.server(key.encode()))

    async def test_a_server_down_at_start_delays_the_first_calls_only_its_attempt(self) -> None:
        up, down = self.own_server(), self.own_server()
        down.stop()
        store = self.new_store(up, down, timeout=1.0)
        key = self.unique_key(id="1")
        start = time.monotonic()
        await store.put(key, sample_entry(), LONG_TTL)  # the next server when its own is down
        self.assertLess(time.monotonic() - start, 0.5)
        self.assertEqual(await store.get(key), sample_entry())

    async def test_a_killed_server_is_skipped_and_every_call_answers_in_time(self) -> None:
        servers = [self.own_server() for _ in range(3)]
        store = await self.ready_store(*servers, timeout=1.0)
        keys = [self.unique_key(id=str(i)) for i in range(24)]
        big = sample_entry(os.urandom(2 * MIB))
        written: dict[str, Any] = {}
        for i in range(96):
            if i == 30:
                servers[1].kill()
            key = keys[i % len(keys)]
            entry = big if i % 8 == 0 else sample_entry(str(i).encode())
            start = time.monotonic()
            self.assertIs(await store.put(key, entry, LONG_TTL), True)
            written[key] = entry
            got = await store.get(keys[(i * 7) % len(keys)])
            self.assertLess(time.monotonic() - start, 2 * 1.0 + 0.3)
            self.assertIn(got, (None, written.get(keys[(i * 7) % len(keys)])))
        # Since the kill, every key has been written again, to live servers only.
        for key in keys:
            self.assertEqual(await store.get(key), written[key])
        await store.ping()

    async def test_a_call_whose_server_dies_under_it_goes_to_the_next_server(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers)
        ring = Ring([(s.address, s) for s in servers])
        keys = (self.unique_key(id=str(i)) for i in range(100))
        key = next(k for k in keys if ring.server(k.encode()) is servers[0])
        await store.put(key, sample_entry(), LONG_TTL)
        servers[0].kill()  # the store has not heard of it yet: the get goes there first
        self.assertIsNone(await store.get(key))
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL), True)
        self.assertEqual(servers[1].get(key.encode()), encode(sample_entry()))
        self.assertEqual(await store.get(key), sample_entry())

    async def test_a_hung_server_costs_one_timeout_then_is_skipped(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers, timeout=0.5)
        ring = Ring([(s.address, s) for s in servers])
        key = next(
            k
            for k in (self.unique_key(id=str(i)) for i in range(100))
            if ring.server(k.encode()) is servers[0]
        )
        servers[0].pause()
        start = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await store.get(key)
        self.assertLess(time.monotonic() - start, 0.5 + 0.3)
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL), True)
        self.assertEqual(await store.get(key), sample_entry())
        self.assertEqual(servers[1].get(key.encode()), encode(sample_entry()))
        servers[0].resume()

    async def test_a_restarted_server_is_used_again_after_its_dead_period(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers, dead_min=1.0)
        ring = Ring([(s.address, s) for s in servers])
        keys = [self.unique_key(id=str(i)) for i in range(100)]
        key = next(k for k in keys if ring.server(k.encode()) is servers[0])
        servers[0].restart()
        await store.ready().addTimeout(READY, reactor)
        await store.put(key, sample_entry(b"while dead"), LONG_TTL)
        self.assertIs(self.holder(servers, key), servers[1])
        await sleep(1.0)
        await store.put(key, sample_entry(b"back"), LONG_TTL)
        self.assertEqual(servers[0].get(key.encode()), encode(sample_entry(b"back")))

    async def test_restarted_server_serves_again_through_the_same_store(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), LONG_TTL)
        server.restart()
        start = time.monotonic()
        await self.eventually(store.ping)
        self.assertLess(time.monotonic() - start, 3.0)
        await self.eventually(lambda: store.put(key, sample_entry(b"again"), LONG_TTL))
        self.assertEqual(await store.get(key), sample_entry(b"again"))

    async def test_hung_server_fails_every_call_within_the_deadline(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server, timeout=0.5)
        key = self.unique_key(id="1")
        server.pause()
        waiter = store.wait_for_change(key, 0.3)
        calls: list[Callable[[], Deferred[Any]]] = [
            lambda: store.ping(),
            lambda: store.get(key),
            lambda: store.put(key, sample_entry(), LONG_TTL),
            lambda: store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL),
            lambda: store.put(key, sample_entry(), LONG_TTL, lease="0" * 32),
            lambda: store.delete(key),
            lambda: store.acquire_lease(key, LONG_TTL),
            lambda: store.release_lease(key, "0" * 32),
        ]
        for call in calls:
            start = time.monotonic()
            with self.assertRaises(StoreUnavailable) as raised:
                await call()
            self.assertLess(time.monotonic() - start, 0.5 + 0.3)
            self.assertNotIn("\n", raised.exception.message)
        self.assertIsNone(self.successResultOf(waiter))
        server.resume()
        await self.eventually(store.ping)

    async def test_ping_answers_while_one_server_does(self) -> None:
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(*servers)
        servers[0].kill()
        await self.eventually(store.ping)
        servers[1].kill()
        await sleep(0.2)
        with self.assertRaises(StoreUnavailable):
            await store.ping()

    async def test_stop_fires_waiters_and_leaves_no_delayed_call(self) -> None:
        await sleep(0)  # trial's own timeout is scheduled by now
        before = set(reactor.getDelayedCalls())
        servers = [self.own_server() for _ in range(2)]
        store = await self.ready_store(self.server, *servers)
        servers[1].kill()  # one server being retried
        key = self.unique_key(id="1")
        timed_out = store.wait_for_change(key, 0.01)
        cancelled = store.wait_for_change(key, LONG_TTL)
        cancelled.cancel()
        woken = store.wait_for_change(key, LONG_TTL)
        await store.put(key, sample_entry(os.urandom(2 * MIB)), LONG_TTL)
        pending = store.wait_for_change(key, LONG_TTL)
        await store.get(key)
        await sleep(0.3)
        await store.stopService()
        self.assertIsNone(self.successResultOf(timed_out))
        self.assertIsNone(self.successResultOf(woken))
        self.assertIsNone(self.successResultOf(pending))
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(set(reactor.getDelayedCalls()) - before, set())
        self.assertEqual(store._waiters.keys(), set())
