"""
The memcached store without a server: calls before it starts, replies out of
step with the requests on a fake connection, the layout's pure functions, the
ring (ketama), the URL (the store on real memcached processes:
tests/integration/test_store_memcached.py).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from typing import Any

import attrs
import pytest
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.memcache import ServerError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from refresherd.entry import METADATA_MAX_BYTES
from refresherd.errors import StoreUnavailable
from refresherd.keys import entry_key
from refresherd.stores.memcached.layout import (
    MANIFEST_HEADER_MAX,
    MIN_ITEM_LIMIT,
    Manifest,
    check_key,
    chunk_key,
    chunk_size,
    exptime,
    lease_key,
    metadata_fits,
    most_chunks,
    parse_manifest,
    split,
)
from refresherd.stores.memcached.ring import Ring, key_point
from refresherd.stores.memcached.store import (
    DEFAULT_ITEM_LIMIT,
    MemcachedStore,
    _Connection,
    _OutOfStep,
    memcached_store_from_url,
)
from tests.memcached_keys import BAD_KEYS

MIB = 1024 * 1024


class CallsBeforeStartTests(TestCase):
    """A store not started connects to nothing."""

    async def test_calls_before_start_fail_at_once(self) -> None:
        store = MemcachedStore(reactor, (("127.0.0.1", 11211),))
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        with self.assertRaises(StoreUnavailable):
            await store.get(entry_key("rfdtest", "job", 1, {"id": "1"}))


class ConnectionTests(SynchronousTestCase):
    """Replies out of step with the requests drop the connection (no server needed)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemcachedStore(self.clock, (("127.0.0.1", 11211),))
        Service.startService(self.store)  # running, without connecting
        self.server = self.store._pool[0]
        self.transport = StringTransport()
        self.connection = _Connection(self.store, self.server)
        self.connection.makeConnection(self.transport)
        self.assertEqual(self.transport.value(), b"stats settings\r\n")
        self.connection.dataReceived(b"STAT item_size_max 2097152\r\nSTAT other x\r\nEND\r\n")
        self.assertIs(self.server.connection, self.connection)
        self.assertEqual(self.server.item_size_max, 2 * MIB)
        self.transport.clear()

    def assertDropped(self, *ds: Deferred[Any]) -> None:
        for d in ds:
            self.failureResultOf(d, _OutOfStep)
        self.assertTrue(self.transport.disconnected)
        self.assertTrue(self.connection.broken)

    def test_client_error_fails_every_pending_request_and_drops_the_connection(self) -> None:
        first, second = self.connection.get(b"a"), self.connection.get(b"b")
        self.connection.dataReceived(b"CLIENT_ERROR bad command line format\r\n")
        self.assertDropped(first, second)
        # What comes after is never paired with anything.
        self.connection.dataReceived(b"VALUE b 0 1\r\nx\r\nEND\r\n")
        self.assertEqual(self.transport.value(), b"get a\r\nget b\r\n")

    def test_error_drops_the_connection(self) -> None:
        d = self.connection.set(b"a", b"x")
        self.connection.dataReceived(b"ERROR\r\n")
        self.assertDropped(d)

    def test_a_reply_of_another_command_drops_the_connection(self) -> None:
        d = self.connection.get(b"a")
        self.connection.dataReceived(b"STORED\r\n")
        self.assertDropped(d)

    def test_a_value_of_another_key_drops_the_connection(self) -> None:
        d = self.connection.get(b"a")
        self.connection.dataReceived(b"VALUE z 0 1\r\nx\r\nEND\r\n")
        self.assertDropped(d)

    def test_a_number_drops_the_connection(self) -> None:
        d = self.connection.delete(b"a")
        self.connection.dataReceived(b"42\r\n")
        self.assertDropped(d)

    def test_a_reply_to_nothing_drops_the_connection(self) -> None:
        self.connection.dataReceived(b"END\r\n")
        self.assertTrue(self.transport.disconnected)

    def test_server_error_to_a_set_fails_that_set_only(self) -> None:
        stored, got = self.connection.set(b"a", b"x"), self.connection.get(b"a")
        self.connection.dataReceived(b"SERVER_ERROR out of memory storing object\r\nEND\r\n")
        self.failureResultOf(stored, ServerError)
        self.assertEqual(self.successResultOf(got), (0, None))
        self.assertFalse(self.transport.disconnected)

    def test_server_error_to_a_get_drops_the_connection(self) -> None:
        d = self.connection.get(b"a")
        self.connection.dataReceived(b"SERVER_ERROR out of memory writing get response\r\n")
        self.assertDropped(d)

    def test_touch_sends_the_expiry_and_tells_touched_from_not_found(self) -> None:
        touched, missing = self.connection.touch(b"a", 12), self.connection.touch(b"b", 3)
        self.assertEqual(self.transport.value(), b"touch a 12\r\ntouch b 3\r\n")
        self.connection.dataReceived(b"TOUCHED\r\nNOT_FOUND\r\n")
        self.assertIs(self.successResultOf(touched), True)
        self.assertIs(self.successResultOf(missing), False)
        self.assertFalse(self.transport.disconnected)

    def test_any_other_reply_to_touch_drops_the_connection(self) -> None:
        for reply in (b"STORED", b"END", b"SERVER_ERROR busy", b"ERROR", b"TOUCHED extra"):
            self.setUp()
            d = self.connection.touch(b"a", 1)
            self.connection.dataReceived(reply + b"\r\n")
            self.assertDropped(d)


