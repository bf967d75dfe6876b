"""
The arithmetic of C{bench.hit_cost}: responses taken apart, ratios round by
round (the machine and the versions a report names are faked: they run
commands; the real ones: tests/integration/test_bench_hit_cost.py).
"""

from __future__ import annotations

import argparse

import pytest

from bench import hit_cost
from bench.hit_cost import Result, report, split


def test_a_response_is_split_into_status_headers_and_body() -> None:
    status, headers, body = split(b'HTTP/1.1 200 OK\r\nAge: 0\r\nETag: W/"x"\r\n\r\n{}')
    assert (status, headers, body) == (
        b"HTTP/1.1 200 OK",
        [(b"Age", b"0"), (b"ETag", b'W/"x"')],
        b"{}",
    )


def test_the_ratio_is_the_median_of_the_rounds_beside_the_medians(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hit_cost, "machine", lambda: "a machine")
    monkeypatch.setattr(hit_cost, "versions", lambda: "some versions")
    result = Result(bare=[30.0, 60.0, 40.0], refresherd=[40.0, 75.0, 80.0])
    assert result.ratios == pytest.approx([0.75, 0.8, 0.5])
    text = report(result, argparse.Namespace(rounds=3, requests=10))
    assert (
        " on a machine; some versions; `python -m bench.hit_cost --rounds 3 --requests 10`" in text
    )
    assert "| bare twisted.web Resource | 40.0 |" in text
    assert "| refresherd, memory store | 75.0 |" in text
    assert "difference" not in text
    assert "| bare / refresherd | 0.75 | 0.50 to 0.80 |" in text


def test_a_part_costs_the_median_of_its_rounds_and_is_put_back() -> None:
    from bench.hit_cost import parts_report, price

    class Slow:
        def work(self) -> float:
            return 5.0

    times = iter([12.0, 7.0, 11.0, 9.0, 15.0, 10.0])  # whole, then free, per round

    class FakeChannel:
        def time(self, requests: int) -> float:
            assert Slow().work() == (5.0 if len(seen) % 2 == 0 else 0.0)
            seen.append(requests)
            return next(times)

    seen: list[int] = []
    # A FakeChannel in place of bench's Channel: it times nothing, it answers what it is given.
    costs = price(FakeChannel(), ("work", Slow, "work", lambda self: 0.0), 3, 100)  # type: ignore[arg-type]
    assert costs == [5.0, 2.0, 5.0]
    assert seen == [100] * 6
    assert Slow().work() == 5.0  # put back
    assert (
        parts_report({"work": costs})
        == "| part of refresherd's own work | µs per hit |\n|---|---|\n| work | 5.0 |"
    )
