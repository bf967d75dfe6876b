"""
The refresher's semantics (docs/README.md, "Semantics") for one process: hit, stale, miss,
pending, single-flight, retries, timeouts, error memory, stale-if-error,
queues, early refresh, fenced writes and shutdown; all on task.Clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred
from zope.interface import implementer

from refresherd import errors
from refresherd.config import JobConfig
from refresherd.core import flights, outage, policy
from refresherd.core.jobs import Job
from refresherd.core.refresher import Answer, Refresher
from refresherd.entry import Entry, Fetched, value_entry
from refresherd.http.fastpath import QueryTargets
from refresherd.interfaces import IStore
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.stores.near import NearCache
from refresherd.testing import FakeFetcher, UnreachableStore
from tests.deferreds import as_deferred, failure, result


def make(
    store: Any = None,
    rand: float = 0.999999,
    clock: task.Clock | None = None,
    random: Callable[[], float] | None = None,
    **policy: Any,
) -> tuple[Refresher, FakeFetcher, task.Clock, Any]:
    """A refresher of job C{j} on C{store} and C{clock} (made, at 1e6 s, when not given)."""
    if clock is None:
        clock = task.Clock()
        clock.advance(1_000_000)
    store = store if store is not None else MemoryStore(clock)
    fetcher = FakeFetcher()
    policy.setdefault("fresh", 60.0)
    config = JobConfig(name="j", fetch="python", args=("id",), callable="x:y", **policy)
    refresher = Refresher(
        store,
        {"j": Job(config, fetcher)},
        clock,
        "rfd",
        metrics_for(["j"]),
        random=random if random is not None else lambda: rand,
    )
    return refresher, fetcher, clock, store


def lookup(refresher: Refresher, id: str = "1") -> Deferred[Answer]:
    return lookup_of(refresher, "j", {"id": id})


def lookup_of(refresher: Refresher, job: str, args: dict[str, Any]) -> Deferred[Answer]:
    """The lookup of C{job} with C{args} as a Deferred, however it answers."""
    return as_deferred(lambda: refresher.lookup(refresher.target(job, args)))


def put_value(refresher: Refresher, body: bytes, content_type: str) -> Deferred[Answer]:
    return Deferred.fromCoroutine(
        refresher.put(refresher.target("j", {"id": "1"}), body, content_type)
    )


def ask(refresher: Refresher, id: str = "1") -> None:
    """A lookup whose answer the test does not look at (an error included)."""
    lookup(refresher, id).addErrback(lambda failure: None)


def body_of(answer: Answer) -> bytes | None:
    """The body of the entry C{answer} serves; it must serve one."""
    assert answer.entry is not None, answer
    return answer.entry.body


def counter(refresher: Refresher, name: str, **labels: str) -> float:
    value = refresher.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_miss_waits_for_the_fetch_then_hits_without_fetching() -> None:
    refresher, fetcher, clock, _ = make()
    d = lookup(refresher)
    assert not d.called
    assert fetcher.calls[0].args == {"id": "1"}
    fetcher.succeed(body=b'{"a": 1}')
    answer = result(d)
    assert (answer.status, body_of(answer), answer.key) == ("miss", b'{"a": 1}', "rfd:j:v1:id=1")
    clock.advance(30)
    assert result(lookup(refresher)).status == "hit"
    assert len(fetcher.calls) == 1


def test_concurrent_misses_share_one_fetch() -> None:
    refresher, fetcher, _, _ = make()
    waiting = [lookup(refresher) for _ in range(200)]
    assert len(fetcher.calls) == 1
    fetcher.succeed()
    assert {result(d).status for d in waiting} == {"miss"}
    assert counter(refresher, "refresherd_coalesced_total", job="j") == 199


def test_stale_value_is_served_at_once_and_refreshed_once() -> None:
    refresher, fetcher, clock, _ = make(stale=100.0)
    ask(refresher)
    fetcher.succeed(body=b"1")
    clock.advance(61)
    answers = [result(lookup(refresher)) for _ in range(50)]
    assert {a.status for a in answers} == {"stale"}
    assert {body_of(a) for a in answers} == {b"1"}
    assert len(fetcher.calls) == 2
    fetcher.succeed(body=b"2")
    fresh = result(lookup(refresher))
    assert (fresh.status, body_of(fresh)) == ("hit", b"2")


def test_past_every_window_is_a_miss() -> None:
    refresher, fetcher, clock, _ = make(stale=10.0)
    ask(refresher)
    fetcher.succeed(body=b"1")
    clock.advance(71)
    d = lookup(refresher)
    assert not d.called
    fetcher.succeed(body=b"2")
    assert result(d).status == "miss"


def test_wait_timeout_answers_504_and_the_fetch_goes_on() -> None:
    refresher, fetcher, clock, _ = make(wait_timeout=5.0, timeout=30.0)
    d = lookup(refresher)
    clock.advance(5)
    assert isinstance(failure(d), errors.WaitTimeout)
    assert not fetcher.calls[0].cancelled
    fetcher.succeed(body=b"late")
    assert result(lookup(refresher)).status == "hit"


def test_a_caller_cancelling_does_not_cancel_the_fetch_for_others() -> None:
    refresher, fetcher, _, _ = make()
    first, second = lookup(refresher), lookup(refresher)
    first.cancel()
    assert isinstance(failure(first), CancelledError)
    assert not fetcher.calls[0].cancelled
    fetcher.succeed()
    assert result(second).status == "miss"


def test_failed_miss_is_502_and_remembered_for_error_ttl() -> None:
    refresher, fetcher, clock, _ = make(error_ttl=5.0)
    d = lookup(refresher)
    fetcher.fail(reason="origin answered 500")
    error = failure(d)
    assert isinstance(error, errors.FetchFailed)
    assert "origin answered 500" in error.message
    again = failure(lookup(refresher))
    assert isinstance(again, errors.FetchFailed)
    assert len(fetcher.calls) == 1
    clock.advance(5)
    ask(refresher)
    assert len(fetcher.calls) == 2


def test_error_ttl_zero_remembers_nothing() -> None:
    refresher, fetcher, _, _ = make(error_ttl=0.0)
    ask(refresher)
    fetcher.fail()
    ask(refresher)
    assert len(fetcher.calls) == 2


def test_retries_back_off_exponentially_then_succeed() -> None:
    refresher, fetcher, clock, _ = make(retries=2, wait_timeout=60.0)
    d = lookup(refresher)
    fetcher.fail()
    assert len(fetcher.calls) == 1
    clock.advance(0.249)
    assert len(fetcher.calls) == 1
    clock.advance(0.251)  # first pause: within [0.25, 0.5]; rand ~1 makes it 0.5
    assert len(fetcher.calls) == 2
    fetcher.fail()
    clock.advance(0.99)
    assert len(fetcher.calls) == 2
    clock.advance(0.01)  # second pause: 1.0
    assert len(fetcher.calls) == 3
    fetcher.succeed()
    assert result(d).status == "miss"
    assert counter(refresher, "refresherd_fetches_total", job="j", outcome="error") == 2
    assert counter(refresher, "refresherd_fetches_total", job="j", outcome="success") == 1


def test_an_attempt_past_timeout_is_cancelled_and_counted() -> None:
    refresher, fetcher, clock, _ = make(timeout=2.0, wait_timeout=10.0)
    d = lookup(refresher)
    clock.advance(2)
    assert fetcher.calls[0].cancelled
    error = failure(d)
    assert isinstance(error, errors.FetchFailed)
    assert "longer than 2s" in error.message
    assert counter(refresher, "refresherd_fetches_total", job="j", outcome="timeout") == 1


def test_stale_if_error_serves_the_old_value_with_the_error() -> None:
    refresher, fetcher, clock, _ = make(stale=0.0, stale_if_error=3600.0, error_ttl=5.0)
    ask(refresher)
    fetcher.succeed(body=b"old")
    clock.advance(61)
    # Past stale, within stale_if_error, no failure yet: treated as absent.
    d = lookup(refresher)
    assert not d.called
    fetcher.fail(reason="origin answered 503")
    answer = result(d)
    assert (answer.status, body_of(answer)) == ("stale", b"old")
    assert answer.error is not None and "503" in answer.error
    # Now refreshes are failing: stale at once, no new fetch until the backoff ends.
    again = result(lookup(refresher))
    assert (again.status, again.error) == ("stale", "origin answered 503")
    assert len(fetcher.calls) == 2
    clock.advance(10)
    ask(refresher)
    assert len(fetcher.calls) == 3
    fetcher.succeed(body=b"new")
    fresh = result(lookup(refresher))
    assert (fresh.status, body_of(fresh), fresh.error) == ("hit", b"new", None)


def test_stale_if_error_fallback_on_wait_timeout() -> None:
    refresher, fetcher, clock, _ = make(stale_if_error=3600.0, wait_timeout=1.0, timeout=30.0)
    ask(refresher)
    fetcher.succeed(body=b"old")
    clock.advance(61)
    d = lookup(refresher)
    clock.advance(1)
    answer = result(d)
    assert (answer.status, body_of(answer)) == ("stale", b"old")
    assert answer.error is not None and "wait_timeout" in answer.error


def test_on_miss_empty_answers_pending_and_fetches_in_background() -> None:
    refresher, fetcher, _, _ = make(on_miss="empty")
    assert result(lookup(refresher)).status == "pending"
    assert result(lookup(refresher)).status == "pending"
    assert len(fetcher.calls) == 1
    fetcher.succeed()
    assert result(lookup(refresher)).status == "hit"


def test_queue_beyond_max_queue_is_overloaded() -> None:
    refresher, fetcher, _, _ = make(concurrency=1, max_queue=1)
    running, queued, refused = (
        lookup(refresher, "1"),
        lookup(refresher, "2"),
        lookup(refresher, "3"),
    )
    assert isinstance(failure(refused), errors.Overloaded)
    assert len(fetcher.calls) == 1
    assert counter(refresher, "refresherd_queue_depth", job="j") == 1
    fetcher.succeed()
    assert result(running).status == "miss"
    assert len(fetcher.calls) == 2
    fetcher.succeed()
    assert result(queued).status == "miss"
    assert counter(refresher, "refresherd_queue_depth", job="j") == 0


def test_early_refresh_keeps_a_hot_value_fresh() -> None:
    refresher, fetcher, clock, _ = make(rand=0.5, early_refresh=1.0)
    ask(refresher)
    clock.advance(2)  # the fetch took 2 s: delta = 2
    fetcher.succeed()
    clock.advance(50)  # 10 s to expiry: -2 * ln(0.5) = 1.39 < 10, no early refresh
    assert result(lookup(refresher)).status == "hit"
    assert len(fetcher.calls) == 1
    clock.advance(9)  # 1 s to expiry: 1.39 >= 1, refresh early
    assert result(lookup(refresher)).status == "hit"
    assert len(fetcher.calls) == 2
    assert counter(refresher, "refresherd_early_refreshes_total", job="j") == 1


def test_early_refresh_off_with_beta_zero() -> None:
    refresher, fetcher, clock, _ = make(rand=1e-9, early_refresh=0.0)
    ask(refresher)
    clock.advance(2)
    fetcher.succeed()
    clock.advance(57)
    result(lookup(refresher))
    assert len(fetcher.calls) == 1


def test_a_put_during_a_fetch_is_not_overwritten_by_it() -> None:
    refresher, fetcher, _, _ = make()
    d = lookup(refresher)
    put = put_value(refresher, b"put", "text/plain")
    assert result(put).status == "hit"
    fetcher.succeed(body=b"fetched")
    assert body_of(result(d)) == b"put"
    assert body_of(result(lookup(refresher))) == b"put"


def test_put_refuses_too_large_and_bad_json() -> None:
    refresher, _, _, _ = make(max_value_bytes=4)
    too_large = put_value(refresher, b"12345", "text/plain")
    assert isinstance(failure(too_large), errors.BodyTooLarge)
    bad = put_value(refresher, b"{x", "application/json")
    assert isinstance(failure(bad), errors.BadJson)


def test_a_fetch_running_elsewhere_is_joined_through_the_store() -> None:
    refresher, fetcher, clock, store = make()
    token = result(store.acquire_lease("rfd:j:v1:id=1", 60))
    assert token is not None
    d = lookup(refresher)
    assert fetcher.calls == []
    assert not d.called
    entry = Entry(
        b"from elsewhere",
        "text/plain",
        clock.seconds(),
        clock.seconds() + 60,
        clock.seconds() + 60,
        clock.seconds() + 60,
        1.0,
        "j",
        {"id": "1"},
    )
    store.put("rfd:j:v1:id=1", entry, 60, lease=token)
    answer = result(d)
    assert (answer.status, body_of(answer)) == ("miss", b"from elsewhere")
    assert counter(refresher, "refresherd_coalesced_total", job="j") == 1


def test_unexpected_fetcher_exception_fails_the_fetch_and_frees_the_key(
    no_logged_errors: list[dict[str, Any]],
) -> None:
    refresher, _, _, _ = make(error_ttl=0.0)

    class Broken(FakeFetcher):
        def fetch(self, args: Any, validators: Any = None) -> Deferred[Any]:
            raise RuntimeError("boom\nsecond line")

    refresher.jobs["j"].fetcher = Broken()
    error = failure(lookup(refresher))
    assert isinstance(error, errors.FetchFailed)
    assert error.message == errors.UNSHOWN_REASON  # the job's own words stay in the log
    assert refresher.flights.running == {}
    assert [e["log_failure"].value.args for e in no_logged_errors] == [("boom\nsecond line",)]
    no_logged_errors.clear()


def test_unreachable_store_fetches_locally_and_does_not_store() -> None:
    clock = task.Clock()
    refresher, fetcher, clock, store = make(store=UnreachableStore(MemoryStore(clock)))
    first, second = lookup(refresher), lookup(refresher)
    assert len(fetcher.calls) == 1
    fetcher.succeed()
    answer = result(first)
    assert (answer.status, answer.stored) == ("miss", False)
    assert result(second).status == "miss"
    assert counter(refresher, "refresherd_store_errors_total", operation="get") == 2


def test_unreachable_store_refuses_on_miss_empty_and_put() -> None:
    refresher, fetcher, _, _ = make(
        store=UnreachableStore(MemoryStore(task.Clock())), on_miss="empty"
    )
    assert isinstance(failure(lookup(refresher)), errors.StoreUnavailable)
    assert fetcher.calls == []  # no fetch for nobody
    put = put_value(refresher, b"x", "text/plain")
    assert isinstance(failure(put), errors.StoreUnavailable)


def test_unknown_job_and_bad_args() -> None:
    refresher, _, _, _ = make()
    assert isinstance(failure(lookup_of(refresher, "nope", {})), errors.UnknownJob)
    assert isinstance(failure(lookup_of(refresher, "j", {})), errors.BadArgs)


def test_stop_waits_for_fetches_in_flight_and_answers_their_callers() -> None:
    refresher, fetcher, clock, _ = make(timeout=60.0, wait_timeout=60.0)
    refresher.startService()
    d = lookup(refresher)
    stopped = refresher.stopService()
    assert not stopped.called
    fetcher.succeed()
    assert stopped.called
    assert result(d).status == "miss"


def test_stop_cancels_fetches_after_the_drain_timeout() -> None:
    refresher, fetcher, clock, _ = make(timeout=60.0, wait_timeout=60.0)
    refresher.startService()
    d = lookup(refresher)
    stopped = refresher.stopService()
    clock.advance(refresher.drain_timeout)
    assert stopped.called
    assert fetcher.calls[0].cancelled
    assert isinstance(failure(d), errors.Overloaded)
    assert refresher.flights.running == {}
    assert clock.getDelayedCalls() == []


def test_stop_waits_for_fetches_that_start_during_the_drain_and_then_starts_none() -> None:
    """Requests on kept-alive connections after the stop began are fetched and answered."""
    refresher, fetcher, clock, store = make(timeout=60.0, wait_timeout=60.0)
    refresher.startService()
    first = lookup(refresher, "1")
    stopped = refresher.stopService()
    clock.advance(1)
    second = lookup(refresher, "2")
    assert len(fetcher.calls) == 2
    fetcher.succeed(0)
    assert result(first).status == "miss"
    assert not stopped.called  # the second fetch is still running
    fetcher.succeed(1)
    assert result(second).status == "miss"
    assert stopped.called
    late = lookup(refresher, "3")
    assert isinstance(failure(late), errors.Overloaded)
    assert len(fetcher.calls) == 2  # no fetch starts once the drain is over


class SlowLeases:
    """The memory store, but each lease SET is answered only when the test says."""

    shared = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.pending: list[tuple[str, float, str | None, Deferred[str | None]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        d: Deferred[str | None] = Deferred()
        self.pending.append((key, ttl, token, d))
        return d

    def answer(self) -> None:
        key, ttl, token, d = self.pending.pop(0)
        d.callback(result(self.store.acquire_lease(key, ttl, token)))


def test_a_stop_during_a_lease_set_releases_the_lease_it_was_given() -> None:
    """The drain's time runs out while the lease SET is on its way: the lease is not left."""
    clock = task.Clock()
    clock.advance(1_000_000)
    store = SlowLeases(MemoryStore(clock))
    refresher, fetcher, _, _ = make(store=store, clock=clock, timeout=60.0, wait_timeout=60.0)
    refresher.startService()
    d = lookup(refresher)
    stopped = refresher.stopService()
    clock.advance(refresher.drain_timeout)
    assert not stopped.called  # the SET is still on its way: it is not cut
    store.answer()
    assert stopped.called
    assert fetcher.calls == []  # aborted: no fetch starts
    assert isinstance(failure(d), errors.Overloaded)
    assert result(store.store.acquire_lease("rfd:j:v1:id=1", 10)) is not None  # released


