"""
Background refreshes (docs/README.md, "Background refreshes"): a job's slots
go to requests first (L{Slots}), background fetches hold at most
C{concurrency - 1} of them and never make a request L{Overloaded}, a request
that needs a key being refreshed in the background promotes its fetch, and
L{Refresher.refresh_background} fetches only what is not fresh enough; all
on task.Clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from refresherd import errors
from refresherd.config import JobConfig
from refresherd.core.jobs import Job
from refresherd.core.refresher import Answer, Refresher
from refresherd.core.slots import Slots
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher
from tests.deferreds import as_deferred, failure, result


def test_requests_take_free_slots_at_once_and_wait_in_order() -> None:
    slots = Slots(2)
    first, second, third = slots.acquire(), slots.acquire(), slots.acquire()
    assert first.called and second.called and not third.called
    assert slots.queued == 1
    slots.release()
    assert third.called and slots.queued == 0


def test_background_holds_at_most_all_but_one_slot() -> None:
    slots = Slots(3)
    granted = [slots.acquire_background() for _ in range(3)]
    assert [d.called for d in granted] == [True, True, False]
    assert slots.acquire().called  # one is always free for a request
    slots.release(background=True)
    assert granted[2].called


def test_a_slot_that_comes_free_goes_to_a_request_before_background() -> None:
    slots = Slots(2)
    slots.acquire(), slots.acquire()
    background = slots.acquire_background()
    request = slots.acquire()
    slots.release()
    assert request.called and not background.called
    slots.release()
    assert background.called


def test_with_one_slot_background_runs_only_while_nothing_else_does() -> None:
    slots = Slots(1)
    slots.acquire()
    background = slots.acquire_background()
    assert not background.called
    slots.release()
    assert background.called
    assert not slots.acquire().called  # the request waits for the running one


def test_a_promoted_background_waiter_waits_as_a_request() -> None:
    slots = Slots(2)
    slots.acquire(), slots.acquire()
    early, late = slots.acquire_background(), slots.acquire_background()
    request = slots.acquire()
    assert slots.promote(late)
    slots.release()
    assert request.called and not late.called
    slots.release()
    assert late.called and not early.called
    assert (slots.running, slots.background) == (2, 0)


def test_a_cancelled_waiter_leaves_its_queue() -> None:
    slots = Slots(1)
    slots.acquire()
    background, request = slots.acquire_background(), slots.acquire()
    slots.promote(background)
    background.cancel()
    request.cancel()
    assert slots.queued == 0
    failure(background), failure(request)
    slots.release()
    assert slots.running == 0


def make(**settings: Any) -> tuple[Refresher, FakeFetcher, task.Clock, MemoryStore]:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = MemoryStore(clock)
    fetcher = FakeFetcher()
    settings.setdefault("fresh", 60.0)
    config = JobConfig(name="j", fetch="python", callable="x:y", args=("id",), **settings)
    refresher = Refresher(
        store, {"j": Job(config, fetcher)}, clock, "rfd", metrics_for(["j"]), random=lambda: 0.9
    )
    return refresher, fetcher, clock, store


def background(refresher: Refresher, id: str, reason: str = "warm", lead: float = 0.0) -> Any:
    target = refresher.target("j", {"id": id})
    return Deferred.fromCoroutine(refresher.refresh_background(target, reason, lead))


def lookup(refresher: Refresher, id: str) -> Any:
    return as_deferred(lambda: refresher.lookup(refresher.target("j", {"id": id})))


def refreshes(refresher: Refresher, reason: str) -> float:
    value = refresher.metrics.registry.get_sample_value(
        "refresherd_refreshes_total", {"job": "j", "reason": reason}
    )
    return value or 0.0


def test_a_background_refresh_fetches_what_is_absent_and_answers_what_it_wrote() -> None:
    refresher, fetcher, _, _ = make()
    d = background(refresher, "1")
    fetcher.succeed(body=b'"one"')
    answer: Answer = result(d)
    assert (answer.status, answer.entry.body if answer.entry else None) == ("miss", b'"one"')
    assert result(lookup(refresher, "1")).status == "hit"
    assert (refreshes(refresher, "warm"), refreshes(refresher, "request")) == (1, 0)


def test_a_background_refresh_skips_what_stays_fresh_for_the_lead() -> None:
    refresher, fetcher, clock, _ = make()
    background(refresher, "1")
    fetcher.succeed()
    assert result(background(refresher, "1", lead=30)).status == "hit"
    assert len(fetcher.calls) == 1
    clock.advance(31)
    d = background(refresher, "1", lead=30)  # fresh for 29 s more: within the lead
    assert len(fetcher.calls) == 2
    fetcher.succeed()
    assert result(d).status == "miss"


def test_a_background_refresh_respects_retry_at_and_remembered_failures() -> None:
    refresher, fetcher, clock, _ = make(error_ttl=10.0)
    d = background(refresher, "1")
    fetcher.fail(reason="origin answered 500")
    assert isinstance(failure(d), errors.FetchFailed)
    assert isinstance(failure(background(refresher, "1")), errors.FetchFailed)
    assert len(fetcher.calls) == 1  # remembered for error_ttl: not fetched again
    clock.advance(10)
    background(refresher, "1")
    assert len(fetcher.calls) == 2


def test_requests_overtake_background_work_waiting_for_slots() -> None:
    refresher, fetcher, _, _ = make(concurrency=2, max_queue=0)
    warming = [background(refresher, str(i)) for i in range(5)]
    assert len(fetcher.calls) == 1  # background holds at most concurrency - 1 slots
    miss = lookup(refresher, "request")
    assert [c.args["id"] for c in fetcher.calls] == ["0", "request"]  # no queue, no 503
    fetcher.succeed(index=1)
    assert result(miss).status == "miss"
    while fetcher.pending:
        fetcher.succeed(index=fetcher.calls.index(fetcher.pending[0]))
    assert [result(d).status for d in warming] == ["miss"] * 5


def test_background_work_never_makes_a_request_overloaded() -> None:
    refresher, fetcher, _, _ = make(concurrency=1, max_queue=1)
    warming = [background(refresher, str(i)) for i in range(20)]
    first = lookup(refresher, "a")  # background holds the only slot: this one queues
    assert len(fetcher.calls) == 1 and not first.called
    second = lookup(refresher, "b")  # over max_queue: the background waiting do not count
    assert isinstance(failure(second), errors.Overloaded)
    fetcher.succeed(index=0)
    assert fetcher.calls[1].args == {"id": "a"}
    fetcher.succeed(index=1)
    assert result(first).status == "miss"
    while fetcher.pending:
        fetcher.succeed(index=len(fetcher.calls) - 1)
    assert all(result(d).status == "miss" for d in warming)


def test_a_request_for_a_key_warming_in_the_background_promotes_its_fetch() -> None:
    refresher, fetcher, _, _ = make(concurrency=2)
    background(refresher, "x")  # runs: the one background slot
    waiting = background(refresher, "w")  # waits behind requests
    lookup(refresher, "busy")  # a request holds the other slot
    needed = lookup(refresher, "w")  # joins the background flight of w: promoted
    fetcher.succeed(index=0)  # x done: its background slot comes free
    assert [c.args["id"] for c in fetcher.calls] == ["x", "busy", "w"]
    fetcher.succeed(index=2)
    assert result(needed).status == "miss" and result(waiting).status == "miss"


@pytest.mark.parametrize("reason", ["warm", "hot", "purge"])
def test_background_refreshes_are_counted_by_reason(reason: str) -> None:
    refresher, fetcher, _, _ = make()
    background(refresher, "1", reason)
    fetcher.succeed()
    assert refreshes(refresher, reason) == 1