class LayoutFunctionTests(SynchronousTestCase):
    """The pure functions of memcached_layout."""

    def test_check_key_takes_printable_ascii_up_to_250_bytes(self) -> None:
        self.assertEqual(check_key("rfd:a:v1:x=%20"), b"rfd:a:v1:x=%20")
        self.assertEqual(len(check_key("k" * 250)), 250)
        for key in BAD_KEYS:
            with self.assertRaises(ValueError) as raised:
                check_key(key)
            self.assertNotIn("\n", str(raised.exception))

    def test_derived_keys_insert_their_kind_after_the_namespace(self) -> None:
        key = "rfd:tweets:v1:username=bob"
        self.assertEqual(lease_key(key), "rfd:lease:tweets:v1:username=bob")
        self.assertEqual(
            chunk_key(key, "ab" * 16, 3), f"rfd:chunk:{'ab' * 16}:3:tweets:v1:username=bob"
        )

    def test_derived_keys_over_250_bytes_hash_the_rest(self) -> None:
        key = "rfd:" + "x" * 246
        rest = "x" * 246
        digest = hashlib.sha256(rest.encode()).hexdigest()
        self.assertEqual(lease_key(key), f"rfd:lease:#{digest}")
        self.assertEqual(chunk_key(key, "0" * 32, 12), f"rfd:chunk:{'0' * 32}:12:#{digest}")
        longest = entry_key("n" * 64, "j" * 64, 10**9, {"q": "x" * 300})
        for derived in (lease_key(longest), chunk_key(longest, "f" * 32, 99_999)):
            self.assertLessEqual(len(check_key(derived)), 250)

    def test_exptime_rounds_up_adds_a_tick_and_goes_absolute_after_30_days(self) -> None:
        now = 1_700_000_000.5
        self.assertEqual(exptime(1.0, now), 2)
        self.assertEqual(exptime(0.001, now), 2)
        self.assertEqual(exptime(59.5, now), 61)
        self.assertEqual(exptime(2_591_999, now), 2_592_000)
        self.assertEqual(exptime(2_592_000, now), 1_700_000_001 + 2_592_001)
        self.assertEqual(exptime(40 * 86_400.5, now), 1_700_000_001 + 3_456_021)

    def test_manifest_round_trips_and_refuses_anything_else(self) -> None:
        manifest, chunks = split(b"x" * 10_000, MIN_ITEM_LIMIT)
        self.assertEqual(len(chunks), 4)
        self.assertEqual(b"".join(chunks), b"x" * 10_000)
        self.assertEqual(parse_manifest(manifest.to_bytes(), 10_000), manifest)
        self.assertEqual(manifest.join(chunks), b"x" * 10_000)
        for wrong in [[*chunks[:-1], chunks[-1][:-1] + b"y"], [*chunks[:-1], chunks[-1][:-1]]]:
            with self.assertRaises(ValueError):
                manifest.join(wrong)
        for bad in [
            manifest.to_bytes()[:-1],
            manifest.to_bytes().replace(b"manifest 1", b"manifest 2"),
            manifest.to_bytes().upper(),
            manifest.to_bytes() + b"x",
            b"manifest 1 x 1 1 x\n",
        ]:
            with self.assertRaises(ValueError):
                parse_manifest(bad, 10_000)

    def test_a_manifest_claiming_more_than_the_largest_entry_is_refused(self) -> None:
        """Its chunks are never named, asked for or joined: 999,999,999 keys hung the reactor."""
        sha = "0" * 64
        claims = Manifest("f" * 32, 999_999_999, 999_999_999_999, sha).to_bytes()
        with self.assertRaisesRegex(ValueError, "over the largest entry"):
            parse_manifest(claims, 33 * MIB)
        just_over = Manifest("f" * 32, 1, 33 * MIB + 1, sha).to_bytes()
        with self.assertRaisesRegex(ValueError, "over the largest entry"):
            parse_manifest(just_over, 33 * MIB)
        largest = Manifest("f" * 32, most_chunks(33 * MIB), 33 * MIB, sha)
        self.assertEqual(parse_manifest(largest.to_bytes(), 33 * MIB), largest)

    def test_a_manifest_claiming_more_chunks_than_its_length_needs_is_refused(self) -> None:
        """No writer cuts chunks smaller than those of the smallest item limit."""
        sha = "0" * 64
        many = Manifest("f" * 32, 999_999_999, 1000, sha).to_bytes()
        with self.assertRaisesRegex(ValueError, "999999999 chunks for 1000 bytes"):
            parse_manifest(many, 33 * MIB)
        size = chunk_size(MIN_ITEM_LIMIT)
        self.assertEqual(most_chunks(0), 1)
        self.assertEqual(most_chunks(size), 1)
        self.assertEqual(most_chunks(size + 1), 2)
        two = Manifest("f" * 32, 2, size, sha).to_bytes()
        with self.assertRaisesRegex(ValueError, "2 chunks"):
            parse_manifest(two, 33 * MIB)

    def test_a_manifest_of_version_2_carries_the_metadata_line_and_joins_into_the_entry(
        self,
    ) -> None:
        metadata, body = b'{"format":1}\n', b"y" * 10_000
        manifest, chunks = split(body, MIN_ITEM_LIMIT, metadata)
        self.assertEqual((manifest.version, len(chunks), manifest.length), (2, 4, 10_000))
        self.assertEqual(manifest.sha256, hashlib.sha256(body).hexdigest())
        data = manifest.to_bytes()
        head = f"manifest 2 {manifest.generation} 4 10000 {manifest.sha256}\n".encode() + metadata
        self.assertEqual(data, head)
        self.assertLessEqual(data.index(b"\n") + 1, MANIFEST_HEADER_MAX)
        self.assertEqual(parse_manifest(data, 10_000 + len(metadata)), manifest)
        self.assertEqual(manifest.join(chunks), metadata + body)
        with self.assertRaises(ValueError):
            manifest.join([*chunks[:-1], chunks[-1][:-1] + b"z"])

    def test_a_malformed_manifest_of_version_2_is_refused(self) -> None:
        manifest, _ = split(b"y" * 100, MIN_ITEM_LIMIT, b'{"format":1}\n')
        good = manifest.to_bytes()
        head = good[: good.index(b"\n") + 1]
        for bad in [
            head,  # no metadata line
            good[:-1],  # the metadata line without its newline
            good + b'{"format":1}\n',  # two metadata lines
            head + b"x\n",  # not a JSON object
            head.replace(b"manifest 2", b"manifest 3") + b"{}\n",
            head.replace(b"manifest 2", b"manifest 1") + b"{}\n",  # version 1 is one line
            head.replace(b"manifest 2", b"manifest 0002") + b"{}\n",
            head.replace(b" 100 ", b" 100  ") + b"{}\n",
            b"manifest 2\n{}\n",
            head + b"{" + b" " * METADATA_MAX_BYTES + b"}\n",
        ]:
            with self.assertRaises(ValueError, msg=bad[:80]):
                parse_manifest(bad, 10 * MIB)

    def test_a_manifest_of_version_2_claiming_more_than_an_entry_needs_is_refused(self) -> None:
        """Its metadata line counts towards the largest entry, and its body bounds its chunks."""
        sha, metadata = "0" * 64, b'{"format":1}\n'
        size = 33 * MIB
        largest = Manifest("f" * 32, most_chunks(size), size - len(metadata), sha, metadata)
        self.assertEqual(parse_manifest(largest.to_bytes(), size), largest)
        over = attrs.evolve(largest, length=largest.length + 1)
        with self.assertRaisesRegex(ValueError, "over the largest entry"):
            parse_manifest(over.to_bytes(), size)
        many = Manifest("f" * 32, 999_999_999, 1000, sha, metadata)
        with self.assertRaisesRegex(ValueError, "999999999 chunks for 1000 bytes"):
            parse_manifest(many.to_bytes(), size)
        two = Manifest("f" * 32, 2, chunk_size(MIN_ITEM_LIMIT), sha, metadata)
        with self.assertRaisesRegex(ValueError, "2 chunks"):
            parse_manifest(two.to_bytes(), size)

    def test_a_renewal_names_the_same_chunks_only_for_the_same_body_in_version_2(self) -> None:
        body = b"y" * 10_000
        digest = hashlib.sha256(body).hexdigest()
        old, _ = split(body, MIN_ITEM_LIMIT, b'{"old":1}\n')
        renewed = old.renewal(b'{"new":1}\n', len(body), digest)
        assert renewed is not None
        self.assertEqual(renewed.metadata, b'{"new":1}\n')
        self.assertEqual(
            (renewed.generation, renewed.count, renewed.length, renewed.sha256),
            (old.generation, old.count, old.length, old.sha256),
        )
        other = hashlib.sha256(b"z" * 10_000).hexdigest()
        self.assertIsNone(old.renewal(b"{}\n", len(body), other))
        self.assertIsNone(old.renewal(b"{}\n", len(body) + 1, digest))
        version_1, _ = split(body, MIN_ITEM_LIMIT)
        self.assertIsNone(version_1.renewal(b"{}\n", len(body), digest))

    def test_metadata_fits_with_the_longest_manifest_line_beside_it(self) -> None:
        key = "rfd:j:v1:"
        room = MIN_ITEM_LIMIT - len(key) - 1024 - MANIFEST_HEADER_MAX
        self.assertTrue(metadata_fits(key, b"m" * room, MIN_ITEM_LIMIT))
        self.assertFalse(metadata_fits(key, b"m" * (room + 1), MIN_ITEM_LIMIT))
        widest = Manifest("f" * 32, 999_999_999, 999_999_999_999, "0" * 64, b"{}\n")
        self.assertEqual(widest.to_bytes().index(b"\n") + 1, MANIFEST_HEADER_MAX)

    def test_every_manifest_a_writer_makes_is_taken(self) -> None:
        """The bounds refuse no layout a writer makes, whatever its item limit."""
        for limit in (MIN_ITEM_LIMIT, MIN_ITEM_LIMIT + 1, 2 * MIN_ITEM_LIMIT, DEFAULT_ITEM_LIMIT):
            for length in (0, 1, chunk_size(limit), chunk_size(limit) + 1, 5 * chunk_size(limit)):
                manifest, _ = split(b"x" * length, limit)
                self.assertEqual(parse_manifest(manifest.to_bytes(), length), manifest)
                metadata = b'{"format":1}\n'
                manifest, _ = split(b"x" * length, limit, metadata)
                taken = parse_manifest(manifest.to_bytes(), length + len(metadata))
                self.assertEqual(taken, manifest)