def test_a_stop_gives_up_on_a_lease_set_that_never_answers() -> None:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = SlowLeases(MemoryStore(clock))
    refresher, _, _, _ = make(store=store, clock=clock, timeout=60.0, wait_timeout=60.0)
    refresher.startService()
    lookup(refresher).addErrback(lambda f: None)
    stopped = refresher.stopService()
    clock.advance(refresher.drain_timeout)
    clock.advance(flights.ABORT_TIMEOUT)
    assert stopped.called


def test_a_waiter_takes_the_lease_over_when_its_holder_dies() -> None:
    """The holder died with the lease (it expires, nothing written): the waiter fetches."""
    refresher, fetcher, clock, store = make(timeout=5.0, retries=0, wait_timeout=60.0)
    key = "rfd:j:v1:id=1"
    ttl = policy.lease_ttl(5.0, 0)
    assert result(store.acquire_lease(key, ttl)) is not None  # the holder's, never released
    d = lookup(refresher)
    clock.pump([0.05] * int((ttl - 0.1) / 0.05))
    assert fetcher.calls == []  # the holder may still write
    clock.pump([0.05] * int((policy.POLL_INTERVAL + 0.1) / 0.05))
    assert len(fetcher.calls) == 1  # within a lease lifetime and a poll
    fetcher.succeed(body=b'"mine"')
    assert body_of(result(d)) == b'"mine"'
    assert result(lookup(refresher)).status == "hit"
    assert result(store.acquire_lease(key, 10)) is not None  # released


