"""The arithmetic of C{bench.throughput}: ratios round by round."""

from __future__ import annotations

import pytest

from bench.throughput import LABELS, Result, Sample, Target, ratios


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
