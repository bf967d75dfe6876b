"""
The memory store's own ways, checked exactly on a fake clock: LRU and byte
accounting, exact expiry, no timers left behind, its URL (the store contract on
it: tests/contract/test_store_memory.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from refresherd.stores.memory import (
    DEFAULT_MAX_BYTES,
    ENTRY_OVERHEAD,
    MemoryStore,
    entry_cost,
    memory_store_from_url,
)
from tests.store_contract import sample_entry


class MemoryStoreTests(SynchronousTestCase):
    """What only the memory store does, checked exactly on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)

    def store(self, max_bytes: int = DEFAULT_MAX_BYTES) -> MemoryStore:
        return MemoryStore(self.clock, max_bytes=max_bytes)

    def test_is_not_shared(self) -> None:
        self.assertIs(self.store().shared, False)

    def test_every_method_but_wait_for_change_has_fired_already(self) -> None:
        store = self.store()
        self.assertTrue(store.put("k", sample_entry(), 10).called)
        self.assertTrue(store.get("k").called)
        self.assertTrue(store.delete("k").called)
        token = self.successResultOf(store.acquire_lease("k", 10))
        assert token is not None
        self.assertTrue(store.release_lease("k", token).called)
        self.assertTrue(store.ping().called)
        self.assertFalse(store.wait_for_change("k", 10).called)
        self.clock.advance(10)

    # Byte accounting and LRU

    def test_entry_cost_counts_body_strings_and_overhead(self) -> None:
        entry = sample_entry(
            b"12345",
            content_type="a/b",
            job="jj",
            etag="e",
            last_error="oops",
            tags=("t1", "t22"),
            args={"n": "vvv", "\u00e9": "\u00fc"},
        )
        self.assertEqual(
            entry_cost("key", entry), ENTRY_OVERHEAD + 5 + 3 + 3 + 2 + 1 + 4 + 5 + 4 + 2
        )

    def test_failure_entry_costs_no_body(self) -> None:
        entry = sample_entry(None, last_error=None, etag="", tags=(), args={})
        expected = ENTRY_OVERHEAD + 1 + len(entry.content_type) + len(entry.job)
        self.assertEqual(entry_cost("k", entry), expected)

    def test_used_bytes_follows_put_overwrite_and_delete(self) -> None:
        store = self.store()
        small, large = sample_entry(b"x"), sample_entry(b"x" * 1000)
        self.assertEqual(store.used_bytes, 0)
        store.put("k", small, 10)
        self.assertEqual(store.used_bytes, entry_cost("k", small))
        store.put("k", large, 10)
        self.assertEqual(store.used_bytes, entry_cost("k", large))
        store.put("other", small, 10)
        self.assertEqual(store.used_bytes, entry_cost("k", large) + entry_cost("other", small))
        store.delete("k")
        self.assertEqual(store.used_bytes, entry_cost("other", small))
        store.delete("other")
        self.assertEqual(store.used_bytes, 0)

    def test_expired_entry_is_dropped_and_uncounted_when_read(self) -> None:
        store = self.store()
        store.put("k", sample_entry(), 10)
        self.clock.advance(10)
        self.assertEqual(store.used_bytes, entry_cost("k", sample_entry()))
        self.assertIsNone(self.successResultOf(store.get("k")))
        self.assertEqual(store.used_bytes, 0)

    def test_expired_entry_is_uncounted_when_deleted(self) -> None:
        store = self.store()
        store.put("k", sample_entry(), 10)
        self.clock.advance(10)
        self.assertIs(self.successResultOf(store.delete("k")), False)
        self.assertEqual(store.used_bytes, 0)

    def test_entry_lives_exactly_its_ttl(self) -> None:
        store = self.store()
        store.put("k", sample_entry(), 10)
        self.clock.advance(9.999)
        self.assertIsNotNone(self.successResultOf(store.get("k")))
        self.clock.advance(0.001)
        self.assertIsNone(self.successResultOf(store.get("k")))

    def test_least_recently_used_entry_is_evicted(self) -> None:
        entry = sample_entry(b"x" * 100)
        store = self.store(max_bytes=3 * entry_cost("a", entry))
        for key in "abc":
            store.put(key, entry, 60)
        store.get("a")
        store.put("d", entry, 60)
        present = [key for key in "abcd" if self.successResultOf(store.get(key)) is not None]
        self.assertEqual(present, ["a", "c", "d"])
        self.assertEqual(store.used_bytes, 3 * entry_cost("a", entry))

    def test_overwrite_makes_an_entry_most_recently_used(self) -> None:
        entry = sample_entry(b"x" * 100)
        store = self.store(max_bytes=3 * entry_cost("a", entry))
        for key in "abc":
            store.put(key, entry, 60)
        store.put("a", entry, 60)
        store.put("d", entry, 60)
        self.assertIsNone(self.successResultOf(store.get("b")))
        self.assertIsNotNone(self.successResultOf(store.get("a")))

    def test_a_large_entry_evicts_as_many_as_it_needs(self) -> None:
        small = sample_entry(b"x")
        big = sample_entry(b"x" * 1000)
        store = self.store(max_bytes=entry_cost("b", big) + entry_cost("a", small))
        for key in "acde":
            store.put(key, small, 60)
        store.put("b", big, 60)
        self.assertIsNotNone(self.successResultOf(store.get("e")))
        self.assertIsNotNone(self.successResultOf(store.get("b")))
        for key in "acd":
            self.assertIsNone(self.successResultOf(store.get(key)))
        self.assertLessEqual(store.used_bytes, store.max_bytes)

    def test_entry_of_exactly_max_bytes_is_kept(self) -> None:
        entry = sample_entry(b"x" * 100)
        store = self.store(max_bytes=entry_cost("k", entry))
        store.put("other", sample_entry(b""), 60)
        self.assertIs(self.successResultOf(store.put("k", entry, 60)), True)
        self.assertEqual(self.successResultOf(store.get("k")), entry)
        self.assertIsNone(self.successResultOf(store.get("other")))

    def test_oversize_entry_is_refused_and_drops_the_old_one(self) -> None:
        entry = sample_entry(b"x" * 100)
        store = self.store(max_bytes=entry_cost("k", entry) - 1)
        store.put("k", sample_entry(b""), 60)
        store.put("other", sample_entry(b""), 60)
        waiter = store.wait_for_change("k", 60)
        self.assertIs(self.successResultOf(store.put("k", entry, 60)), False)
        self.assertIsNone(self.successResultOf(store.get("k")))
        self.assertIsNotNone(self.successResultOf(store.get("other")))
        self.assertEqual(store.used_bytes, entry_cost("other", sample_entry(b"")))
        self.assertIsNone(self.successResultOf(waiter))

    def test_nonpositive_ttl_counts_nothing(self) -> None:
        store = self.store()
        store.put("k", sample_entry(), 0)
        self.assertEqual(store.used_bytes, 0)

    # Leases

    def test_lease_lives_exactly_its_ttl(self) -> None:
        store = self.store()
        token = self.successResultOf(store.acquire_lease("k", 10))
        self.clock.advance(9.999)
        self.assertIsNone(self.successResultOf(store.acquire_lease("k", 10)))
        self.assertIs(self.successResultOf(store.put("k", sample_entry(), 60, lease=token)), True)
        self.clock.advance(0.001)
        self.assertIs(self.successResultOf(store.put("k", sample_entry(), 60, lease=token)), False)
        self.assertIsNotNone(self.successResultOf(store.acquire_lease("k", 10)))

    def test_tokens_are_32_hex_digits(self) -> None:
        token = self.successResultOf(self.store().acquire_lease("k", 10))
        assert token is not None
        self.assertRegex(token, r"\A[0-9a-f]{32}\Z")

    def test_expired_leases_nobody_touches_are_forgotten(self) -> None:
        store = self.store()
        for i in range(5000):
            store.acquire_lease(f"k{i}", 1)
        self.clock.advance(1)
        for i in range(5000):
            store.acquire_lease(f"new{i}", 1)
        self.assertLess(len(store._leases), 2 * 5000)

    # Waiting, without timers left behind

    def test_waiter_fires_on_put_and_leaves_no_timer(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", 30)
        store.put("k", sample_entry(), 60)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(store._waiters.keys(), set())

    def test_waiter_fires_on_delete_of_missing_key(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", 30)
        store.delete("k")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waiter_fires_exactly_at_its_timeout_and_leaves_nothing(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", 30)
        self.clock.advance(29.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(store._waiters.keys(), set())

    def test_waiter_with_nonpositive_timeout_fires_on_next_turn(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", -1)
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))

    def test_cancelled_waiter_leaves_nothing(self) -> None:
        store = self.store()
        kept = store.wait_for_change("k", 30)
        cancelled = store.wait_for_change("k", 30)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        kept.cancel()
        self.failureResultOf(kept, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(store._waiters.keys(), set())

    def test_cancel_after_firing_is_harmless(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", 30)
        store.put("k", sample_entry(), 60)
        d.cancel()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(store._waiters.keys(), set())

    def test_failed_fenced_put_wakes_nobody(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", 30)
        store.put("k", sample_entry(), 60, lease="stale")
        self.assertNoResult(d)
        self.clock.advance(30)

    def test_lease_changes_wake_nobody(self) -> None:
        store = self.store()
        d = store.wait_for_change("k", 30)
        token = self.successResultOf(store.acquire_lease("k", 10))
        assert token is not None
        store.release_lease("k", token)
        self.assertNoResult(d)
        self.clock.advance(30)

    def test_waiting_again_from_a_callback_waits_for_the_next_change(self) -> None:
        store = self.store()
        again: list[Deferred[None]] = []
        store.wait_for_change("k", 30).addCallback(
            lambda _: again.append(store.wait_for_change("k", 30))
        )
        store.put("k", sample_entry(), 60)
        self.assertNoResult(again[0])
        store.delete("k")
        self.assertIsNone(self.successResultOf(again[0]))
        self.assertEqual(self.clock.getDelayedCalls(), [])


@pytest.mark.parametrize(
    ("url", "max_bytes"),
    [
        ("memory://", DEFAULT_MAX_BYTES),
        ("memory://?max_bytes=1048576", 1048576),
        ("memory://?max_bytes=1", 1),
        ("MEMORY://", DEFAULT_MAX_BYTES),
    ],
)
def test_memory_store_from_url(url: str, max_bytes: int) -> None:
    clock = Clock()
    store = memory_store_from_url(url, clock)
    assert store.max_bytes == max_bytes
    assert store.clock is clock


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:6379/0", "not a memory store URL"),
        ("memory:", "not a memory store URL"),
        ("memory:?max_bytes=5", "not a memory store URL"),
        ("memory://localhost", "no host, path or fragment"),
        ("memory:///", "no host, path or fragment"),
        ("memory://?max_bytes=5#x", "no host, path or fragment"),
        ("memory://?size=5", "unknown memory store parameter 'size'"),
        ("memory://?max_bytes", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=0", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=-5", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=+5", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=1.5", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=64MiB", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=%205", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=1_000", "max_bytes must be a positive integer"),
        ("memory://?max_bytes=5&max_bytes=6", "repeated memory store parameter"),
        ("memory://?max_bytes=5&", "unknown memory store parameter ''"),
    ],
)
def test_memory_store_from_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        memory_store_from_url(url, Clock())
    assert "\n" not in str(raised.value)
    assert repr(url) in str(raised.value)


def test_expired_entries_stop_counting_at_the_next_write_without_being_read() -> None:
    """Entries past their time are dropped by any later write, not only when read."""
    clock = Clock()
    store = MemoryStore(clock, max_bytes=10_000_000)
    for i in range(100):
        store.put(f"rfd:j:v1:id={i}", an_entry_for_expiry(), ttl=10)
    used = store.used_bytes
    assert used > 0
    clock.advance(11)
    store.put("rfd:j:v1:id=new", an_entry_for_expiry(), ttl=10)
    assert store.used_bytes < used / 50


def test_the_expiry_heap_stays_bounded_under_overwrites() -> None:
    """Overwriting one key many times does not grow the bookkeeping without bound."""
    clock = Clock()
    store = MemoryStore(clock)
    for _ in range(10_000):
        store.put("rfd:j:v1:id=1", an_entry_for_expiry(), ttl=86400)
    assert len(store._expiries) <= 2 * 1 + 1024 + 1


def an_entry_for_expiry() -> Any:
    return sample_entry()