def test_a_waiter_takes_the_lease_over_when_its_holder_gives_up_without_writing() -> None:
    refresher, fetcher, clock, store = make(wait_timeout=60.0)
    key = "rfd:j:v1:id=1"
    token = result(store.acquire_lease(key, 60))
    d = lookup(refresher)
    clock.advance(1)
    store.release_lease(key, token)
    clock.pump([0.05] * int(policy.POLL_INTERVAL / 0.05 + 1))
    assert len(fetcher.calls) == 1
    fetcher.succeed(body=b'"mine"')
    assert body_of(result(d)) == b'"mine"'


def test_a_lease_that_never_comes_free_ends_the_wait_after_two_lifetimes() -> None:
    clock = task.Clock()
    clock.advance(1_000_000)

    class Held(SlowLeases):
        def acquire_lease(
            self, key: str, ttl: float, token: str | None = None
        ) -> Deferred[str | None]:
            from twisted.internet import defer

            return defer.succeed(None)

    refresher, fetcher, _, _ = make(
        store=Held(MemoryStore(clock)), clock=clock, timeout=5.0, retries=0, wait_timeout=600.0
    )
    d = lookup(refresher)
    ttl = policy.lease_ttl(5.0, 0)
    clock.pump([0.5] * int(2 * ttl / 0.5 - 1))
    assert not d.called
    clock.pump([0.5] * 2)
    error = failure(d)
    assert isinstance(error, errors.WaitTimeout)
    assert "another process" in error.message
    assert fetcher.calls == []


