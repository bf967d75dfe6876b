"""The arithmetic of C{bench.throughput}: ratios round by round, and how noisy the runs were."""

from __future__ import annotations

import pytest

from bench.throughput import (
    LABELS,
    Result,
    Sample,
    Target,
    cpu_times,
    ratios,
    stolen_note,
    stolen_share,
)


def results(rates: dict[str, list[float]]) -> dict[str, Result]:
    return {
        name: Result(Target(name, "http://x", 1, "1"), [Sample(r, 1.0) for r in rounds])
        for name, rounds in rates.items()
    }


def test_each_ratio_is_the_median_of_the_ratios_of_its_rounds() -> None:
    rates = {name: [100.0, 100.0, 100.0] for name in LABELS}
    # The machine halves its speed in round 2 and doubles it in round 3: the
    # memory store is 0.8 of the bare server in every round all the same.
    rates["bare-web"] = [100.0, 50.0, 200.0]
    rates["memory"] = [80.0, 40.0, 160.0]
    rates["redis"] = [60.0, 25.0, 180.0]  # 0.6, 0.5, 0.9
    by_name = {ratio.name: ratio for ratio in ratios(results(rates))}
    memory = by_name["memory / bare twisted.web"]
    assert memory.rounds == pytest.approx([0.8, 0.8, 0.8])
    assert memory.value == pytest.approx(0.8)
    redis = by_name["Redis / bare twisted.web"]
    assert redis.value == pytest.approx(0.6) and min(redis.rounds) == pytest.approx(0.5)
    assert redis.target == 0.6


def test_workers_scaling_is_compared_with_bare_klein_scaling_round_by_round() -> None:
    rates = {name: [100.0, 100.0] for name in LABELS}
    rates["workers-2"] = [150.0, 90.0]
    rates["bare-klein-2"] = [150.0, 100.0]
    by_name = {ratio.name: ratio for ratio in ratios(results(rates))}
    assert by_name["workers scaling / bare Klein scaling"].rounds == pytest.approx([1.0, 0.9])


def test_the_stolen_share_is_of_the_cpu_time_that_passed() -> None:
    assert stolen_share((10, 1000), (30, 1200)) == pytest.approx(0.1)
    assert stolen_share((10, 1000), (10, 1000)) == 0.0
    stolen, total = cpu_times()
    assert 0 <= stolen <= total and total > 0  # Linux: /proc/stat


def test_the_note_gives_the_median_and_the_worst_run() -> None:
    runs = {"a": Result(Target("a", "u", 1, "1"), [Sample(1, 1, s) for s in (0.0, 0.02, 0.3)])}
    assert stolen_note(runs) == (
        "The hypervisor took 2% of the CPU time during the median run, 30% during the worst."
    )