class RingTests(SynchronousTestCase):
    """Ketama: keys spread evenly, and a new server takes about its share only."""

    KEYS = [f"rfd:job:v1:id={i}".encode() for i in range(20_000)]

    def owners(self, names: list[str]) -> list[str]:
        ring = Ring([(name, name) for name in names])
        return [ring.server(key) for key in self.KEYS]

    def test_keys_spread_roughly_evenly(self) -> None:
        names = [f"10.0.0.{i}:11211" for i in range(1, 5)]
        owners = self.owners(names)
        for name in names:
            share = owners.count(name) / len(owners)
            self.assertTrue(0.18 < share < 0.32, (name, share))

    def test_adding_a_server_moves_about_one_in_n_plus_one_keys_all_to_it(self) -> None:
        names = [f"10.0.0.{i}:11211" for i in range(1, 4)]
        before, after = self.owners(names), self.owners([*names, "10.0.0.9:11211"])
        moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        self.assertTrue(0.17 < len(moved) / len(self.KEYS) < 0.33, len(moved))
        self.assertTrue(all(b == "10.0.0.9:11211" for _, b in moved))

    def test_walk_gives_every_server_once_starting_with_the_owner(self) -> None:
        ring = Ring([(f"h{i}:1", i) for i in range(5)])
        for key in self.KEYS[:100]:
            order = list(ring.walk(key))
            self.assertEqual(sorted(order), list(range(5)))
            self.assertEqual(order[0], ring.server(key))

    def test_the_ring_is_the_one_docs_memcached_md_describes(self) -> None:
        """The worked example of docs/memcached.md, and its reference code, agree with Ring."""
        names = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
        self.assertEqual(key_point(b"rfd:tweets:v1:username=bob"), 471098131)
        self.assertEqual(
            Ring([(n, n) for n in names]).server(b"rfd:tweets:v1:username=bob"), names[1]
        )

        # The reference implementation of docs/memcached.md, as printed there.
        points = sorted(
            (int.from_bytes(digest[j : j + 4], "little"), name)
            for name in names
            for i in range(40)
            for digest in [hashlib.md5(f"{name}-{i}".encode()).digest()]
            for j in range(0, 16, 4)
        )

        def server_of(key: bytes) -> str:
            point = int.from_bytes(hashlib.md5(key).digest()[:4], "little")
            return points[bisect.bisect_left(points, (point, "")) % len(points)][1]

        self.assertEqual([server_of(key) for key in self.KEYS], self.owners(names))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memcached://127.0.0.1:11211", ((("127.0.0.1", 11211),), DEFAULT_ITEM_LIMIT)),
        ("memcached://cache", ((("cache", 11211),), DEFAULT_ITEM_LIMIT)),
        ("memcached://cache/", ((("cache", 11211),), DEFAULT_ITEM_LIMIT)),
        ("MEMCACHED://Cache.Example:1", ((("cache.example", 1),), DEFAULT_ITEM_LIMIT)),
        (
            "memcached://a:11211,b:11212,[::1]:11213?item_limit=2097152",
            ((("a", 11211), ("b", 11212), ("::1", 11213)), 2 * MIB),
        ),
        ("memcached://a:1?item_limit=4096", ((("a", 1),), 4096)),
    ],
)
def test_memcached_store_from_url(
    url: str, expected: tuple[tuple[tuple[str, int], ...], int]
) -> None:
    store = memcached_store_from_url(url, "ns", reactor)
    assert (store.servers, store.item_limit) == expected
    assert store.namespace == "ns"
    assert store.reactor is reactor
    assert not store.running