HOST = "origin.internal"


@pytest.mark.parametrize(
    ("reason", "told"),
    [
        ("origin answered 500", "origin answered 500"),
        ("the fetch took longer than 2.5s", "the fetch took longer than 2.5s"),
        ("body larger than 1048576 bytes", "body larger than 1048576 bytes"),
        (
            f"connection refused: 111: Connection refused ({HOST}:8080)",
            "the origin refused the connection",
        ),
        (f"connection timed out: {HOST}:8080", "the connection to the origin timed out"),
        (f"DNS lookup failed: {HOST}", errors.UNSHOWN_REASON),
        (f"request failed: TLS handshake with {HOST} failed", errors.UNSHOWN_REASON),
        (
            "body is not valid JSON: Expecting value: line 1 column 1",
            "the origin's body is not valid JSON",
        ),
        (f"KeyError: 'password for {HOST}'", errors.UNSHOWN_REASON),
        (
            "origin sent a Content-Type refresherd cannot store: it holds a control character",
            "the origin sent a Content-Type refresherd cannot store",
        ),
        ("origin answered 500 from " + HOST, errors.UNSHOWN_REASON),
    ],
)
def test_callers_are_told_a_failures_kind_and_the_admin_api_its_reason(
    reason: str, told: str
) -> None:
    """Host names and a job's own exception text reach the log and the admin API only."""
    refresher_, fetcher, clock, _ = make(stale=3600.0, error_ttl=30.0)
    d = lookup(refresher_, "1")
    fetcher.fail(reason=reason)
    for error in (failure(d), failure(lookup(refresher_, "1"))):  # waiting, then remembered
        assert isinstance(error, errors.FetchFailed)
        assert error.message == told
    stored, _ = result(Deferred.fromCoroutine(refresher_.inspect("rfd:j:v1:id=1")))
    assert stored.last_error == reason  # GET /v1/entries/{key} shows it whole
    ask(refresher_, "2")
    fetcher.succeed(body=b"v")
    clock.advance(400)
    ask(refresher_, "2")
    fetcher.fail(reason=reason)
    answer = result(lookup(refresher_, "2"))
    assert (answer.status, answer.error) == ("stale", told)  # the error of a stale answer


