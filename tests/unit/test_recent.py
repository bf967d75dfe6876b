"""
What each job did lately (refresherd.core.recent) on task.Clock: answers and
fetches counted by second over the window, buckets forgotten as the window
moves on, the bound of the errors kept, approximate quantiles, tallies added
and read back from JSON; and the document of GET /v1/status built on them
(refresherd.http.status).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import task

from refresherd.core.recent import (
    BOUNDS,
    DURATIONS,
    FAILURES,
    FETCHES,
    KEEP_ERRORS,
    MAX_ERROR_CHARS,
    WIDTH,
    WINDOW,
    Recent,
    Tally,
    merge,
    quantile,
)
from refresherd.http.status import StoreStatus, status_document
from refresherd.metrics import UNKNOWN_JOB, metrics_for


def recent(*jobs: str) -> tuple[task.Clock, Recent]:
    clock = task.Clock()
    clock.advance(1_000_000.5)
    return clock, Recent(jobs or ("job",), clock.seconds)


def answers(tally: Tally) -> list[int]:
    return tally.counts[:4]


def test_answers_are_counted_by_kind_and_pending_is_a_miss() -> None:
    clock, r = recent()
    for status in ("hit", "hit", "stale", "miss", "pending", "error", "unheard-of"):
        r.answer("job", status)
    r.answer("other", "hit")  # not one of the jobs: not counted
    assert answers(r.tallies()["job"]) == [2, 1, 2, 1]
    assert set(r.tallies()) == {"job"}


def test_counts_leave_the_window_a_second_at_a_time() -> None:
    clock, r = recent()
    r.answer("job", "hit")  # second 1_000_000
    clock.advance(30)
    r.answer("job", "stale")
    clock.advance(WINDOW - 30 - 1)  # second 1_000_059: both in the window
    assert answers(r.tallies()["job"]) == [1, 1, 0, 0]
    clock.advance(1)  # second 1_000_060: the first has left
    assert answers(r.tallies()["job"]) == [0, 1, 0, 0]
    clock.advance(30)
    assert r.tallies()["job"] == Tally()


def test_a_job_keeps_at_most_a_bucket_per_second_of_the_window() -> None:
    clock, r = recent()
    for _ in range(3 * WINDOW):
        r.answer("job", "hit")
        r.answer("job", "miss")
        clock.advance(1)
        assert len(r._buckets["job"]) <= WINDOW
    assert answers(r.tallies()["job"]) == [WINDOW - 1, 0, WINDOW - 1, 0]  # the current: none yet
    r.answer("job", "hit")
    assert answers(r.tallies()["job"]) == [WINDOW, 0, WINDOW - 1, 0]


def test_a_clock_that_goes_back_keeps_the_bound() -> None:
    now = [1000.0]
    r = Recent(["job"], lambda: now[0])
    for second in [*range(1000, 1100), *range(1050, 1100), 900, 1101]:
        now[0] = float(second)
        r.answer("job", "hit")
        assert len(r._buckets["job"]) <= WINDOW
        assert all(n >= 0 for n in r.tallies()["job"].counts)
    assert sum(answers(r.tallies()["job"])) <= WINDOW + 1


def test_fetches_failures_and_durations_are_counted() -> None:
    clock, r = recent()
    r.fetch("job", 0.02)
    r.fetch("job", 0.0001)
    r.fetch("job", 120.0, "origin answered 503")
    counts = r.tallies()["job"].counts
    assert (counts[FETCHES], counts[FAILURES]) == (3, 1)
    durations = counts[DURATIONS:]
    assert len(durations) == len(BOUNDS) + 1
    assert durations[0] == 1  # up to 1 ms
    assert durations[BOUNDS.index(0.025)] == 1
    assert durations[-1] == 1  # longer than the last bound
    assert r.tallies()["job"].errors == [(1_000_000.5, "origin answered 503")]


def test_the_last_errors_are_kept_newest_first_bounded_and_cut() -> None:
    clock, r = recent()
    for n in range(KEEP_ERRORS + 5):
        r.fetch("job", 0.1, f"error {n}")
        clock.advance(1)
    r.fetch("job", 0.1, "x" * 1000)
    errors = r.tallies()["job"].errors
    assert len(errors) == KEEP_ERRORS
    assert errors[0][1] == "x" * MAX_ERROR_CHARS
    assert [message for _, message in errors[1:3]] == ["error 14", "error 13"]
    clock.advance(10 * WINDOW)
    assert len(r.tallies()["job"].errors) == KEEP_ERRORS  # kept however old


def test_quantiles_interpolate_within_their_bucket() -> None:
    durations = [0] * (len(BOUNDS) + 1)
    assert quantile(durations, 0.5) is None
    durations[BOUNDS.index(0.1)] = 100  # 100 attempts of 50 ms to 100 ms
    assert quantile(durations, 0.5) == pytest.approx(0.075)
    assert quantile(durations, 0.99) == pytest.approx(0.0995)
    durations[0] = 100  # and 100 of up to 1 ms
    assert quantile(durations, 0.5) == pytest.approx(0.001)
    assert quantile(durations, 0.25) == pytest.approx(0.0005)
    durations[-1] = 10_000  # longer than every bound: the last bound
    assert quantile(durations, 0.99) == BOUNDS[-1]


def test_tallies_add_up_and_errors_merge_by_time() -> None:
    one = Tally([1] * WIDTH, [(5.0, "e5"), (1.0, "e1")], in_flight=1, queued=2)
    two = Tally([2] * WIDTH, [(9.0, "e9"), (3.0, "e3")], in_flight=3)
    merged = merge([{"job": one, "gone": one}, {"job": two}], ["job", "idle"])
    assert merged["job"].counts == [3] * WIDTH
    assert [m for _, m in merged["job"].errors] == ["e9", "e5", "e3", "e1"]
    assert (merged["job"].in_flight, merged["job"].queued) == (4, 2)
    assert merged["idle"] == Tally()
    assert one.counts == [1] * WIDTH  # the tallies merged are left alone
    many = [{"job": Tally(errors=[(float(t), str(t)) for t in range(i, 40, 4)])} for i in range(4)]
    assert len(merge(many, ["job"])["job"].errors) == KEEP_ERRORS


def test_a_tally_travels_as_json_and_bad_ones_are_refused() -> None:
    tally = Tally(list(range(WIDTH)), [(1.5, "e")], in_flight=2, queued=1)
    assert Tally.parse(json.loads(json.dumps(tally.export()))) == tally
    good = tally.export()
    bads: list[Any] = [
        [],
        {**good, "counts": [1] * (WIDTH - 1)},
        {**good, "counts": [-1] * WIDTH},
        {**good, "counts": [True] * WIDTH},
        {**good, "in_flight": "2"},
        {**good, "errors": [["soon", "e"]]},
        {**good, "errors": [[1.0, "e"]] * (KEEP_ERRORS + 1)},
    ]
    for bad in bads:
        with pytest.raises(ValueError):
            Tally.parse(bad)


def test_metrics_feed_the_window_with_the_running_fetches() -> None:
    clock = task.Clock()
    metrics = metrics_for(["job"], seconds=clock.seconds)
    metrics.count_request("job", "hit")
    metrics.count_request("nobody", "error")
    metrics.count_fetch("job", "timeout", 2.0, "the fetch took longer than 2s")
    metrics.in_flight.labels(job="job").inc()
    metrics.queue_depth.labels(job="job").inc(2)
    tallies = metrics.tallies()
    assert answers(tallies[UNKNOWN_JOB]) == [0, 0, 0, 1]
    job = tallies["job"]
    assert (answers(job), job.counts[FETCHES], job.counts[FAILURES]) == ([1, 0, 0, 0], 1, 1)
    assert (job.in_flight, job.queued) == (1, 2)
    assert (
        metrics.registry.get_sample_value(
            "refresherd_fetches_total", {"job": "job", "outcome": "timeout"}
        )
        == 1
    )


def document(tallies: dict[str, Tally], now: float = 1000.0, started: float = 0.0) -> Any:
    return status_document(
        version="0.1.0",
        now=now,
        started=started,
        store=StoreStatus("memory", True, 10, 1),
        jobs=["b", "a"],
        tallies=tallies,
    )


def test_the_status_document_shows_rates_shares_and_quantiles_per_job() -> None:
    counts = [0] * WIDTH
    counts[:4] = [54, 3, 2, 1]  # 60 answers in the window: 1 a second
    counts[FETCHES], counts[FAILURES] = 6, 3
    counts[DURATIONS + BOUNDS.index(0.1)] = 6
    shown = document({"a": Tally(counts, [(990.0, "origin answered 503")], 1, 2)})
    assert shown["window_seconds"] == WINDOW
    assert shown["store"] == {"kind": "memory", "ready": True, "bytes": 10, "entries": 1}
    assert [job["name"] for job in shown["jobs"]] == ["a", "b"]
    a, b = shown["jobs"]
    assert a["requests_per_second"] == 1.0
    assert a["answers"] == {
        "hit": 0.9,
        "stale": 0.05,
        "miss": 0.033333,  # rounded to 6 places
        "error": 0.016667,
    }
    assert (a["fetches_per_second"], a["errors_per_second"], a["error_ratio"]) == (0.1, 0.05, 0.5)
    assert a["fetch_p50_seconds"] == pytest.approx(0.075)
    assert (a["in_flight"], a["queued"]) == (1, 2)
    assert a["last_errors"] == [{"time": 990.0, "message": "origin answered 503"}]
    assert b["answers"] == {"hit": 0.0, "stale": 0.0, "miss": 0.0, "error": 0.0}
    assert (b["fetch_p50_seconds"], b["fetch_p99_seconds"], b["last_errors"]) == (None, None, [])
    assert shown["totals"] == {name: a[name] for name in shown["totals"]}


def test_in_the_first_minute_rates_cover_the_time_since_the_start() -> None:
    counts = [0] * WIDTH
    counts[0] = 10
    shown = document({"a": Tally(counts)}, now=1005.0, started=1000.0)
    assert (shown["uptime_seconds"], shown["window_seconds"]) == (5.0, 5.0)
    assert shown["jobs"][0]["requests_per_second"] == 2.0
    assert document({}, now=1000.2, started=1000.0)["window_seconds"] == 1.0