def test_memcached_manifests_are_written_in_version_2_unless_the_url_says_1() -> None:
    assert memcached_store_from_url("memcached://a:1", "ns", reactor).manifest_version == 2
    url = "memcached://a:1?item_limit=4096&manifest_version=1"
    assert memcached_store_from_url(url, "ns", reactor).manifest_version == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://host:6379/0", "must start with memcached://"),
        ("memcached://", "names no server"),
        ("memcached://?item_limit=4096", "names no server"),
        ("memcached://a:1,,b:2", "has an empty server in its list"),
        ("memcached://a:1,", "has an empty server in its list"),
        ("memcached://a:port", "needs a port from 1 to 65535"),
        ("memcached://a:0", "needs a port from 1 to 65535"),
        ("memcached://a:65536", "needs a port from 1 to 65535"),
        ("memcached://a:", "needs a port from 1 to 65535"),
        ("memcached://a:-1", "needs a port from 1 to 65535"),
        ("memcached://::1:11211", "is not a host name or address"),
        ("memcached://[::1", "is not [IPv6 address]:port"),
        ("memcached://[::1]x", "is not [IPv6 address]:port"),
        ("memcached://a b:1", "is not a host name or address"),
        ("memcached://user:pw@a:1", "takes no user name or password"),
        ("memcached://a:1/0", "takes no path"),
        ("memcached://a:1#x", "takes no fragment"),
        ("memcached://a:1,a:1", "names a:1 twice"),
        ("memcached://a:1?timeout=1", "unknown parameter 'timeout'"),
        ("memcached://a:1?item_limit=1", "item_limit must be a number of bytes from 4096"),
        ("memcached://a:1?item_limit=2m", "item_limit must be a number of bytes"),
        ("memcached://a:1?item_limit=", "item_limit must be a number of bytes"),
        ("memcached://a:1?item_limit=1073741825", "item_limit must be a number of bytes"),
        ("memcached://a:1?item_limit=4096&item_limit=4096", "item_limit is given twice"),
        ("memcached://a:1?manifest_version=3", "manifest_version must be 1 or 2, not '3'"),
        ("memcached://a:1?manifest_version=1&manifest_version=1", "manifest_version is given"),
    ],
)
def test_memcached_store_from_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        memcached_store_from_url(url, "ns", reactor)
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is None
