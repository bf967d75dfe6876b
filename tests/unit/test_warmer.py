"""
Warm lists (docs/configuration.md, "`warm`"): the L{Warmer} fetches each warm
key at start-up, refreshes it a lead before it stops being fresh with no
request, retries a failed one after a backoff, keeps one timer per key and
cancels them when it stops; all on task.Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from refresherd.config import JobConfig
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.core.warmer import MIN_PAUSE, Warmer, lead, next_refresh, retry_after_failure
from refresherd.entry import Entry
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher, UnreachableStore
from tests.deferreds import as_deferred, result

NOW = 1_000_000.0


def make(
    warm: tuple[dict[str, str], ...] = ({"id": "1"},), down: bool = False, **settings: Any
) -> tuple[Warmer, FakeFetcher, task.Clock]:
    """A warmer of job C{j} (argument C{id}) on a memory store (C{down}: unreachable)."""
    clock = task.Clock()
    clock.advance(NOW)
    fetcher = FakeFetcher()
    store = UnreachableStore(MemoryStore(clock), down=down)
    settings.setdefault("fresh", 60.0)
    config = JobConfig(
        name="j", fetch="python", callable="x:y", args=("id",), warm=warm, **settings
    )
    refresher = Refresher(
        store,
        {"j": Job(config, fetcher)},
        clock,
        "rfd",
        metrics_for(["j"]),
        random=lambda: 0.9,
    )
    return Warmer(refresher, clock, random=lambda: 1.0), fetcher, clock


def start(warmer: Warmer, clock: task.Clock) -> None:
    """Start the warmer, and let the reactor run (the start-up refreshes begin then)."""
    warmer.startService()
    assert not warmer.refresher.flights.running
    clock.advance(0)


def entry(**fields: Any) -> Entry:
    values: dict[str, Any] = {
        "body": b"1",
        "content_type": "application/json",
        "fetched_at": NOW,
        "fresh_until": NOW + 60,
        "stale_until": NOW + 60,
        "error_until": NOW + 60,
        "duration": 0.0,
        "job": "j",
        "args": {"id": "1"},
    }
    return Entry(**{**values, **fields})


def test_the_lead_is_twice_the_fetch_and_at_least_a_second() -> None:
    assert lead(entry(duration=0.2)) == 1.0
    assert lead(entry(duration=3.0)) == 6.0


def test_the_next_refresh_is_a_lead_before_fresh_until() -> None:
    assert next_refresh(NOW, entry(duration=3.0), min_refresh=1.0) == NOW + 54


def test_the_next_refresh_waits_for_retry_at_and_min_refresh() -> None:
    assert next_refresh(NOW, entry(retry_at=NOW + 59.5), 1.0) == NOW + 59.5
    short = entry(fresh_until=NOW + 0.5, duration=1.0)
    assert next_refresh(NOW, short, min_refresh=5.0) == NOW + 5
    assert next_refresh(NOW, short, min_refresh=0.0) == NOW + MIN_PAUSE  # never a busy loop


def test_a_failed_refresh_is_retried_at_retry_at_else_after_a_backoff() -> None:
    assert retry_after_failure(NOW, entry(retry_at=NOW + 7), 1, 5.0, rand=1.0) == NOW + 7
    assert retry_after_failure(NOW, None, 1, 5.0, rand=1.0) == NOW + 5
    assert retry_after_failure(NOW, None, 3, 5.0, rand=1.0) == NOW + 20
    assert retry_after_failure(NOW, None, 1, 0.0, rand=1.0) == NOW + 1  # error_ttl = 0


def test_a_warm_key_is_fetched_at_start_up_and_refreshed_before_it_goes_stale() -> None:
    warmer, fetcher, clock = make(fresh=300.0)
    start(warmer, clock)
    assert [c.args for c in fetcher.calls] == [{"id": "1"}]
    clock.advance(2)
    fetcher.succeed()  # took 2 s: fresh until 302 s from now, refreshed 4 s before
    assert warmer.timers == 1
    clock.advance(295.9)
    assert len(fetcher.calls) == 1
    clock.advance(0.2)
    assert len(fetcher.calls) == 2  # no request asked
    fetcher.succeed()
    lookup = as_deferred(lambda: warmer.refresher.lookup(warmer.keys[0].target))
    assert result(lookup).status == "hit"
    assert warmer.timers == 1


def test_a_fresh_value_is_not_fetched_at_start_up_but_timed_by_its_fresh_until() -> None:
    warmer, fetcher, clock = make(fresh=300.0)
    target = warmer.keys[0].target
    warmer.refresher.lookup(target)
    fetcher.succeed()  # a request fetched it
    clock.advance(100)
    start(warmer, clock)
    assert len(fetcher.calls) == 1
    clock.advance(198.9)
    assert len(fetcher.calls) == 1
    clock.advance(0.2)  # 1 s (the least lead) before fresh_until
    assert len(fetcher.calls) == 2


def test_a_failed_warm_is_retried_after_its_backoff() -> None:
    warmer, fetcher, clock = make(error_ttl=10.0)
    start(warmer, clock)
    fetcher.fail()
    assert warmer.timers == 1
    clock.advance(9.9)
    assert len(fetcher.calls) == 1  # the failure is remembered for error_ttl
    clock.advance(0.2)
    assert len(fetcher.calls) == 2
    fetcher.succeed()
    assert warmer.keys[0].failures == 0
    clock.advance(59.1)  # fresh for 60 s from 10.1 s, refreshed 1 s before
    assert len(fetcher.calls) == 3


def test_a_failing_refresh_of_a_value_waits_for_the_values_backoff() -> None:
    warmer, fetcher, clock = make(fresh=10.0, stale=100.0, error_ttl=4.0)
    start(warmer, clock)
    fetcher.succeed()
    clock.advance(9)  # a lead of 1 s before fresh_until
    fetcher.fail()
    assert len(fetcher.calls) == 2
    clock.advance(3.7)  # the value's backoff: in [2, 4] s, 3.8 with the refresher's random
    assert len(fetcher.calls) == 2
    clock.advance(0.2)
    assert len(fetcher.calls) == 3


def test_timers_are_cancelled_on_stop_and_nothing_starts_after() -> None:
    warmer, fetcher, clock = make(warm=({"id": "1"}, {"id": "2"}), concurrency=2)
    start(warmer, clock)
    assert len(fetcher.calls) == 1  # one background slot: the second waits its turn
    fetcher.succeed()
    assert len(fetcher.calls) == 2
    warmer.stopService()
    fetcher.succeed()  # finishes, but sets no timer
    assert warmer.timers == 0 and not clock.getDelayedCalls()
    clock.advance(3600)
    assert len(fetcher.calls) == 2


def test_stopped_before_the_reactor_runs_it_warms_nothing() -> None:
    warmer, fetcher, clock = make()
    warmer.startService()
    warmer.stopService()
    clock.advance(3600)
    assert fetcher.calls == [] and not clock.getDelayedCalls()


def test_stopping_drops_the_keys_waiting_their_turn() -> None:
    warmer, fetcher, clock = make(warm=tuple({"id": str(i)} for i in range(5)), concurrency=1)
    start(warmer, clock)
    warmer.stopService()
    fetcher.succeed()
    clock.advance(3600)
    assert len(fetcher.calls) == 1 and not clock.getDelayedCalls()


def test_at_most_concurrency_minus_one_warm_refreshes_run_at_once() -> None:
    warmer, fetcher, clock = make(warm=tuple({"id": str(i)} for i in range(10)), concurrency=4)
    start(warmer, clock)
    assert len(fetcher.pending) == 3
    while fetcher.pending:
        fetcher.succeed(index=fetcher.calls.index(fetcher.pending[0]))
    assert len(fetcher.calls) == 10 and warmer.timers == 10  # one timer per key


def test_an_unreachable_store_is_tried_again_soon() -> None:
    warmer, fetcher, clock = make(down=True)
    start(warmer, clock)
    assert fetcher.calls == [] and warmer.timers == 1
    warmer.refresher.store.down = False  # type: ignore[attr-defined]
    clock.advance(1.0)
    assert len(fetcher.calls) == 1


def test_the_warm_refreshes_are_counted_as_warm() -> None:
    warmer, fetcher, clock = make()
    start(warmer, clock)
    fetcher.succeed()
    sample = warmer.refresher.metrics.registry.get_sample_value(
        "refresherd_refreshes_total", {"job": "j", "reason": "warm"}
    )
    assert sample == 1


def test_a_soft_purge_regenerates_the_warm_keys_it_covers_at_once() -> None:
    warmer, fetcher, clock = make(warm=({"id": "1"}, {"id": "2"}), tags=("t:{id}",))
    start(warmer, clock)
    while fetcher.pending:
        fetcher.succeed(index=fetcher.calls.index(fetcher.pending[0]))
    refresher = warmer.refresher
    result(Deferred.fromCoroutine(refresher.purge([], [], ["t:2"], True)))
    assert [c.args for c in fetcher.pending] == [{"id": "2"}]  # at once, no request
    fetcher.succeed(index=-1)
    assert (
        refresher.metrics.registry.get_sample_value(
            "refresherd_refreshes_total", {"job": "j", "reason": "purge"}
        )
        == 1
    )
    result(Deferred.fromCoroutine(refresher.purge([], ["j"], [], False)))
    assert fetcher.pending == []  # a hard purge regenerates nothing
    assert warmer.timers == 2
