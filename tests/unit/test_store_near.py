"""
The near cache (refresherd.stores.near) on a fake clock: reads served from
the process within its bound, dropped at once by changes made here, by
changes the store tells of, and all at once when the store may have missed some;
memory bounded; its URL options.  The store contract through it:
tests/contract/test_store_near.py; in front of a real Redis:
tests/integration/test_store_near.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from refresherd.errors import StoreUnavailable
from refresherd.keys import entry_key, generation_key
from refresherd.stores.memory import MemoryStore, entry_cost
from refresherd.stores.near import DEFAULT_TTL, NearCache, near_options
from tests.store_contract import LONG_TTL, sample_entry

KEY = entry_key("rfd", "job", 1, {"id": "1"})
GEN = generation_key("rfd", "tag", "t", hard=True)


@attrs.define(slots=False)
class Counting:
    """A memory store that counts the reads that reach it and can call its watchers."""

    store: MemoryStore
    reads: Counter[str] = attrs.field(factory=Counter)
    watchers: list[Any] = attrs.field(factory=list)
    shared = True

    def read(self, key: str, generation_keys: Sequence[str], cached: bool = True) -> Deferred[Any]:
        self.reads[key] += 1
        return self.store.read(key, generation_keys)

    def watch(self, changed: Any, reset: Any) -> None:
        self.watchers.append((changed, reset))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class NearCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.inner = Counting(MemoryStore(self.clock))
        self.near = NearCache(self.inner, self.clock)

    def read(self, key: str = KEY, generation_keys: Sequence[str] = (GEN,)) -> Any:
        return self.successResultOf(self.near.read(key, generation_keys))

    def put(self, store: Any, body: bytes) -> None:
        self.successResultOf(store.put(KEY, sample_entry(body), LONG_TTL))

    def test_reads_within_the_ttl_cost_the_store_nothing(self) -> None:
        self.put(self.inner.store, b"1")
        token = self.successResultOf(self.inner.store.new_purge_token(GEN, 3600))
        for _ in range(5):
            self.assertEqual(self.read(), (sample_entry(b"1"), {GEN: token}))
            self.clock.advance(DEFAULT_TTL / 10)
        self.assertEqual(self.inner.reads[KEY], 1)
        self.clock.advance(DEFAULT_TTL)
        self.read()
        self.assertEqual(self.inner.reads[KEY], 2)

    def test_what_is_kept_is_at_hand_until_the_ttl_or_a_change(self) -> None:
        self.assertIsNone(self.near.read_at_hand(KEY, (GEN,)))
        self.put(self.inner.store, b"1")
        self.read()
        self.assertEqual(self.near.read_at_hand(KEY, (GEN,)), (sample_entry(b"1"), {}))
        self.assertIsNone(self.near.read_at_hand(KEY, (GEN, "rfd:gen:hard:job:j")))
        self.clock.advance(DEFAULT_TTL)
        self.assertIsNone(self.near.read_at_hand(KEY, (GEN,)))
        self.read()
        self.put(self.near, b"2")
        self.assertIsNone(self.near.read_at_hand(KEY, (GEN,)))
        self.assertEqual(self.inner.reads[KEY], 2)  # Being at hand costs the store nothing.

    def test_absent_entries_and_tokens_are_kept_too(self) -> None:
        self.assertEqual(self.read(), (None, {}))
        self.assertEqual(self.read(), (None, {}))
        self.assertEqual(self.inner.reads[KEY], 1)

    def test_a_read_with_other_generation_keys_goes_to_the_store(self) -> None:
        self.read()
        self.read(generation_keys=(GEN, "rfd:gen:hard:job:j"))
        self.assertEqual(self.inner.reads[KEY], 2)

    def test_an_uncached_read_goes_to_the_store_and_refreshes_what_is_kept(self) -> None:
        self.read()
        self.put(self.inner.store, b"elsewhere")
        entry, _ = self.successResultOf(self.near.read(KEY, (GEN,), cached=False))
        self.assertEqual(entry, sample_entry(b"elsewhere"))
        self.assertEqual(self.read()[0], sample_entry(b"elsewhere"))
        self.assertEqual(self.inner.reads[KEY], 2)

    def test_writes_deletes_and_purges_through_it_are_seen_at_once(self) -> None:
        self.read()
        self.put(self.near, b"2")
        self.assertEqual(self.read()[0], sample_entry(b"2"))
        self.successResultOf(self.near.delete(KEY))
        self.assertEqual(self.read()[0], None)
        token = self.successResultOf(self.near.new_purge_token(GEN, 3600))
        self.assertEqual(self.read()[1], {GEN: token})
        self.assertEqual(self.inner.reads[KEY], 4)

    def test_changes_the_store_tells_of_drop_their_keys_and_a_reset_drops_all(self) -> None:
        ((changed, reset),) = self.inner.watchers
        self.read()
        self.put(self.inner.store, b"elsewhere")
        self.assertEqual(self.read()[0], None)  # not told yet: within the bound
        changed(KEY)
        self.assertEqual(self.read()[0], sample_entry(b"elsewhere"))
        token = self.successResultOf(self.inner.store.new_purge_token(GEN, 3600))
        changed(GEN)
        self.assertEqual(self.read()[1], {GEN: token})
        self.put(self.inner.store, b"again")
        reset()
        self.assertEqual(self.read()[0], sample_entry(b"again"))
        self.assertEqual(self.near.used_bytes, entry_cost(KEY, sample_entry(b"again")) + 100)

    def test_a_read_under_way_when_its_key_changes_is_not_kept(self) -> None:
        pending: Deferred[Any] = Deferred()
        self.patch(self.inner, "read", lambda key, generation_keys, cached=True: pending)
        reading = self.near.read(KEY, (GEN,))
        self.near.drop(KEY)
        pending.callback((sample_entry(b"old"), {}))
        self.assertEqual(self.successResultOf(reading)[0], sample_entry(b"old"))
        self.assertEqual(self.near.used_bytes, 100)  # the token was kept, the entry not
        cleared: Deferred[Any] = Deferred()
        self.patch(self.inner, "read", lambda key, generation_keys, cached=True: cleared)
        reading = self.near.read(KEY, (GEN,))
        self.near.clear()
        cleared.callback((sample_entry(b"old"), {}))
        self.assertEqual(self.near.used_bytes, 0)

    def slow_store(self) -> list[Deferred[Any]]:
        """The store's reads from now on wait: one Deferred per read that reached it."""
        reads: list[Deferred[Any]] = []

        def read(key: str, generation_keys: Sequence[str], cached: bool = True) -> Deferred[Any]:
            reads.append(Deferred())
            return reads[-1]

        self.patch(self.inner, "read", read)
        return reads

    def test_lookups_that_miss_at_once_share_one_read_of_the_store(self) -> None:
        reads = self.slow_store()
        waiting = [self.near.read(KEY, (GEN,)) for _ in range(3)]
        self.assertEqual(len(reads), 1)
        self.near.read(KEY, ())  # other generation keys: a read of its own
        self.assertEqual(len(reads), 2)
        reads[0].callback((sample_entry(b"1"), {GEN: "t"}))
        answers = [self.successResultOf(d) for d in waiting]
        self.assertEqual(answers, [(sample_entry(b"1"), {GEN: "t"})] * 3)
        self.assertIsNot(answers[0][1], answers[1][1])  # each its own tokens
        self.assertEqual(self.read(), (sample_entry(b"1"), {GEN: "t"}))  # kept
        self.assertEqual(len(reads), 2)

    def test_a_lookup_after_a_change_does_not_join_a_read_begun_before_it(self) -> None:
        for change in (lambda: self.near.drop(KEY), lambda: self.near.drop(GEN), self.near.clear):
            reads = self.slow_store()
            before = self.near.read(KEY, (GEN,))
            change()
            after = self.near.read(KEY, (GEN,))
            self.assertEqual(len(reads), 2)
            reads[0].callback((sample_entry(b"old"), {}))
            reads[1].callback((sample_entry(b"new"), {}))
            self.assertEqual(self.successResultOf(before)[0], sample_entry(b"old"))
            self.assertEqual(self.successResultOf(after)[0], sample_entry(b"new"))
            self.near.clear()

    def test_a_shared_read_that_fails_fails_every_lookup_that_joined_it(self) -> None:
        reads = self.slow_store()
        waiting = [self.near.read(KEY, (GEN,)) for _ in range(2)]
        reads[0].errback(StoreUnavailable("down"))
        for d in waiting:
            self.failureResultOf(d, StoreUnavailable)
        self.near.read(KEY, (GEN,))
        self.assertEqual(len(reads), 2)  # the next lookup tries again

    def test_an_uncached_read_never_joins_another(self) -> None:
        reads = self.slow_store()
        self.near.read(KEY, (GEN,))
        self.near.read(KEY, (GEN,), cached=False)
        self.near.read(KEY, (GEN,), cached=False)
        self.assertEqual(len(reads), 3)

    def test_memory_is_bounded_least_recently_used_first(self) -> None:
        entry = sample_entry(b"x" * 1000)
        cost = entry_cost(KEY, entry)
        self.near = NearCache(self.inner, self.clock, max_bytes=3 * cost)
        keys = [entry_key("rfd", "job", 1, {"id": str(i)}) for i in range(1, 5)]
        for key in keys:
            self.successResultOf(self.inner.store.put(key, entry, LONG_TTL))
        for key in keys[:3]:
            self.read(key, ())
        self.read(keys[0], ())  # the most recently used now
        self.read(keys[3], ())  # evicts keys[1]
        self.assertLessEqual(self.near.used_bytes, 3 * cost)
        before = self.inner.reads.copy()
        self.read(keys[0], ())
        self.read(keys[2], ())
        self.assertEqual(self.inner.reads, before)
        self.read(keys[1], ())
        self.assertEqual(self.inner.reads[keys[1]], 2)

    def test_an_entry_larger_than_the_whole_cache_is_not_kept(self) -> None:
        self.near = NearCache(self.inner, self.clock, max_bytes=500)
        self.put(self.inner.store, b"x" * 1000)
        self.read()
        self.read()
        self.assertEqual(self.inner.reads[KEY], 2)
        self.assertEqual(self.near.used_bytes, 100)  # the token's slot only

    def test_get_is_always_the_store_s(self) -> None:
        self.read()
        self.put(self.inner.store, b"elsewhere")
        self.assertEqual(self.successResultOf(self.near.get(KEY)), sample_entry(b"elsewhere"))


