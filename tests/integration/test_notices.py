"""
Purge notices on a real C{redis-server} (docs/redis.md, "How processes hear of
changes"; docs/README.md, "Background refreshes"): what one store publishes
on C{{namespace}:purges} every store on the server hears, itself included;
a refresher's soft purge reaches the other refreshers' C{after_purge}, a hard
one nothing; forged notices are ignored.  The format and the checks alone:
tests/unit/test_notices.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from refresherd.config import JobConfig
from refresherd.core.jobs import Job
from refresherd.core.notices import MAX_NOTICE_BYTES
from refresherd.core.refresher import Refresher
from refresherd.interfaces import IPurgeNotices
from refresherd.keys import entry_key
from refresherd.metrics import metrics_for
from refresherd.stores.near import NearCache
from refresherd.stores.redis import RedisStore
from refresherd.testing import FakeFetcher
from tests.redis_stores import NAMESPACE, READY, RedisTestCase, sleep

Purged = tuple[list[str], list[str], list[str], bool]
CHANNEL = f"{NAMESPACE}:purges"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll C{condition} until it holds; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await sleep(0.01)


class PurgeNoticeTests(RedisTestCase):
    def heard_by(self, store: Any) -> list[bytes]:
        heard: list[bytes] = []
        store.listen_purges(heard.append)
        return heard

    def refresher(self, store: Any) -> tuple[Refresher, list[Purged]]:
        """A refresher on C{store} with jobs C{user} and C{team}, whose after_purge records."""
        configs = {
            name: JobConfig(name=name, fetch="python", callable="x:y", args=("id",), fresh=60.0)
            for name in ("user", "team")
        }
        jobs = {name: Job(config, FakeFetcher()) for name, config in configs.items()}
        purged: list[Purged] = []
        refresher = Refresher(
            store,
            jobs,
            reactor,
            NAMESPACE,
            metrics_for(configs),
            after_purge=lambda *args: purged.append(args),
        )
        return refresher, purged

    async def test_a_notice_is_heard_by_every_store_on_the_server_itself_included(
        self,
    ) -> None:
        one, two = await self.ready_store(), await self.ready_store()
        assert IPurgeNotices.providedBy(one)
        heard_one, heard_two = self.heard_by(one), self.heard_by(two)
        await one.publish_purge(b"a notice")
        await until(lambda: heard_one == heard_two == [b"a notice"])

    async def test_the_near_cache_passes_notices_through(self) -> None:
        redis = self.new_store()
        near = NearCache(redis, reactor)
        assert IPurgeNotices.providedBy(near)
        heard = self.heard_by(near)
        await redis.ready()
        await near.publish_purge(b"through")
        await until(lambda: heard == [b"through"])

    async def test_notices_are_not_changes_and_changes_not_notices(self) -> None:
        """Each channel goes where it belongs, with tracking and without."""
        await self.channels_apart(tracking=True)
        await self.channels_apart(tracking=False)

    async def channels_apart(self, tracking: bool) -> None:
        store = await self.ready_store(tracking=tracking)
        heard, changed = self.heard_by(store), list[str]()
        store.watch(changed.append, lambda: None)
        messages = store.messages
        self.server.command("PUBLISH", store.channel, b"rfdtest:job:v1:a=1")
        self.server.command("PUBLISH", CHANNEL, b"notice")
        await until(lambda: heard == [b"notice"])
        self.assertEqual(changed, [] if tracking else ["rfdtest:job:v1:a=1"])  # heard first
        self.assertEqual(store.messages, messages + (0 if tracking else 1))

    async def test_a_store_of_another_namespace_hears_none(self) -> None:
        ours, theirs = await self.ready_store(), await self.ready_store(namespace="other")
        heard_ours, heard_theirs = self.heard_by(ours), self.heard_by(theirs)
        await theirs.publish_purge(b"theirs")
        await ours.publish_purge(b"ours")
        await until(lambda: heard_ours == [b"ours"] and heard_theirs == [b"theirs"])

    async def test_a_soft_purge_reaches_the_other_refreshers_after_purge(self) -> None:
        a, purged_a = self.refresher(await self.ready_store())
        b, purged_b = self.refresher(NearCache(await self.ready_store(), reactor))
        key = entry_key(NAMESPACE, "user", 1, {"id": "bob"})
        self.assertEqual(await a.purge([key], ["team"], ["user:bob"], soft=True), 3)
        names: Purged = ([key], ["team"], ["user:bob"], True)
        await until(lambda: purged_b == [names])
        self.assertEqual(purged_a, [names])  # its own notice ignored: told once
        await b.purge([], [], ["t"], soft=True)
        await until(lambda: purged_a == [names, ([], [], ["t"], True)])
        self.assertEqual(len(purged_b), 2)

    async def test_a_hard_purge_publishes_nothing(self) -> None:
        a, _ = self.refresher(await self.ready_store())
        heard = self.heard_by(await self.ready_store())
        key = entry_key(NAMESPACE, "user", 1, {"id": "bob"})
        await a.purge([key], ["team"], ["user:bob"], soft=False)
        await a.purge([], [], ["after"], soft=True)
        await until(lambda: len(heard) == 1)  # the soft one, after the hard one: in order
        self.assertEqual(json.loads(heard[0])["tags"], ["after"])

    async def test_forged_notices_are_ignored_with_a_warning(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        b, purged = self.refresher(await self.ready_store())
        good = {"from": "forger", "keys": [], "jobs": ["team"], "tags": []}
        for forged in [
            b"not json",
            b" " * MAX_NOTICE_BYTES + b"{}",
            json.dumps({**good, "jobs": "team"}).encode(),
            json.dumps({**good, "tags": [1, 2]}).encode(),
            json.dumps({**good, "jobs": ["nope"]}).encode(),
            json.dumps({**good, "keys": ["other:user:v1:id=bob"]}).encode(),
            json.dumps({**good, "extra": True}).encode(),
            json.dumps(["from", "keys", "jobs", "tags"]).encode(),
        ]:
            self.server.command("PUBLISH", CHANNEL, forged)
        self.server.command("PUBLISH", CHANNEL, json.dumps(good).encode())
        await until(lambda: purged == [([], ["team"], [], True)])
        warnings = [formatEvent(e) for e in logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(
            warnings, ["Ignored 1 purge notice(s) heard on the store (the last: not JSON)"]
        )

    async def test_a_notice_that_cannot_be_published_does_not_fail_the_soft_purge(
        self,
    ) -> None:
        """
        Redis refuses the notices' channel (an ACL user without it): the
        SUBSCRIBE refused is logged once, the store works on, and a soft
        purge is done and answered, its PUBLISH refused logged in one line.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = self.own_server(password="admin")
        server.command(
            "ACL", "SETUSER", "nopub", "on", ">s3cret-pw", "resetchannels", "~*",
            f"&{NAMESPACE}:changes", "&__redis__:invalidate", "+@all",
        )  # fmt: skip
        store = RedisStore(
            reactor, server.host, server.port, namespace=NAMESPACE, username="nopub",
            password="s3cret-pw",
        )  # fmt: skip
        self.started(store)
        await store.ready().addTimeout(READY, reactor)  # usable without the channel
        a, purged = self.refresher(store)
        self.assertEqual(await a.purge([], [], ["user:bob"], soft=True), 1)
        self.assertEqual(purged, [([], [], ["user:bob"], True)])
        said = [formatEvent(e) for e in logged if e["log_level"] >= LogLevel.warn]
        told = [s for s in said if s.startswith("Soft purge done")]
        self.assertEqual(len(told), 1, said)
        self.assertIn("NOPERM", told[0])
        refused = [s for s in said if f"refused SUBSCRIBE {CHANNEL}" in s]
        self.assertEqual(len(refused), 1, said)
        for text in told + refused:
            self.assertNotIn("s3cret", text)
        self.logged_errors.clear()  # the refused SUBSCRIBE, expected
