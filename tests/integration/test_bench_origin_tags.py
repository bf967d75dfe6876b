"""C{bench.origin_tags} on a tiny run: both paths answer hits through wrk on a real Redis."""

from __future__ import annotations

from bench.origin_tags import report, run


def test_tagged_and_plain_hits_are_measured_with_and_without_the_near_cache() -> None:
    results = run(rounds=1, seconds=1)
    assert set(results) == {"near cache", "no near cache"}
    assert all(rate > 0 for rates in results.values() for runs in rates.values() for rate in runs)
    assert "| near cache |" in report(results, 1, 1)
