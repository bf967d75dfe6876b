"""
The behaviour every L{IStore} promises, as a mixin run against each store.

Combine L{StoreContract} with L{twisted.trial.unittest.TestCase} and provide
two hooks:

    - C{make_store(self)}: a fresh store (or a L{Deferred} of one); register any
      cleanup with C{self.addCleanup}.
    - C{advance(self, seconds)}: make C{seconds} of store time pass, returning a
      L{Deferred} or L{None}.  For the memory store it advances a C{task.Clock};
      for a real server it really waits.

Every test works the same way against a real server: keys are unique per test,
times are short and few, and every test is asynchronous.  What the contract
asks of time is loose enough for a store whose TTLs have whole-second
granularity (memcached): an entry or lease of C{ttl} seconds lives at least
C{ttl} and at most C{ttl + 1.5} seconds.

Changes made through the store under test must wake its waiters: a store whose
other processes' changes arrive by notification (Redis pub/sub) or by polling
also wakes its local waiters directly, and must be listening by the time
C{wait_for_change} returns.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from zope.interface.verify import verifyObject

from refresherd.entry import Entry, Fetched, check_json_body, make_etag, value_entry
from refresherd.interfaces import IReadsAtHand, IStore
from refresherd.keys import MAX_KEY_BYTES, entry_key, generation_key

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase as _Base
else:
    _Base = object

LONG_TTL = 300.0
"""For entries and leases that must not expire during a test."""

SHORT_TTL = 1.0
"""For entries and leases that must expire after L{PAST_SHORT_TTL}."""

PAST_SHORT_TTL = 2.5
"""Long enough for a L{SHORT_TTL} to have passed, whole-second stores included."""

NOTICE = 0.5
"""Long enough for a store to deliver a change to a waiter."""


def sample_entry(body: bytes | None = b'{"tweets": []}', **changes: Any) -> Entry:
    """
    An entry with every field set to something other than its default: a JSON
    content type when the body is JSON, else C{application/octet-stream} (a
    shared store's reader takes no other: docs/store-format.md).
    """
    fields: dict[str, Any] = dict(
        body=body,
        content_type=_content_type_of(body),
        fetched_at=1_700_000_000.125,
        fresh_until=1_700_000_060.125,
        stale_until=1_700_000_360.125,
        error_until=1_700_086_400.125,
        duration=0.1 + 0.2,
        job="tweets",
        args={"user": "b\u00f8b \U0001f40d", "q": "a&b=c/d"},
        tags=("user:b\u00f8b", "timeline"),
        etag=make_etag(body, 1_700_000_000.125) if body is not None else "",
        failures=2,
        last_error="origin answered 503 Service Unavailable",
        retry_at=1_700_000_075.5,
        marks=("0123456789abcdef0123456789abcdef", ""),
    )
    fields.update(changes)
    return Entry(**fields)


def _content_type_of(body: bytes | None) -> str:
    if body is not None:
        try:
            check_json_body(body)
        except ValueError:
            return "application/octet-stream"
    return "application/json; charset=utf-8"


def failure_entry() -> Entry:
    """The memory of a failed fetch of an absent value."""
    return sample_entry(
        None,
        failures=1,
        last_error="connection refused",
        stale_until=0.0,
        error_until=0.0,
        retry_at=1_700_000_010.0,
    )


class StoreContract(_Base):
    """
    Tests of the L{IStore} contract; see the module docstring for the hooks.
    """

    at_hand: bool | None = False
    generations_expire: bool = True
    """Whether generation keys expire (memcached's do not: it evicts them when full)."""
    """
    Whether the store has what it just read at hand (L{IReadsAtHand.read_at_hand});
    L{None}: it may or may not (a near cache whose change messages race the read).
    """

    def make_store(self) -> IStore | Deferred[IStore]:
        """A fresh store for one test."""
        raise NotImplementedError

    def advance(self, seconds: float) -> Deferred[None] | None:
        """Let C{seconds} of store time pass."""
        raise NotImplementedError

    async def store(self) -> Any:
        """The store under test (typed C{Any}: C{IStore}'s methods are untyped)."""
        store = await defer.maybeDeferred(self.make_store)
        return store

    async def wait(self, seconds: float) -> None:
        """Let C{seconds} of store time pass, whatever the hook returns."""
        result = self.advance(seconds)
        if result is not None:
            await result

    def key(self, args: Mapping[str, str] | None = None, job: str = "job") -> str:
        """A key of docs/store-format.md's scheme, unique to this test and call."""
        namespace = "rfdtest-" + uuid.uuid4().hex[:12]
        return entry_key(namespace, job, 1, {"id": "1"} if args is None else args)

    def assertFiredWith(self, d: Deferred[Any], result: object) -> None:
        """C{d} has fired with C{result}; if it has not fired, cancel it and fail."""
        if not d.called:
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()
            self.fail(f"{d!r} has not fired")
        self.assertEqual(self.successResultOf(d), result)

    # The store itself

    async def test_store_provides_istore(self) -> None:
        store = await self.store()
        self.assertTrue(verifyObject(IStore, store))
        self.assertIsInstance(store.shared, bool)

    async def test_ping_succeeds(self) -> None:
        store = await self.store()
        await store.ping()

    # get, put, delete

    async def test_get_of_missing_key_is_none(self) -> None:
        store = await self.store()
        self.assertIsNone(await store.get(self.key()))

    async def test_put_then_get_returns_every_field(self) -> None:
        store = await self.store()
        key, entry = self.key(), sample_entry()
        self.assertIs(await store.put(key, entry, LONG_TTL), True)
        self.assertEqual(await store.get(key), entry)

    async def test_put_then_get_keeps_binary_body_byte_exact(self) -> None:
        store = await self.store()
        key = self.key()
        body = b"\n" + bytes(range(256)) + b"\r\n\x00"
        await store.put(key, sample_entry(body, content_type="application/octet-stream"), LONG_TTL)
        got = await store.get(key)
        self.assertEqual(got.body, body)

    async def test_put_then_get_keeps_empty_body_distinct_from_failure(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(b""), LONG_TTL)
        got = await store.get(key)
        self.assertEqual(got.body, b"")
        self.assertFalse(got.is_failure)

    async def test_put_then_get_keeps_failure_entry(self) -> None:
        store = await self.store()
        key, entry = self.key(), failure_entry()
        await store.put(key, entry, LONG_TTL)
        got = await store.get(key)
        self.assertEqual(got, entry)
        self.assertIsNone(got.body)
        self.assertTrue(got.is_failure)

    async def test_put_then_get_keeps_defaults_of_a_new_value(self) -> None:
        store = await self.store()
        key = self.key()
        entry = value_entry(
            Fetched(b"42", "text/plain"),
            job="answer",
            args={},
            tags=(),
            now=1_700_000_000.0,
            duration=1e-06,
            fresh=60,
            stale=0,
            stale_if_error=86_400.5,
        )
        await store.put(key, entry, LONG_TTL)
        self.assertEqual(await store.get(key), entry)

    async def test_put_overwrites(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(b"old"), LONG_TTL)
        self.assertIs(await store.put(key, sample_entry(b"new", failures=0), LONG_TTL), True)
        self.assertEqual(await store.get(key), sample_entry(b"new", failures=0))

    async def test_entries_are_per_key(self) -> None:
        store = await self.store()
        one, two = self.key({"id": "1"}), self.key({"id": "2"})
        await store.put(one, sample_entry(b"one"), LONG_TTL)
        await store.put(two, sample_entry(b"two"), LONG_TTL)
        self.assertEqual((await store.get(one)).body, b"one")
        self.assertEqual((await store.get(two)).body, b"two")

    async def test_delete_of_present_key_is_true_and_removes_it(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertIs(await store.delete(key), True)
        self.assertIsNone(await store.get(key))

    async def test_delete_of_missing_key_is_false(self) -> None:
        store = await self.store()
        key = self.key()
        self.assertIs(await store.delete(key), False)
        await store.put(key, sample_entry(), LONG_TTL)
        await store.delete(key)
        self.assertIs(await store.delete(key), False)

    async def test_put_with_nonpositive_ttl_leaves_key_absent(self) -> None:
        store = await self.store()
        for ttl in (0, -1.5):
            key = self.key()
            await store.put(key, sample_entry(b"old"), LONG_TTL)
            self.assertIs(await store.put(key, sample_entry(b"new"), ttl), True)
            self.assertIsNone(await store.get(key))

    async def test_entry_expires_after_its_ttl(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(), SHORT_TTL)
        self.assertIsNotNone(await store.get(key))
        await self.wait(PAST_SHORT_TTL)
        self.assertIsNone(await store.get(key))
        self.assertIs(await store.delete(key), False)

    async def test_large_value_round_trips_byte_exact(self) -> None:
        store = await self.store()
        key = self.key()
        body = os.urandom(1024 * 1024)
        self.assertIs(await store.put(key, sample_entry(body), LONG_TTL), True)
        got = await store.get(key)
        self.assertEqual(len(got.body), len(body))
        self.assertEqual(hashlib.sha256(got.body).digest(), hashlib.sha256(body).digest())
        self.assertEqual(got, sample_entry(body))

    async def test_large_value_overwritten_by_small_reads_small(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(os.urandom(3 * 1024 * 1024)), LONG_TTL)
        await store.put(key, sample_entry(b"small"), LONG_TTL)
        self.assertEqual(await store.get(key), sample_entry(b"small"))
        self.assertIs(await store.delete(key), True)
        self.assertIsNone(await store.get(key))

    async def test_keys_with_hashed_args_work(self) -> None:
        store = await self.store()
        one = self.key({"q": "x" * 300})
        two = self.key({"q": "x" * 299 + "y"})
        self.assertIn(":#", one)
        self.assertLessEqual(len(one.encode("utf-8")), MAX_KEY_BYTES)
        await store.put(one, sample_entry(b"one"), LONG_TTL)
        await store.put(two, sample_entry(b"two"), LONG_TTL)
        self.assertEqual((await store.get(one)).body, b"one")
        self.assertEqual((await store.get(two)).body, b"two")

    # Leases

    async def test_acquire_lease_returns_a_token_and_writes_no_entry(self) -> None:
        store = await self.store()
        key = self.key()
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIsInstance(token, str)
        self.assertTrue(token)
        self.assertIsNone(await store.get(key))

    async def test_second_acquire_while_held_is_none(self) -> None:
        store = await self.store()
        key = self.key()
        self.assertIsNotNone(await store.acquire_lease(key, LONG_TTL))
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL))

    async def test_released_lease_can_be_acquired_again_with_a_new_token(self) -> None:
        store = await self.store()
        key = self.key()
        first = await store.acquire_lease(key, LONG_TTL)
        await store.release_lease(key, first)
        second = await store.acquire_lease(key, LONG_TTL)
        self.assertIsNotNone(second)
        self.assertNotEqual(second, first)

    async def test_a_lease_taken_with_the_callers_token_is_released_by_it(self) -> None:
        """A caller that names its token can release a lease whose answer it never got."""
        store = await self.store()
        key = self.key()
        self.assertEqual(await store.acquire_lease(key, LONG_TTL, "c0ffee" * 5), "c0ffee" * 5)
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL, "beef" * 8))
        await store.release_lease(key, "beef" * 8)  # a caller that did not get it
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL))
        await store.release_lease(key, "c0ffee" * 5)
        self.assertIsNotNone(await store.acquire_lease(key, LONG_TTL))

    async def test_release_with_wrong_token_keeps_lease(self) -> None:
        store = await self.store()
        key = self.key()
        token = await store.acquire_lease(key, LONG_TTL)
        await store.release_lease(key, token + "0")
        await store.release_lease(key, "not-a-token")
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL))
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL, lease=token), True)

    async def test_leases_are_per_key(self) -> None:
        store = await self.store()
        one, two = self.key({"id": "1"}), self.key({"id": "2"})
        token = await store.acquire_lease(one, LONG_TTL)
        self.assertIsNotNone(await store.acquire_lease(two, LONG_TTL))
        await store.release_lease(two, token)
        self.assertIsNone(await store.acquire_lease(two, LONG_TTL))

    async def test_expired_lease_can_be_taken_over_and_fences_out_its_old_holder(self) -> None:
        store = await self.store()
        key = self.key()
        old = await store.acquire_lease(key, SHORT_TTL)
        await self.wait(PAST_SHORT_TTL)
        new = await store.acquire_lease(key, LONG_TTL)
        self.assertIsNotNone(new)
        self.assertIs(await store.put(key, sample_entry(b"old"), LONG_TTL, lease=old), False)
        await store.release_lease(key, old)
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL))
        self.assertIs(await store.put(key, sample_entry(b"new"), LONG_TTL, lease=new), True)
        self.assertEqual((await store.get(key)).body, b"new")

    # Fenced writes

    async def test_fenced_put_writes_while_lease_is_held_and_keeps_it(self) -> None:
        store = await self.store()
        key = self.key()
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL, lease=token), True)
        self.assertEqual(await store.get(key), sample_entry())
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL))
        self.assertIs(await store.put(key, sample_entry(b"again"), LONG_TTL, lease=token), True)

    async def test_fenced_put_without_any_lease_fails(self) -> None:
        store = await self.store()
        key = self.key()
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL, lease="0" * 32), False)
        self.assertIsNone(await store.get(key))

    async def test_fenced_put_with_lease_of_another_key_fails(self) -> None:
        store = await self.store()
        one, two = self.key({"id": "1"}), self.key({"id": "2"})
        token = await store.acquire_lease(one, LONG_TTL)
        self.assertIs(await store.put(two, sample_entry(), LONG_TTL, lease=token), False)
        self.assertIsNone(await store.get(two))

    async def test_fenced_put_fails_after_release(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(b"before"), LONG_TTL)
        token = await store.acquire_lease(key, LONG_TTL)
        await store.release_lease(key, token)
        self.assertIs(await store.put(key, sample_entry(b"late"), LONG_TTL, lease=token), False)
        self.assertEqual((await store.get(key)).body, b"before")

    async def test_unfenced_put_breaks_lease_so_fenced_put_fails(self) -> None:
        store = await self.store()
        key = self.key()
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIs(await store.put(key, sample_entry(b"put by user"), LONG_TTL), True)
        self.assertIs(await store.put(key, sample_entry(b"fetched"), LONG_TTL, lease=token), False)
        self.assertEqual((await store.get(key)).body, b"put by user")
        self.assertIsNotNone(await store.acquire_lease(key, LONG_TTL))

    async def test_delete_breaks_lease_so_fenced_put_fails(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(b"purged"), LONG_TTL)
        token = await store.acquire_lease(key, LONG_TTL)
        await store.delete(key)
        self.assertIs(await store.put(key, sample_entry(b"fetched"), LONG_TTL, lease=token), False)
        self.assertIsNone(await store.get(key))
        self.assertIsNotNone(await store.acquire_lease(key, LONG_TTL))

    async def test_delete_of_missing_key_breaks_lease(self) -> None:
        store = await self.store()
        key = self.key()
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIs(await store.delete(key), False)
        self.assertIs(await store.put(key, sample_entry(), LONG_TTL, lease=token), False)
        self.assertIsNone(await store.get(key))

    # Waiting for a change

    async def test_wait_for_change_fires_on_put_for_every_waiter(self) -> None:
        store = await self.store()
        key = self.key()
        first = store.wait_for_change(key, LONG_TTL)
        second = store.wait_for_change(key, LONG_TTL)
        await store.put(key, sample_entry(), LONG_TTL)
        await self.wait(NOTICE)
        self.assertFiredWith(first, None)
        self.assertFiredWith(second, None)

    async def test_wait_for_change_fires_on_delete(self) -> None:
        store = await self.store()
        key = self.key()
        await store.put(key, sample_entry(), LONG_TTL)
        d = store.wait_for_change(key, LONG_TTL)
        await store.delete(key)
        await self.wait(NOTICE)
        self.assertFiredWith(d, None)

    async def test_wait_for_change_fires_after_timeout(self) -> None:
        store = await self.store()
        d = store.wait_for_change(self.key(), NOTICE)
        await self.wait(2 * NOTICE)
        self.assertFiredWith(d, None)

    async def test_wait_for_change_is_per_key(self) -> None:
        store = await self.store()
        one, two = self.key({"id": "1"}), self.key({"id": "2"})
        waits_one = store.wait_for_change(one, LONG_TTL)
        waits_two = store.wait_for_change(two, LONG_TTL)
        await store.put(one, sample_entry(), LONG_TTL)
        await self.wait(NOTICE)
        self.assertFiredWith(waits_one, None)
        self.assertNoResult(waits_two)
        waits_two.cancel()
        self.failureResultOf(waits_two, CancelledError)

    async def test_cancelled_wait_for_change_fails_cancelled_and_later_changes_are_fine(
        self,
    ) -> None:
        store = await self.store()
        key = self.key()
        cancelled = store.wait_for_change(key, LONG_TTL)
        kept = store.wait_for_change(key, LONG_TTL)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        await store.put(key, sample_entry(), LONG_TTL)
        await self.wait(NOTICE)
        self.assertFiredWith(kept, None)

    # Generations of jobs and tags

    def generation(self, name: str = "bob", hard: bool = True) -> str:
        """A generation key unique to this test and call."""
        return generation_key("rfdtest-" + uuid.uuid4().hex[:12], "tag", f"user:{name}", hard)

    async def test_generations_never_written_are_left_out(self) -> None:
        store = await self.store()
        self.assertEqual(await store.get_purge_tokens([self.generation(), self.generation()]), {})
        self.assertEqual(await store.get_purge_tokens([]), {})

    async def test_new_generation_replaces_the_token_every_time(self) -> None:
        store = await self.store()
        key, other, never = self.generation(), self.generation("ann"), self.generation("cy")
        first = await store.new_purge_token(key, LONG_TTL)
        await store.new_purge_token(other, LONG_TTL)
        self.assertEqual(await store.get_purge_tokens([key, never]), {key: first})
        second = await store.new_purge_token(key, LONG_TTL)
        self.assertNotEqual(second, first)
        self.assertEqual(await store.get_purge_tokens([never, key]), {key: second})

    async def test_generations_expire_unless_a_marked_entry_renews_them(self) -> None:
        store = await self.store()
        key = self.key(job="tweets")  # sample_entry()'s job, and it carries a mark
        namespace = key.partition(":")[0]
        kept = generation_key(namespace, "job", "tweets", hard=True)
        tag = generation_key(namespace, "tag", "timeline", hard=False)
        lone = self.generation()
        tokens = {g: await store.new_purge_token(g, SHORT_TTL) for g in (kept, tag, lone)}
        await store.put(key, sample_entry(), LONG_TTL)
        await self.wait(PAST_SHORT_TTL)
        expected = tokens if not self.generations_expire else {kept: tokens[kept], tag: tokens[tag]}
        self.assertEqual(await store.get_purge_tokens([kept, tag, lone]), expected)

    async def test_an_unmarked_entry_renews_no_generation(self) -> None:
        store = await self.store()
        key = self.key(job="tweets")
        kept = generation_key(key.partition(":")[0], "job", "tweets", hard=True)
        token = await store.new_purge_token(kept, SHORT_TTL)
        await store.put(key, sample_entry(marks=("", "")), LONG_TTL)
        await self.wait(PAST_SHORT_TTL)
        expected = {} if self.generations_expire else {kept: token}
        self.assertEqual(await store.get_purge_tokens([kept]), expected)

    async def test_many_generations_in_one_call(self) -> None:
        store = await self.store()
        keys = [self.generation(str(i), hard=i % 2 == 0) for i in range(40)]
        tokens = {key: await store.new_purge_token(key, LONG_TTL) for key in keys[::3]}
        self.assertEqual(await store.get_purge_tokens(keys), tokens)

    async def test_read_is_get_and_get_generations_at_once(self) -> None:
        store = await self.store()
        key, big = self.key({"id": "1"}), self.key({"id": "2"})
        purged, never = self.generation(), self.generation("ann")
        token = await store.new_purge_token(purged, LONG_TTL)
        self.assertEqual(await store.read(key, [purged, never]), (None, {purged: token}))
        await store.put(key, sample_entry(), LONG_TTL)
        large = sample_entry(os.urandom(3 * 1024 * 1024))
        await store.put(big, large, LONG_TTL)
        self.assertEqual(await store.read(key, [never, purged]), (sample_entry(), {purged: token}))
        self.assertEqual(await store.read(big, []), (large, {}))

    async def test_what_is_at_hand_is_what_a_read_answers(self) -> None:
        store = await self.store()
        key, purged = self.key({"id": "1"}), self.generation()
        await store.put(key, sample_entry(), LONG_TTL)
        await store.new_purge_token(purged, LONG_TTL)
        read = await store.read(key, [purged])
        at_hand = store.read_at_hand(key, [purged]) if IReadsAtHand.providedBy(store) else None
        self.assertIn(at_hand, (None, read))
        if self.at_hand is not None:
            self.assertEqual(at_hand is not None, self.at_hand)
