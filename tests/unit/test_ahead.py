"""
Refresh-ahead of the hottest keys (C{keep_hot}) and their regeneration after
a soft purge (docs/README.md, "Background refreshes"), with a sketch given
by the test; all on task.Clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from refresherd.config import JobConfig
from refresherd.core.ahead import Ahead, after_purge, lead, still_kept
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher
from tests.deferreds import as_deferred, result


@attrs.define
class Hot:
    key: str
    args: Mapping[str, str]
    rate: float


@attrs.define
class Sketch:
    """The hot keys, hottest first, as the test sets them (each asked once a second)."""

    ids: list[str] = attrs.field(factory=list)
    rates: dict[str, float] = attrs.field(factory=dict)
    """The rates of the keys not asked once a second."""
    held: dict[str, int] = attrs.field(factory=dict)

    def top(self, job: str, now: float, n: int | None = None) -> list[Hot]:
        hot = [Hot(f"rfd:j:v1:id={i}", {"id": i}, self.rates.get(i, 1.0)) for i in self.ids]
        return hot[:n]

    def hold(self, job: str, n: int) -> None:
        self.held[job] = n

    def warmed(self, job: str, now: float) -> float:
        return 1.0


def make(**settings: Any) -> tuple[Refresher, FakeFetcher, task.Clock, Sketch, Ahead]:
    clock = task.Clock()
    clock.advance(1_000_000)
    fetcher = FakeFetcher()
    settings.setdefault("fresh", 10.0)
    settings.setdefault("stale", 100.0)
    settings.setdefault("keep_hot", 2)
    config = JobConfig(
        name="j", fetch="python", callable="x:y", args=("id",), tags=("t:{id}",), **settings
    )
    refresher = Refresher(
        MemoryStore(clock),
        {"j": Job(config, fetcher)},
        clock,
        "rfd",
        metrics_for(["j"]),
        random=lambda: 0.99,
    )
    sketch = Sketch()
    ahead = Ahead(refresher, sketch, clock)
    refresher.after_purge = after_purge(ahead)
    ahead.start()
    return refresher, fetcher, clock, sketch, ahead


def lookup(refresher: Refresher, id: str) -> Any:
    return as_deferred(lambda: refresher.lookup(refresher.target("j", {"id": id})))


def succeed_all(fetcher: FakeFetcher, clock: task.Clock, duration: float = 0.0) -> None:
    clock.advance(duration)
    while fetcher.pending:
        fetcher.succeed(index=fetcher.calls.index(fetcher.pending[0]))


def test_a_hot_key_is_refreshed_before_it_goes_stale_and_never_served_stale() -> None:
    refresher, fetcher, clock, sketch, _ = make()
    lookup(refresher, "a")
    succeed_all(fetcher, clock, 0.5)  # its fetch takes 0.5 s: lead max(1, 2 × 0.5)
    sketch.ids = ["a"]
    statuses = []
    for _ in range(120):  # a minute of requests, one every 0.5 s
        clock.advance(0.5)
        statuses.append(result(lookup(refresher, "a")).status)
        succeed_all(fetcher, clock)
    assert set(statuses) == {"hit"}
    # One refresh every fresh (10 s) less the lead (1 s): about 6 in the minute, no more.
    assert 6 <= len(fetcher.calls) - 1 <= 7
    assert (
        refresher.metrics.registry.get_sample_value(
            "refresherd_refreshes_total", {"job": "j", "reason": "hot"}
        )
        == len(fetcher.calls) - 1
    )


def test_only_the_n_hottest_and_a_cooled_key_is_no_longer_refreshed() -> None:
    refresher, fetcher, clock, sketch, _ = make(keep_hot=1)
    for id in ("a", "b"):
        lookup(refresher, id)
    succeed_all(fetcher, clock)
    sketch.ids = ["a", "b"]
    clock.advance(30)
    assert {c.args["id"] for c in fetcher.calls[2:]} == {"a"}
    succeed_all(fetcher, clock)
    sketch.ids = ["b"]  # a cooled down
    before = len(fetcher.calls)
    clock.advance(60)
    succeed_all(fetcher, clock)
    assert {c.args["id"] for c in fetcher.calls[before:]} == {"b"}


def test_a_soft_purge_regenerates_the_hot_keys_it_covers_at_once() -> None:
    refresher, fetcher, clock, sketch, _ = make()
    for id in ("a", "b"):
        lookup(refresher, id)
    succeed_all(fetcher, clock)
    sketch.ids = ["a", "b"]
    result(Deferred.fromCoroutine(refresher.purge([], [], ["t:a"], True)))
    assert [c.args["id"] for c in fetcher.pending] == ["a"]  # at once, no request
    succeed_all(fetcher, clock)
    assert result(lookup(refresher, "a")).status == "hit"
    result(Deferred.fromCoroutine(refresher.purge([], ["j"], [], True)))
    assert sorted(c.args["id"] for c in fetcher.pending) == ["a", "b"]


def test_a_hard_purge_regenerates_nothing() -> None:
    refresher, fetcher, clock, sketch, _ = make()
    lookup(refresher, "a")
    succeed_all(fetcher, clock)
    sketch.ids = ["a"]
    result(Deferred.fromCoroutine(refresher.purge([], ["j"], [], False)))
    assert fetcher.pending == []


def test_a_job_without_keep_hot_is_never_refreshed_ahead() -> None:
    refresher, fetcher, clock, sketch, ahead = make(keep_hot=0)
    lookup(refresher, "a")
    succeed_all(fetcher, clock)
    sketch.ids = ["a"]
    clock.advance(60)
    assert len(fetcher.calls) == 1
    ahead.stop()


def test_a_refresh_that_waited_behind_requests_starts_earlier_next_time() -> None:
    refresher, fetcher, clock, sketch, ahead = make(concurrency=1, fresh=20.0)
    lookup(refresher, "a")
    succeed_all(fetcher, clock)
    sketch.ids = ["a"]
    clock.advance(17)  # due at fresh_until - 1 s
    lookup(refresher, "b")  # a request's fetch holds the only slot...
    clock.advance(2)  # ...while a's refresh ahead comes due and waits behind it
    assert [c.args["id"] for c in fetcher.pending] == ["b"]
    clock.advance(1.5)
    fetcher.succeed(index=1)  # b done after 3.5 s: a's refresh gets the slot, fetches
    fetcher.succeed(index=2)  # at once
    due, lead = ahead._due["rfd:j:v1:id=a"]
    assert lead == pytest.approx(2 * 1.5)  # twice its wait and fetch (its fetch took 0 s)
    assert due <= clock.seconds() + 20 - lead


def test_the_keys_kept_are_the_n_hottest_and_those_kept_already_among_2n() -> None:
    assert still_kept(["a", "b", "c", "d"], [], 2) == ["a", "b"]
    assert still_kept(["a", "c", "b", "d"], ["a", "b"], 2) == ["a", "c", "b"]
    assert still_kept(["c", "d", "a", "e"], ["a", "b"], 2) == ["c", "d", "a"]


def test_a_key_flipping_at_the_bottom_of_the_n_keeps_its_schedule_and_stays_fresh() -> None:
    refresher, fetcher, clock, sketch, ahead = make(keep_hot=2)
    for id in ("a", "b", "c"):
        lookup(refresher, id)
    succeed_all(fetcher, clock)
    statuses = []
    for second in range(60):  # b and c swap places below a every second
        sketch.ids = ["a", "c", "b"] if second % 2 else ["a", "b", "c"]
        clock.advance(1)
        if second:  # each once in the top 2: kept since, with its schedule
            assert "rfd:j:v1:id=b" in ahead._due and "rfd:j:v1:id=c" in ahead._due
        statuses += [result(lookup(refresher, id)).status for id in ("b", "c")]
        succeed_all(fetcher, clock)
    assert set(statuses) == {"hit"}
    # Each refreshed once every fresh (10 s) less its lead (1 s), no more.
    refreshed = [c.args["id"] for c in fetcher.calls[3:]]
    assert 6 <= refreshed.count("b") <= 7 and 6 <= refreshed.count("c") <= 7


def test_a_cooled_key_is_dropped_once_it_leaves_the_2n_hottest() -> None:
    refresher, fetcher, clock, sketch, ahead = make(keep_hot=1)
    for id in ("a", "b", "c"):
        lookup(refresher, id)
    succeed_all(fetcher, clock)
    sketch.ids = ["a", "b"]
    clock.advance(1)
    sketch.ids = ["b", "a", "c"]  # a second: still among the 2 hottest, kept
    clock.advance(30)
    succeed_all(fetcher, clock)
    assert {"a", "b"} <= {c.args["id"] for c in fetcher.calls[3:]}
    sketch.ids = ["b", "c", "a"]  # a third: dropped, and c (never in the top 1) not kept
    clock.advance(1)
    succeed_all(fetcher, clock)
    before = len(fetcher.calls)
    clock.advance(60)
    succeed_all(fetcher, clock)
    assert {c.args["id"] for c in fetcher.calls[before:]} == {"b"}
    assert "rfd:j:v1:id=a" not in ahead._due


def test_a_hot_key_is_refreshed_at_its_due_time_not_at_the_next_look() -> None:
    refresher, fetcher, clock, sketch, _ = make(fresh=10.0)
    lookup(refresher, "a")
    clock.advance(0.3)
    succeed_all(fetcher, clock)  # fresh until 10.3 s from the start, lead 1 s
    sketch.ids = ["a"]
    clock.advance(0.7)  # the first look: a kept, not due
    clock.advance(8.29)
    assert fetcher.pending == []
    clock.advance(0.01)  # 9.3 s: between two looks
    assert [c.args["id"] for c in fetcher.pending] == ["a"]


def test_stopping_leaves_no_timer_behind() -> None:
    refresher, fetcher, clock, sketch, ahead = make()
    lookup(refresher, "a")
    succeed_all(fetcher, clock)
    sketch.ids = ["a"]
    clock.advance(1)
    assert clock.getDelayedCalls()
    ahead.stop()
    assert clock.getDelayedCalls() == []


def purge_count(refresher: Refresher) -> float | None:
    return refresher.metrics.registry.get_sample_value(
        "refresherd_refreshes_total", {"job": "j", "reason": "purge"}
    )


def test_a_soft_purge_during_a_hot_keys_refresh_ahead_regenerates_it_once_that_ends() -> None:
    refresher, fetcher, clock, sketch, _ = make(fresh=10.0)
    lookup(refresher, "a")
    succeed_all(fetcher, clock)
    sketch.ids = ["a"]
    clock.advance(9)  # its refresh ahead fetches (due at 9 s)...
    assert len(fetcher.pending) == 1
    result(Deferred.fromCoroutine(refresher.purge([], [], ["t:a"], True)))  # ...when purged
    assert len(fetcher.pending) == 1
    fetcher.succeed(index=1)  # what it fetched began before the purge: fetched again at once
    assert [c.args["id"] for c in fetcher.pending] == ["a"]
    assert purge_count(refresher) == 1
    succeed_all(fetcher, clock)
    assert result(lookup(refresher, "a")).status == "hit"


def test_a_regeneration_waits_for_a_fetch_begun_before_the_purge_then_fetches() -> None:
    refresher, fetcher, clock, sketch, _ = make(fresh=10.0)
    lookup(refresher, "a")
    succeed_all(fetcher, clock)
    sketch.ids = ["a"]
    clock.advance(1)
    result(Deferred.fromCoroutine(refresher.refresh(refresher.target("j", {"id": "a"}))))
    result(Deferred.fromCoroutine(refresher.purge([], [], ["t:a"], True)))
    assert len(fetcher.pending) == 1  # the regeneration waits for the fetch running...
    fetcher.succeed(index=1)
    assert [c.args["id"] for c in fetcher.pending] == ["a"]  # ...whose value is purged: again
    succeed_all(fetcher, clock)
    assert result(lookup(refresher, "a")).status == "hit"
    assert purge_count(refresher) == 1


def test_a_key_asked_less_than_once_per_fresh_is_not_refreshed_ahead() -> None:
    refresher, fetcher, clock, sketch, ahead = make(fresh=10.0)
    for id in ("a", "b"):
        lookup(refresher, id)
    succeed_all(fetcher, clock)
    # a asked about twice per fresh, b once every 20 s: a refresh ahead of b would
    # cost a fetch per fresh that no request needs.
    sketch.ids, sketch.rates = ["a", "b"], {"a": 0.2, "b": 0.05}
    clock.advance(1)
    assert set(ahead._kept) == {"rfd:j:v1:id=a"}
    clock.advance(60)
    succeed_all(fetcher, clock)
    assert {c.args["id"] for c in fetcher.calls[2:]} == {"a"}
    sketch.rates["b"] = 0.1  # once per fresh: kept from the next look
    clock.advance(1)
    assert "rfd:j:v1:id=b" in ahead._kept


def test_the_lead_is_at_most_a_tenth_of_a_short_fresh() -> None:
    assert lead(0.01, fresh=30.0) == 1.0
    assert lead(0.01, fresh=5.0) == pytest.approx(0.5)
    assert lead(0.4, fresh=5.0) == pytest.approx(0.8)  # twice the refresh, as for any fresh
    refresher, fetcher, clock, sketch, _ = make(fresh=5.0)
    lookup(refresher, "a")
    succeed_all(fetcher, clock)  # fresh until 5 s from now
    sketch.ids = ["a"]
    clock.advance(4.49)
    assert fetcher.pending == []
    clock.advance(0.01)  # 4.5 s: fresh (5 s) less a lead of 0.5 s, not 1 s
    assert [c.args["id"] for c in fetcher.pending] == ["a"]


def with_hot_keys(capacity: int) -> tuple[task.Clock, HotKeysRegistry, Ahead]:
    """Refresh-ahead (not started) of a job keeping 3 hot, on a real sketch of C{capacity}."""
    clock = task.Clock()
    hot = HotKeysRegistry(capacity=capacity, half_life=60.0)
    config = JobConfig(
        name="j", fetch="python", callable="x:y", args=("id",), fresh=10.0, stale=100.0, keep_hot=3
    )
    refresher = Refresher(
        MemoryStore(clock), {"j": Job(config, FakeFetcher())}, clock, "rfd", metrics_for(["j"])
    )
    return clock, hot, Ahead(refresher, hot, clock)


def test_a_keep_hot_jobs_sketch_holds_ten_times_its_n() -> None:
    clock, hot, ahead = with_hot_keys(capacity=5)
    ahead.start()
    clock.advance(1)  # the first look, before any request
    for i in range(40):
        hot.observe("j", f"k{i}", {"id": str(i)}, clock.seconds())
        hot.observe("other", f"k{i}", {"id": str(i)}, clock.seconds())
    assert hot.sizes() == {"j": 30, "other": 5}
    ahead.stop()


def test_a_young_sketchs_low_rates_are_read_as_the_steady_rates_they_will_be() -> None:
    clock, hot, ahead = with_hot_keys(capacity=50)
    for second in range(0, 20, 5):  # since the start: a asked twice per fresh, b once in 20 s
        hot.observe("j", "rfd:j:v1:id=a", {"id": "a"}, float(second))
    hot.observe("j", "rfd:j:v1:id=b", {"id": "b"}, 0.0)
    clock.advance(20)
    # a's rate reads about 0.2 × (1 - 2^(-20 / 60)) ≈ 0.04 per second: less than once per fresh...
    assert hot.top("j", 20.0)[0].rate * 10 < 0.5
    # ...as a steady 0.2 per second reads in a sketch 20 s old: a is kept, b is not
    assert [t.key for t in ahead.kept(20.0)] == ["rfd:j:v1:id=a"]
