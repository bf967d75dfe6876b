"""
The Redis store against a real C{redis-server} that the tests start: the
store contract unchanged, then what is Redis's own (the layout other programs
read, pub/sub between processes, passwords and databases, outages, a full
Redis, a Redis Cluster node refused).  Its URL: tests/unit/test_store_redis.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from refresherd.entry import encode
from refresherd.errors import StoreUnavailable
from refresherd.interfaces import IStore
from refresherd.keys import entry_key, generation_key
from refresherd.stores.redis import RedisStore, lease_key
from refresherd.stores.redis_urls import redis_store_from_url
from tests.redis_server import RedisReplyError, RedisServer
from tests.redis_stores import NAMESPACE, READY, RedisTestCase, sleep
from tests.store_contract import LONG_TTL, NOTICE, StoreContract, sample_entry
from tests.store_hostile import HostileEntries


class RedisStoreContractTests(StoreContract, RedisTestCase):
    """The store contract, unchanged, against a L{RedisStore} on a real server."""

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._contract_store())

    async def _contract_store(self) -> IStore:
        return await self.ready_store()

    def advance(self, seconds: float) -> Deferred[None]:
        return sleep(seconds)


class RedisHostileEntryTests(HostileEntries, RedisTestCase):
    """Entries another program wrote in Redis that no reader may take read as absent."""

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._hostile_store())

    async def _hostile_store(self) -> IStore:
        return await self.ready_store()

    def write_raw(self, key: str, data: bytes) -> None:
        self.server.command("SET", key, data)


class RedisLayoutTests(RedisTestCase):
    """What other programs find in Redis: docs/redis.md."""

    async def test_entry_value_is_the_entry_format_byte_for_byte(self) -> None:
        store = await self.ready_store()
        key, entry = self.unique_key(id="1"), sample_entry(b"\x00body\n\xff")
        await store.put(key, entry, LONG_TTL)
        self.assertEqual(self.server.command("GET", key), encode(entry))

    async def test_entry_expires_in_redis_after_the_ttl_given(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(), 100)
        pttl = self.server.command("PTTL", key)
        assert isinstance(pttl, int)
        self.assertTrue(99_000 < pttl <= 100_000, pttl)
        await store.put(key, sample_entry(), 0.0101)
        pttl = self.server.command("PTTL", key)
        assert isinstance(pttl, int)
        self.assertLessEqual(pttl, 11)

    async def test_lease_is_a_key_with_lease_after_the_namespace(self) -> None:
        store = await self.ready_store()
        key = entry_key("rfdtest", "tweets", 1, {"username": "bob", "id": self.id()[-20:]})
        token = await store.acquire_lease(key, 30)
        assert token is not None
        where = lease_key(key)
        self.assertTrue(where.startswith("rfdtest:lease:tweets:v1:"))
        self.assertEqual(self.server.command("GET", where), token.encode("ascii"))
        pttl = self.server.command("PTTL", where)
        assert isinstance(pttl, int)
        self.assertTrue(29_000 < pttl <= 30_000, pttl)
        await store.release_lease(key, token)
        self.assertIsNone(self.server.command("GET", where))

    async def test_every_change_publishes_its_key_on_the_namespace_channel(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        with self.server.subscribed(f"{NAMESPACE}:changes") as next_message:
            await store.put(key, sample_entry(), LONG_TTL)
            token = await store.acquire_lease(key, LONG_TTL)
            await store.put(key, sample_entry(), LONG_TTL, lease=token)
            await store.put(key, sample_entry(), LONG_TTL, lease="not the token")
            await store.delete(key)
            expected = [b"message", f"{NAMESPACE}:changes".encode(), key.encode()]
            for _ in range(3):
                self.assertEqual(next_message(), expected)
        self.assertEqual(store.channel, f"{NAMESPACE}:changes")

    async def test_numeric_looking_values_come_back_byte_exact(self) -> None:
        store = await self.ready_store()
        for i, body in enumerate([b"007", b"1.50", b"-0", b"1e3", b"+1", b"OK", b"", b"nil"]):
            key = self.unique_key(id=str(i))
            entry = sample_entry(
                body, job="007", content_type="1.50", args={"n": "007"}, tags=("0.10",)
            )
            await store.put(key, entry, LONG_TTL)
            self.assertEqual(await store.get(key), entry)
            self.assertEqual(self.server.command("GET", key), encode(entry))

    async def test_unreadable_bytes_read_as_absent_with_one_warning(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        self.server.command("SET", key, b"007")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertIsNone(await store.get(key))
        self.assertIsNone(await store.get(key))
        warnings = [e for e in logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["key"], key)

    async def test_scripts_work_again_after_redis_forgets_them(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.put(key, sample_entry(b"one"), LONG_TTL)
        self.server.command("SCRIPT", "FLUSH")
        self.assertIs(await store.put(key, sample_entry(b"two"), LONG_TTL), True)
        self.assertIs(await store.delete(key), True)


class RedisChangeTests(RedisTestCase):
    """
    Waiters are woken by changes made by other processes to the keys their
    store read (CLIENT TRACKING): a waiter reads its key before it waits.
    """

    async def test_waiter_is_woken_by_another_store_on_the_same_server(self) -> None:
        here, there = await self.ready_store(), await self.ready_store()
        key = self.unique_key(id="1")
        for change in (
            lambda: there.put(key, sample_entry(), LONG_TTL),
            lambda: there.delete(key),
        ):
            await here.get(key)
            waiter = here.wait_for_change(key, LONG_TTL)
            await change()
            await sleep(NOTICE)
            self.assertIsNone(self.successResultOf(waiter))

    async def test_waiter_is_woken_by_any_program_writing_a_key_it_read(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.read(key, [])
        waiter = store.wait_for_change(key, LONG_TTL)
        self.server.command("SET", key, b"written by another program")
        await sleep(NOTICE)
        self.assertIsNone(self.successResultOf(waiter))

    async def test_a_key_never_read_sends_no_message_and_wakes_nobody(self) -> None:
        here, there = await self.ready_store(), await self.ready_store()
        key, read = self.unique_key(id="never read"), self.unique_key(id="read")
        waiter = here.wait_for_change(key, LONG_TTL)
        await here.get(read)
        await there.put(key, sample_entry(), LONG_TTL)
        self.server.command("SET", key, b"x")
        await there.put(read, sample_entry(), LONG_TTL)
        await there.put(read, sample_entry(), LONG_TTL)  # told once per read
        await sleep(NOTICE)
        self.assertEqual(here.messages, 1)
        self.assertNoResult(waiter)
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)

    async def test_its_own_changes_send_it_no_message_but_wake_its_waiters(self) -> None:
        store = await self.ready_store()
        key = self.unique_key(id="1")
        await store.get(key)
        waiter = store.wait_for_change(key, LONG_TTL)
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertIsNone(self.successResultOf(waiter))
        await store.get(key)
        await store.delete(key)
        await sleep(NOTICE)
        self.assertEqual(store.messages, 0)

    async def test_keys_read_inside_scripts_are_tracked_too(self) -> None:
        # Redis 7 tracks what a script reads: here, the lease key of a fenced put.
        store = await self.ready_store()
        key = self.unique_key(id="1")
        token = await store.acquire_lease(key, LONG_TTL)
        assert token is not None
        await store.put(key, sample_entry(), LONG_TTL, lease=token)
        self.server.command("SET", lease_key(key), b"taken over")
        await sleep(NOTICE)
        self.assertEqual(store.messages, 1)

    async def test_a_purge_by_tag_reaches_the_stores_that_read_its_generation_key(self) -> None:
        reader, other, purger = [await self.ready_store() for _ in range(3)]
        key = self.unique_key(id="1")
        gen = generation_key(key.partition(":")[0], "tag", "t", hard=True)
        await reader.read(key, [gen])
        waiter = reader.wait_for_change(gen, LONG_TTL)
        await purger.new_purge_token(gen, LONG_TTL)
        await sleep(NOTICE)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual((reader.messages, other.messages), (1, 0))

    async def test_without_tracking_every_change_reaches_every_store(self) -> None:
        # The change channel, as refresherd 0.1 listened to it (bench/invalidations.py).
        here = await self.ready_store(tracking=False)
        there = await self.ready_store()
        key = self.unique_key(id="1")
        waiter = here.wait_for_change(key, LONG_TTL)
        await there.put(key, sample_entry(), LONG_TTL)
        await sleep(NOTICE)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual(here.messages, 1)

    async def test_failed_fenced_put_and_lease_changes_wake_nobody(self) -> None:
        here, there = await self.ready_store(), await self.ready_store()
        key = self.unique_key(id="1")
        await here.get(key)
        await there.get(key)
        waiters = [here.wait_for_change(key, LONG_TTL), there.wait_for_change(key, LONG_TTL)]
        self.assertIs(await here.put(key, sample_entry(), LONG_TTL, lease="0" * 32), False)
        token = await here.acquire_lease(key, LONG_TTL)
        assert token is not None
        await here.release_lease(key, token)
        await sleep(NOTICE)
        for waiter in waiters:
            self.assertNoResult(waiter)
            waiter.cancel()
            self.failureResultOf(waiter, CancelledError)

    async def test_stop_fires_waiters_and_leaves_no_delayed_call(self) -> None:
        await sleep(0)  # trial's own timeout is scheduled by now
        before = set(reactor.getDelayedCalls())
        store = await self.ready_store()
        key = self.unique_key(id="1")
        timed_out = store.wait_for_change(key, 0.01)
        cancelled = store.wait_for_change(key, LONG_TTL)
        cancelled.cancel()
        woken = store.wait_for_change(key, LONG_TTL)
        await store.put(key, sample_entry(), LONG_TTL)
        pending = store.wait_for_change(key, LONG_TTL)
        await store.get(key)
        await sleep(0.05)
        await store.stopService()
        self.assertIsNone(self.successResultOf(timed_out))
        self.assertIsNone(self.successResultOf(woken))
        self.assertIsNone(self.successResultOf(pending))
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(set(reactor.getDelayedCalls()) - before, set())
        self.assertEqual(store._waiters.keys(), set())


class RedisAuthTests(RedisTestCase):
    """A password-protected server and a database other than 0, from a URL."""

    async def test_password_and_database_from_url_including_the_subscriber(self) -> None:
        server = self.own_server(password="s3cret pw")
        url = f"redis://:s3cret%20pw@127.0.0.1:{server.port}/1"
        here = self.started(redis_store_from_url(url, NAMESPACE, reactor, {}))
        there = self.started(
            redis_store_from_url(
                f"redis://:env:RFD_PW@127.0.0.1:{server.port}/1",
                NAMESPACE,
                reactor,
                {"RFD_PW": "s3cret pw"},
            )
        )
        await defer.gatherResults([here.ready(), there.ready()]).addTimeout(READY, reactor)
        key = self.unique_key(id="1")
        await here.get(key)
        waiter = here.wait_for_change(key, LONG_TTL)
        await there.put(key, sample_entry(), LONG_TTL)
        await sleep(NOTICE)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual(await here.get(key), sample_entry())
        self.assertEqual(server.command("GET", key, db=1), encode(sample_entry()))
        self.assertIsNone(server.command("GET", key, db=0))

    async def test_wrong_password_fails_calls_at_once_without_showing_it(self) -> None:
        server = self.own_server(password="right")
        store = self.new_store(server, password="wrong-pw")
        await sleep(0.5)
        start = time.monotonic()
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertLess(time.monotonic() - start, 0.1)
        self.assertIn("WRONGPASS", raised.exception.message)
        self.assertNotIn("wrong-pw", raised.exception.message)
        self.assertTrue(self.logged_errors)
        self.assertTrue(all("wrong-pw" not in repr(e) for e in self.logged_errors))
        self.logged_errors.clear()

    async def test_missing_password_fails_calls(self) -> None:
        server = self.own_server(password="right")
        store = self.new_store(server)
        await sleep(0.5)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertIn("NOAUTH", raised.exception.message)
        self.logged_errors.clear()


class RedisOutageTests(RedisTestCase):
    """A Redis that dies, hangs, restarts or is full: bounded failures, then recovery."""

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

    async def assertEveryCallUnavailable(self, store: RedisStore, within: float) -> None:
        key = self.unique_key(id="1")
        calls: list[Callable[[], Deferred[Any]]] = [
            lambda: store.ping(),
            lambda: store.get(key),
            lambda: store.put(key, sample_entry(), LONG_TTL),
            lambda: store.put(key, sample_entry(), LONG_TTL, lease="0" * 32),
            lambda: store.delete(key),
            lambda: store.acquire_lease(key, LONG_TTL),
            lambda: store.release_lease(key, "0" * 32),
        ]
        for call in calls:
            start = time.monotonic()
            with self.assertRaises(StoreUnavailable) as raised:
                await call()
            self.assertLess(time.monotonic() - start, within)
            self.assertNotIn("\n", raised.exception.message)

    async def test_calls_made_while_it_first_connects_wait_for_the_connection(self) -> None:
        # A request reaching a process just started: not an outage.
        store = self.new_store()
        key = self.unique_key(id="1")
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL), True)
        self.assertEqual(await store.get(key), sample_entry())

    async def test_a_store_that_cannot_connect_at_start_fails_calls_at_once(self) -> None:
        server = self.own_server()
        server.kill()
        store = self.new_store(server, timeout=1.0)
        # The first calls wait for the first attempt (refused at once), the later ones not at all.
        await self.assertEveryCallUnavailable(store, within=1.0 + 0.3)
        await sleep(0.2)
        await self.assertEveryCallUnavailable(store, within=0.1)

    async def test_killed_redis_fails_every_call_within_the_deadline(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server, timeout=1.0)
        server.kill()
        await self.assertEveryCallUnavailable(store, within=1.0 + 0.3)

    async def test_hung_redis_fails_every_call_within_the_deadline(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server, timeout=0.5)
        key = self.unique_key(id="1")
        server.pause()
        waiter = store.wait_for_change(key, 0.3)
        await self.assertEveryCallUnavailable(store, within=0.5 + 0.3)
        self.assertIsNone(self.successResultOf(waiter))
        server.resume()
        await self.eventually(store.ping)

    async def test_restarted_redis_serves_and_wakes_waiters_again(self) -> None:
        server = self.own_server()
        here = await self.ready_store(server)
        there = await self.ready_store(server)
        server.restart()
        start = time.monotonic()
        await self.eventually(here.ping)
        await self.eventually(there.ping)
        self.assertLess(time.monotonic() - start, 3.0)
        await defer.gatherResults([here.ready(), there.ready()]).addTimeout(READY, reactor)
        key = self.unique_key(id="1")
        await here.get(key)
        waiter = here.wait_for_change(key, LONG_TTL)
        await there.put(key, sample_entry(), LONG_TTL)
        await sleep(NOTICE)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual(await here.get(key), sample_entry())

    async def test_waiters_are_woken_when_the_change_channel_comes_back(self) -> None:
        server = self.own_server()
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        server.restart()
        waiter = store.wait_for_change(key, LONG_TTL)
        await waiter.addTimeout(READY, reactor)

    async def test_full_redis_refuses_leases_and_writes_as_unavailable(self) -> None:
        server = self.own_server("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        fill = "for i = 1, 4096 do redis.call('SET', 'junk:' .. i, string.rep('x', 1024)) end"
        with self.assertRaises(RedisReplyError):
            server.command("EVAL", fill, 0)
        with self.assertRaises(RedisReplyError):
            server.command("SET", "probe", "x")
        with self.assertRaises(StoreUnavailable) as raised:
            await store.acquire_lease(key, LONG_TTL)
        self.assertIn("OOM", raised.exception.message)
        with self.assertRaises(StoreUnavailable):
            await store.put(key, sample_entry(), LONG_TTL)
        self.assertIsNone(await store.get(key))
        await store.ping()


def connections_received(server: RedisServer) -> int:
    """How many connections the server has accepted since it started (C{INFO stats})."""
    stats = server.command("INFO", "stats")
    assert isinstance(stats, bytes)
    line = next(x for x in stats.splitlines() if x.startswith(b"total_connections_received:"))
    return int(line.partition(b":")[2])


class RedisClusterNodeTests(RedisTestCase):
    """
    A Redis Cluster node accepts the connection and answers keys of its own
    slots, and MOVED for the others: the store refuses it during its handshake.
    """

    async def test_a_cluster_node_is_refused_with_one_error_and_checked_again(self) -> None:
        server = self.own_server("--cluster-enabled", "yes")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = self.new_store(server)
        ready = store.ready()
        await sleep(0.5)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()  # what /readyz asks
        self.assertIn("Redis Cluster node", raised.exception.message)
        self.assertIsNone(store._commands)
        self.assertNoResult(ready)
        before = connections_received(server)
        await sleep(1.5)
        # It keeps checking, each connection about once a second (not every 0.1 s).
        self.assertTrue(2 <= connections_received(server) - before <= 8)
        self.assertNoResult(ready)
        errors = [e for e in logged if e["log_level"] == LogLevel.error]
        self.assertEqual(
            [formatEvent(e) for e in errors],
            [
                f"Redis at 127.0.0.1:{server.port} is a Redis Cluster node; refresherd needs "
                "a single primary (see docs/scaling.md)"
            ],
        )
        self.logged_errors.clear()
        ready.cancel()
        self.failureResultOf(ready, CancelledError)

    async def test_a_user_refused_info_is_not_blocked(self) -> None:
        """A restricted ACL user may not run INFO: the store is not refused for it."""
        server = self.own_server()
        server.command("ACL", "SETUSER", "default", "-info")
        store = await self.ready_store(server)
        key = self.unique_key(id="1")
        self.assertTrue(await store.put(key, sample_entry(), LONG_TTL))
        self.assertEqual(await store.get(key), sample_entry())


class RedisTrackingTests(RedisTestCase):
    """
    Tracking is redirected again whenever either connection is made again, and
    what may have been missed meanwhile is reset, never silently lost.
    """

    def clients(self, server: RedisServer) -> dict[str, int]:
        """The ids of the store's connections: the tracking one and the subscriber."""
        listed = server.command("CLIENT", "LIST")
        assert isinstance(listed, bytes)
        ids: dict[str, int] = {}
        for line in listed.decode().splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "P" in fields["flags"]:
                ids["subscriber"] = int(fields["id"])
            elif "t" in fields["flags"]:
                ids["commands"] = int(fields["id"])
                ids["redirect"] = int(fields["redir"])
        return ids

    async def watched(self, server: RedisServer) -> tuple[RedisStore, list[str]]:
        """A ready store on C{server}, and what it tells its watchers ("reset" or a key)."""
        store = await self.ready_store(server)
        told: list[str] = []
        store.watch(told.append, lambda: told.append("reset"))
        return store, told

    async def until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY
        while not condition():
            self.assertLess(time.monotonic(), deadline, "not in time")
            await sleep(0.01)

    async def test_the_command_connection_redirects_to_the_subscriber(self) -> None:
        server = self.own_server()
        await self.ready_store(server)
        ids = self.clients(server)
        self.assertEqual(ids["redirect"], ids["subscriber"])

    async def assertTrackingComesBack(self, which: str) -> None:
        server = self.own_server()
        store, told = await self.watched(server)
        key = self.unique_key(id="1")
        await store.get(key)
        waiter = store.wait_for_change(key, LONG_TTL)
        before = self.clients(server)
        server.command("CLIENT", "KILL", "ID", before[which])
        await self.until(lambda: "reset" in told)
        await store.ready().addTimeout(READY, reactor)
        # Woken, since a change may have been missed while it did not listen:
        await waiter.addTimeout(READY, reactor)
        after = self.clients(server)
        self.assertNotEqual(after[which], before[which])
        self.assertEqual(after["redirect"], after["subscriber"])
        await store.get(key)
        told.clear()
        server.command("SET", key, b"changed elsewhere")
        await self.until(lambda: told == [key])

    async def test_a_lost_command_connection_resets_and_tracks_again(self) -> None:
        await self.assertTrackingComesBack("commands")

    async def test_a_lost_subscriber_resets_and_tracking_follows_the_new_one(self) -> None:
        await self.assertTrackingComesBack("subscriber")

    async def test_a_restarted_server_resets_and_tracks_again(self) -> None:
        server = self.own_server()
        store, told = await self.watched(server)
        key = self.unique_key(id="1")
        server.restart()
        await self.until(lambda: told.count("reset") >= 2 and store.listening)
        await store.get(key)
        told.clear()
        server.command("SET", key, b"changed elsewhere")
        await self.until(lambda: told == [key])

    async def test_a_flushed_database_resets_everything(self) -> None:
        server = self.own_server()
        store, told = await self.watched(server)
        key = self.unique_key(id="1")
        await store.get(key)
        waiter = store.wait_for_change(self.unique_key(id="never read"), LONG_TTL)
        server.command("FLUSHDB")
        await self.until(lambda: told == ["reset"])
        self.assertIsNone(self.successResultOf(waiter))

    async def test_refused_tracking_is_logged_and_calls_still_work(self) -> None:
        server = self.own_server()
        server.command("ACL", "SETUSER", "default", "-client|tracking")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = self.new_store(server)
        await self.until(lambda: bool(self.logged_errors))
        await store.ping()
        self.assertFalse(store.listening)
        self.assertIn("refused CLIENT TRACKING", [e for e in logged][-1]["log_format"])
        self.logged_errors.clear()

    async def test_the_documented_rights_are_enough(self) -> None:
        # docs/redis.md: CLIENT ID, CLIENT TRACKING, and the channel __redis__:invalidate
        # (besides the scripts' PUBLISH on {ns}:changes, and the purge notices' channel);
        # no other CLIENT subcommand.
        server = self.own_server()
        channels = (f"&{NAMESPACE}:changes", f"&{NAMESPACE}:purges", "&__redis__:invalidate")
        rights = ("resetchannels", *channels, "-client")
        server.command("ACL", "SETUSER", "default", *rights, "+client|id", "+client|tracking")
        here, there = await self.ready_store(server), await self.ready_store(server)
        key = self.unique_key(id="1")
        await here.get(key)
        waiter = here.wait_for_change(key, LONG_TTL)
        await there.put(key, sample_entry(), LONG_TTL)
        await waiter.addTimeout(READY, reactor)
        self.assertEqual(here.messages, 1)