@pytest.mark.parametrize("failures", [1, 3])
def test_background_refresh_failure_keeps_serving_stale(failures: int) -> None:
    refresher, fetcher, clock, _ = make(stale=3600.0, error_ttl=1.0)
    ask(refresher)
    fetcher.succeed(body=b"v")
    for _ in range(failures):
        clock.advance(400)
        answer = result(lookup(refresher))
        assert answer.status == "stale"
        fetcher.fail(reason="origin answered 503")
    answer = result(lookup(refresher))
    assert (answer.status, body_of(answer), answer.error) == ("stale", b"v", "origin answered 503")


def test_a_failed_fetch_is_logged_once_with_its_detail() -> None:
    """One warning per failed fetch, after its last attempt, with the job's traceback."""
    from twisted.internet.testing import EventLoggingObserver
    from twisted.logger import LogLevel, globalLogPublisher

    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        refresher, fetcher, clock, _ = make(retries=1, error_ttl=0.0, wait_timeout=60.0)
        ask(refresher)
        fetcher.calls[0].result.errback(errors.FetchError("first", detail="Traceback one"))
        clock.advance(1)
        fetcher.calls[1].result.errback(errors.FetchError("second", detail="Traceback two"))
    finally:
        globalLogPublisher.removeObserver(events)
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert [(e["job"], e["reason"]) for e in warnings] == [("j", "second")]
    assert "Traceback two" in warnings[0]["detail"]


def test_a_lost_change_notice_costs_at_most_one_poll() -> None:
    """Waiting on a fetch elsewhere re-reads the store every POLL_INTERVAL."""
    clock = task.Clock()
    inner = MemoryStore(clock)

    class Deaf:
        """The memory store, but change notices never arrive."""

        shared = True

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def wait_for_change(self, key: str, timeout: float) -> Deferred[None]:
            return task.deferLater(clock, timeout)

    refresher, fetcher, _, _ = make(store=Deaf(), clock=clock, wait_timeout=30.0)
    key = "rfd:j:v1:id=1"
    token = result(inner.acquire_lease(key, 60))
    d = lookup(refresher)
    now = clock.seconds()
    entry = Entry(
        b"elsewhere", "text/plain", now, now + 60, now + 60, now + 60, 1.0, "j", {"id": "1"}
    )
    inner.put(key, entry, 60, lease=token)
    assert not d.called
    clock.advance(policy.POLL_INTERVAL)
    assert body_of(result(d)) == b"elsewhere"
    assert fetcher.calls == []


def test_a_store_lost_while_waiting_on_a_fetch_elsewhere_fetches_here_unstored() -> None:
    """
    The store stops answering while a request waits on a fetch in another
    process (a Redis failover): the request fetches here, once for all its
    waiters, without storing, rather than failing with store_unavailable.
    """
    clock = task.Clock()
    inner = MemoryStore(clock)

    class Failing:
        shared = True
        down = False

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def get(self, key: str) -> Deferred[Any]:
            if self.down:
                return defer.fail(errors.StoreUnavailable("Redis at x is not connected"))
            return inner.get(key)

    store = Failing()
    refresher, fetcher, _, _ = make(store=store, clock=clock, wait_timeout=30.0)
    assert result(inner.acquire_lease("rfd:j:v1:id=1", 60)) is not None
    first, second = lookup(refresher), lookup(refresher)
    assert fetcher.calls == []
    store.down = True
    clock.advance(policy.POLL_INTERVAL)
    assert len(fetcher.calls) == 1
    fetcher.succeed(body=b'"here"')
    for d in (first, second):
        answer = result(d)
        assert (answer.status, body_of(answer), answer.stored) == ("miss", b'"here"', False)
    assert counter(refresher, "refresherd_store_errors_total", operation="get") == 1


def test_a_holder_paused_past_its_lease_cannot_overwrite_a_newer_value() -> None:
    """
    Process A's fetch outlives its lease (A was paused: its own timers did not
    run); process B takes the lease over and stores a newer value; A's late
    answer is fenced out and A answers with B's value.
    """
    store_clock = task.Clock()
    store = MemoryStore(store_clock)
    a, fetcher_a, clock_a, _ = make(store=store, retries=0, timeout=5.0, wait_timeout=60.0)
    b, fetcher_b, clock_b, _ = make(store=store, retries=0, timeout=5.0, wait_timeout=60.0)
    store_clock.advance(clock_a.seconds())  # all three clocks agree to begin with
    answer_a = lookup(a)
    assert len(fetcher_a.calls) == 1
    store_clock.advance(policy.lease_ttl(5.0, 0) + 1)  # A's lease expires; A is paused
    clock_b.advance(policy.lease_ttl(5.0, 0) + 1)
    answer_b = lookup(b)
    assert len(fetcher_b.calls) == 1
    fetcher_b.succeed(body=b'"newer"')
    assert body_of(result(answer_b)) == b'"newer"'
    fetcher_a.succeed(body=b'"older"')  # A wakes up with its old answer
    assert body_of(result(answer_a)) == b'"newer"'
    assert body_of(result(lookup(b))) == b'"newer"'