@pytest.mark.parametrize(
    ("url", "default", "expected"),
    [
        ("redis://h:1/0", 1.0, ("redis://h:1/0", 1.0, 32 * 1024 * 1024)),
        ("redis://h:1/0?near_ttl=0.25", 1.0, ("redis://h:1/0", 0.25, 32 * 1024 * 1024)),
        (
            "memcached://h:1?near_ttl=1&item_limit=9999",
            0.0,
            ("memcached://h:1?item_limit=9999", 1.0, 32 * 1024 * 1024),
        ),
        (
            "memcached://h:1?item_limit=9999&near_bytes=1000",
            0.0,
            ("memcached://h:1?item_limit=9999", 0.0, 1000),
        ),
        ("redis://h:1/0?near_ttl=0", 1.0, ("redis://h:1/0", 0.0, 32 * 1024 * 1024)),
    ],
)
def test_near_options(url: str, default: float, expected: tuple[str, float, int]) -> None:
    assert near_options(url, default) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h?near_ttl=2", "near_ttl must be a number of seconds from 0 to 1"),
        ("redis://h?near_ttl=soon", "near_ttl must be"),
        ("redis://h?near_ttl=-1", "near_ttl must be"),
        ("redis://h?near_bytes=0", "near_bytes must be a positive number"),
        ("redis://h?near_ttl=1&near_ttl=1", "gives near_ttl twice"),
    ],
)
def test_near_options_refuse(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        near_options(url, 1.0)
