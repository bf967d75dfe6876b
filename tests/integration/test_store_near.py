"""
The near cache in front of a real Redis: the store contract unchanged, and
coherence across processes (a write or a purge elsewhere, or a write by
another program, seen well before the near cache's ttl; losing the subscriber
connection drops everything).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from refresherd.entry import encode
from refresherd.interfaces import IStore
from refresherd.keys import generation_key
from refresherd.stores.near import DEFAULT_TTL, NearCache
from refresherd.stores.redis import RedisStore
from tests.redis_stores import READY, RedisTestCase, sleep
from tests.store_contract import LONG_TTL, StoreContract, sample_entry


class NearRedisContractTests(StoreContract, RedisTestCase):
    """The store contract, unchanged, through a near cache in front of a real Redis."""

    at_hand = None

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._contract_store())

    async def _contract_store(self) -> IStore:
        return NearCache(await self.ready_store(), reactor)

    def advance(self, seconds: float) -> Deferred[None]:
        return sleep(seconds)


class NearRedisTests(RedisTestCase):
    """Coherence across processes: two stores on one real Redis, a near cache on one."""

    async def pair(self) -> tuple[NearCache, RedisStore]:
        here = NearCache(await self.ready_store(), reactor)
        there = await self.ready_store()
        return here, there

    async def eventually(
        self, near: NearCache, wanted: Any, key: str, gens: Sequence[str]
    ) -> float:
        """Seconds until the near cache reads C{wanted}: they must be well under its ttl."""
        start = time.monotonic()
        while True:
            got = await near.read(key, gens)
            if got == wanted:
                return time.monotonic() - start
            self.assertLess(time.monotonic() - start, DEFAULT_TTL / 2, got)
            await sleep(0.005)

    async def test_a_write_and_a_purge_elsewhere_are_seen_before_the_ttl(self) -> None:
        here, there = await self.pair()
        key = self.unique_key(id="1")
        gen = generation_key(key.partition(":")[0], "tag", "t", hard=True)
        self.assertEqual(await here.read(key, [gen]), (None, {}))
        await there.put(key, sample_entry(b"there"), LONG_TTL)
        await self.eventually(here, (sample_entry(b"there"), {}), key, [gen])
        token = await there.new_purge_token(gen, 3600)
        await self.eventually(here, (sample_entry(b"there"), {gen: token}), key, [gen])
        await there.delete(key)
        await self.eventually(here, (None, {gen: token}), key, [gen])

    async def test_a_write_by_another_program_is_seen_before_the_ttl(self) -> None:
        here, _ = await self.pair()
        key = self.unique_key(id="1")
        await here.put(key, sample_entry(b"here"), LONG_TTL)
        self.assertEqual(await here.read(key, []), (sample_entry(b"here"), {}))
        self.server.command("SET", key, encode(sample_entry(b"elsewhere")))
        await self.eventually(here, (sample_entry(b"elsewhere"), {}), key, [])

    async def test_losing_the_subscriber_connection_drops_everything(self) -> None:
        server = self.own_server()
        inner = await self.ready_store(server)
        here = NearCache(inner, reactor)
        key = self.unique_key(id="1")
        await inner.put(key, sample_entry(b"before"), LONG_TTL)
        await here.read(key, [])
        self.assertGreater(here.used_bytes, 0)
        server.kill()
        while inner._subscriber is not None:
            await sleep(0.01)
        self.assertEqual(here.used_bytes, 0)
        server.start()
        await inner.ready().addTimeout(READY, reactor)