class LeaseRefused:
    """A store that reads and writes but refuses leases, as Redis does when out of memory."""

    shared = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        from twisted.internet import defer

        return defer.fail(errors.StoreUnavailable("OOM command not allowed"))

    def put(self, *args: Any, **kwargs: Any) -> Deferred[bool]:
        self.puts += 1
        return self.store.put(*args, **kwargs)


def test_a_refused_lease_serves_stale_and_fetches_once_locally() -> None:
    """Out of memory: stale values are still served, and a miss is one local fetch, unstored."""
    clock = task.Clock()
    store = LeaseRefused(MemoryStore(clock))
    refresher, fetcher, _, _ = make(store=store, clock=clock, stale=600.0)
    clock.advance(1_000_000)
    now = clock.seconds()
    old = Entry(
        b'"old"',
        "application/json",
        now - 100,
        now - 40,
        now + 560,
        now - 40,
        1.0,
        "j",
        {"id": "1"},
    )
    store.store.put("rfd:j:v1:id=1", old, 600)
    answers = [lookup(refresher) for _ in range(20)]
    assert {result(a).status for a in answers} == {"stale"}
    assert len(fetcher.calls) == 1  # one local refresh for all of them
    misses = [lookup(refresher, "2") for _ in range(20)]
    assert len(fetcher.calls) == 2
    fetcher.succeed(body=b'"new"')
    missed = [result(m) for m in misses]
    assert {(a.status, a.stored) for a in missed} == {("miss", False)}
    assert store.puts == 0
    assert counter(refresher, "refresherd_store_errors_total", operation="lease") == 2
    fetcher.succeed(0)


class LeaseAnswerLost:
    """
    A store that takes a lease but loses its answer (a connection cut or
    timed out after the command went out), then answers nothing more until
    the test says so: as Redis or memcached behind a broken network.
    """

    shared = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.down = False
        self.taken: list[str | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        from twisted.internet import defer

        self.taken.append(result(self.store.acquire_lease(key, ttl, token)))
        self.down = True
        return defer.fail(errors.StoreUnavailable("connection lost"))

    def release_lease(self, key: str, token: str) -> Deferred[None]:
        from twisted.internet import defer

        if self.down:
            return defer.fail(errors.StoreUnavailable("not connected"))
        return self.store.release_lease(key, token)


def test_a_lease_taken_whose_answer_was_lost_is_released_once_the_store_answers() -> None:
    """
    Fetched here unstored, and the lease the store took without saying so is
    released within RELEASE_RETRY of the store answering again: the next
    flight, here or elsewhere, gets it rather than waiting out its lifetime.
    """
    clock = task.Clock()
    clock.advance(1_000_000)
    store = LeaseAnswerLost(MemoryStore(clock))
    refresher, fetcher, _, _ = make(store=store, clock=clock, timeout=5.0, retries=0)
    key = "rfd:j:v1:id=1"
    d = lookup(refresher)
    assert store.taken != [None] and len(store.taken) == 1  # taken, and the answer lost
    fetcher.succeed(body=b'"here"')
    answer = result(d)
    assert (answer.status, answer.stored, body_of(answer)) == ("miss", False, b'"here"')
    assert counter(refresher, "refresherd_store_errors_total", operation="lease") >= 1
    clock.advance(2.0)
    assert result(store.store.acquire_lease(key, 10)) is None  # still held: the store is down
    store.down = False
    clock.advance(flights.RELEASE_RETRY)
    assert result(store.store.acquire_lease(key, 10)) is not None  # released by its token


def test_polling_a_fetch_elsewhere_backs_off_from_poll_first_to_poll_interval() -> None:
    """Re-reads come after 0.05, 0.1, 0.2, 0.4, 0.5, 0.5... seconds."""
    clock = task.Clock()
    inner = MemoryStore(clock)
    reads: list[float] = []

    class Counting:
        shared = True

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def get(self, key: str) -> Deferred[Entry | None]:
            reads.append(clock.seconds())
            return inner.get(key)

    refresher, fetcher, _, _ = make(store=Counting(), clock=clock, wait_timeout=30.0)
    inner.acquire_lease("rfd:j:v1:id=1", 60)
    d = lookup(refresher)
    reads.clear()
    start = clock.seconds()
    clock.pump([0.01] * 350)
    gaps = [b - a for a, b in zip([start, *reads], reads, strict=False)]
    assert gaps[:6] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5], abs=0.011)
    d.cancel()
    d.addErrback(lambda f: None)


def test_a_value_landed_between_the_read_and_the_lease_is_used_without_a_fetch() -> None:
    """Another process fetched, wrote and released while this one decided: no second fetch."""
    refresher, fetcher, clock, store = make()

    @implementer(IStore)
    class LandsFirst:
        def __init__(self, inner: IStore) -> None:
            self.inner = inner

        def acquire_lease(
            self, key: str, ttl: float, token: str | None = None
        ) -> Deferred[str | None]:
            other = value_entry(
                Fetched(b'"elsewhere"', "application/json"),
                job="j",
                args={"id": "1"},
                tags=(),
                now=clock.seconds(),
                duration=0.1,
                fresh=60.0,
                stale=0.0,
                stale_if_error=0.0,
            )
            self.inner.put(key, other, 120.0)
            return self.inner.acquire_lease(key, ttl, token)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    refresher = attrs.evolve(refresher, store=LandsFirst(store))
    answer = result(lookup(refresher))
    assert (answer.status, body_of(answer)) == ("miss", b'"elsewhere"')
    assert fetcher.calls == []
    assert counter(refresher, "refresherd_coalesced_total", job="j") == 1
    assert result(store.acquire_lease("rfd:j:v1:id=1", 10)) is not None  # released


def test_behind_a_near_cache_a_stale_key_refreshing_here_costs_the_store_no_reads() -> None:
    """Only a decision to start a flight re-reads the store; joining one does not."""
    clock = task.Clock()
    clock.advance(1_000_000)

    class CountingReads(MemoryStore):
        reads = 0

        def read(self, key: str, generation_keys: Any, cached: bool = True) -> Any:
            CountingReads.reads += 1
            return super().read(key, generation_keys)

    store = NearCache(CountingReads(clock), clock, ttl=1.0)
    refresher, fetcher, _, _ = make(store=store, clock=clock, stale=600.0)
    store.clock = clock
    ask(refresher)
    fetcher.succeed(body=b"1")
    clock.advance(61)
    before = CountingReads.reads
    answers = [result(lookup(refresher)) for _ in range(50)]
    assert {a.status for a in answers} == {"stale"}
    assert len(fetcher.calls) == 2
    assert CountingReads.reads - before <= 2  # one read, one re-read to act on; then none


def test_a_target_is_remembered_and_refusals_are_not() -> None:
    refresher, _, _, _ = make()
    first = refresher.target("j", {"id": "1"})
    assert refresher.target("j", {"id": "1"}) is first
    assert (first.key, first.args, first.job.name) == ("rfd:j:v1:id=1", {"id": "1"}, "j")
    assert first.generation_keys.all == ("rfd:gen:hard:job:j", "rfd:gen:soft:job:j")
    for bad in ({"id": ["1"]}, {"id": 1}, {"id": "1", "x": "2"}, {}):
        with pytest.raises(errors.BadArgs):
            refresher.target("j", bad)
        with pytest.raises(errors.BadArgs):  # Still refused: a refusal is never remembered.
            refresher.target("j", bad)
    with pytest.raises(errors.UnknownJob):
        refresher.target("nope", {"id": "1"})


def test_remembered_targets_are_bounded() -> None:
    from refresherd.core.jobs import TARGETS_KEPT

    refresher, _, _, _ = make()
    first = refresher.target("j", {"id": "0"})
    for n in range(1, TARGETS_KEPT + 1):
        refresher.target("j", {"id": str(n)})
    again = refresher.target("j", {"id": "0"})
    assert again is not first and again == first


def test_a_query_string_names_the_target_its_arguments_name() -> None:
    refresher, _, _, _ = make()
    targets = QueryTargets(refresher)
    by_query = targets.target("j", b"id=a%20b")
    assert by_query == refresher.target("j", {"id": "a b"})
    assert targets.target("j", b"id=a+b") is targets.target("j", b"id=a+b")  # remembered
    for bad in (b"id=1&id=2", b"id=%ff", b"", b"id=1&x=2"):
        for _ in range(2):  # refused every time, never remembered
            with pytest.raises(errors.BadArgs):
                targets.target("j", bad)
    with pytest.raises(errors.UnknownJob):
        targets.target("nope", b"id=1")


def test_remembered_query_strings_are_bounded() -> None:
    from refresherd.http.fastpath import TARGETS_KEPT

    refresher, _, _, _ = make()
    targets = QueryTargets(refresher)
    first = targets.target("j", b"id=0")
    for n in range(1, TARGETS_KEPT + 1):
        targets.target("j", b"id=%d" % n)
    assert targets.target("j", b"id=0") is not first


def test_a_lookup_answers_a_hit_at_hand_at_once_and_anything_else_later() -> None:
    refresher, fetcher, clock, _ = make(stale=100.0)
    target = refresher.target("j", {"id": "1"})
    absent = refresher.lookup(target)
    assert isinstance(absent, Deferred) and not absent.called  # a miss waits for its fetch
    fetcher.succeed(body=b"1")
    assert result(absent).status == "miss"
    hit = refresher.lookup(target)
    assert isinstance(hit, Answer) and (hit.status, body_of(hit)) == ("hit", b"1")
    clock.advance(61)
    stale = refresher.lookup(
        refresher.target("j", {"id": "1"})
    )  # served at once, its refresh started
    assert isinstance(stale, Answer) and stale.status == "stale"
    assert len(fetcher.calls) == 2
    with pytest.raises(errors.BadArgs):
        refresher.target("j", {"nope": "1"})


def test_a_lookup_given_the_time_decides_as_of_it() -> None:
    """A caller that has just read the clock passes its time: the lookup decides as of then."""
    refresher, fetcher, clock, _ = make(stale=100.0)
    target = refresher.target("j", {"id": "1"})
    refresher.lookup(target)
    fetcher.succeed(body=b"1")
    now = clock.seconds()
    later = refresher.lookup(target, now + 61)
    assert isinstance(later, Answer) and later.status == "stale"  # as of 61 s on
    assert len(fetcher.calls) == 2  # ...its refresh started
    before = refresher.lookup(target, now)
    assert isinstance(before, Answer) and before.status == "hit"  # as of the clock's time


def test_a_stale_value_served_at_hand_is_measured_as_of_the_lookups_time() -> None:
    """The stale age observed is that of the time the lookup decided on, not a later clock."""
    refresher, fetcher, clock, _ = make(stale=100.0)
    target = refresher.target("j", {"id": "1"})
    refresher.lookup(target)
    fetcher.succeed(body=b"1")
    now = clock.seconds() + 70  # 10 s past freshness
    clock.advance(70.25)  # the clock reads a moment later than the request was read
    answer = refresher.lookup(target, now)
    assert isinstance(answer, Answer) and answer.status == "stale"
    assert counter(refresher, "refresherd_stale_served_age_seconds_sum", job="j") == 10.0


def test_a_lookup_at_hand_draws_as_often_as_one_that_reads() -> None:
    """An early refresh decided at hand is not decided again (it is as likely as after a read)."""
    draws: list[float] = []
    early = [False]

    def rand() -> float:
        draws.append(1e-300 if early[0] else 0.999999)  # 1e-300: an early refresh
        return draws[-1]

    store = NearCache(MemoryStore(task.Clock()), task.Clock(), ttl=1.0)
    refresher, fetcher, clock, _ = make(store=store, random=rand, early_refresh=1.0)
    store.clock = store.store.clock = clock
    ask(refresher)
    clock.advance(5)  # The fetch takes 5 s: XFetch's delta.
    fetcher.succeed(body=b"1")
    assert result(lookup(refresher)).status == "hit"  # Now in the near cache.
    draws.clear()
    early[0] = True
    answer = refresher.lookup(refresher.target("j", {"id": "1"}))
    assert isinstance(answer, Deferred)  # The store is read past the near cache first.
    assert result(answer).status == "hit"
    assert len(draws) == 2  # one at hand, one on what the store holds (the near cache may lag)
    assert len(fetcher.calls) == 2


def test_a_lookup_without_a_store_at_hand_reads_it() -> None:
    store = UnreachableStore(MemoryStore(task.Clock()), down=False)
    refresher, fetcher, _, _ = make(store=store)
    ask(refresher)
    fetcher.succeed(body=b"1")
    assert isinstance(refresher.lookup(refresher.target("j", {"id": "1"})), Answer)
    store.down = True
    later = refresher.lookup(refresher.target("j", {"id": "1"}))
    assert isinstance(later, Deferred)
    ask(refresher)


def test_values_fetched_during_an_outage_are_served_from_the_process_for_30_s_at_most() -> None:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = UnreachableStore(MemoryStore(clock))
    refresher, fetcher, _, _ = make(store=store, clock=clock, fresh=60.0, stale=600.0)
    first = lookup(refresher)
    fetcher.succeed(body=b'"v1"')
    missed = result(first)
    assert (missed.status, missed.stored) == ("miss", False)
    clock.advance(outage.KEPT_AT_MOST - 1)
    assert (result(lookup(refresher)).status, len(fetcher.calls)) == ("hit", 1)
    clock.advance(1)  # never stale: a purge made elsewhere cannot reach it
    again = lookup(refresher)
    assert len(fetcher.calls) == 2
    fetcher.succeed(body=b'"v2"')
    assert body_of(result(again)) == b'"v2"'


def test_a_value_kept_during_an_outage_lives_no_longer_than_its_fresh() -> None:
    clock = task.Clock()
    store = UnreachableStore(MemoryStore(clock))
    refresher, fetcher, _, _ = make(store=store, clock=clock, fresh=5.0)
    ask(refresher)
    fetcher.succeed()
    clock.advance(5)
    ask(refresher)
    assert len(fetcher.calls) == 2


class Remote:
    """The memory store as a remote store is: nothing at hand, every read a round trip."""

    shared = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "read_at_hand":  # zope's __provides__ included
            raise AttributeError(name)
        return getattr(self.store, name)


def test_what_was_kept_during_an_outage_is_dropped_when_the_store_answers() -> None:
    clock = task.Clock()
    store = UnreachableStore(Remote(MemoryStore(clock)))
    refresher, fetcher, _, _ = make(store=store, clock=clock)
    ask(refresher)
    fetcher.succeed(body=b'"during"')
    store.down = False
    answer = lookup(refresher)
    assert len(fetcher.calls) == 2  # the store's truth: it has no value
    fetcher.succeed(body=b'"after"')
    after = result(answer)
    assert (after.status, body_of(after)) == ("miss", b'"after"')
    assert not refresher.outage.holding
    store.down = True
    ask(refresher)
    assert len(fetcher.calls) == 3  # the value kept during the first outage is gone


def test_the_values_kept_during_an_outage_are_bounded_in_bytes() -> None:
    clock = task.Clock()
    kept = outage.Outage(clock, max_bytes=3000)
    for i in range(10):
        kept.keep(
            f"k{i}",
            value_entry(
                Fetched(b"x" * 1000, "text/plain"),
                job="j",
                args={"id": str(i)},
                tags=(),
                now=clock.seconds(),
                duration=0.1,
                fresh=60.0,
                stale=0.0,
                stale_if_error=0.0,
            ),
        )
    present = [i for i in range(10) if kept.get(f"k{i}") is not None]
    assert present == [8, 9]  # least recently used first
    off = outage.Outage(clock, max_bytes=0)
    off.keep("k", kept.get("k9"))  # type: ignore[arg-type]
    assert off.get("k") is None and not off.holding


def test_a_lease_whose_release_the_store_did_not_answer_is_released_once_it_does() -> None:
    """A lease taken just before an outage does not block its key after it."""
    clock = task.Clock()
    inner = MemoryStore(clock)
    store = UnreachableStore(Remote(inner), down=False)
    refresher, fetcher, _, _ = make(store=store, clock=clock)
    d = lookup(refresher)
    store.down = True  # the store stops answering while the fetch runs
    fetcher.succeed()
    assert result(d).stored is False
    key = "rfd:j:v1:id=1"
    assert result(inner.acquire_lease(key, 10)) is None  # still held
    clock.advance(flights.RELEASE_RETRY)  # tried again, still down
    store.down = False
    clock.advance(flights.RELEASE_RETRY)
    assert result(inner.acquire_lease(key, 10)) is not None  # released
    assert clock.getDelayedCalls() == []  # and no more tries
