"""
C{bench.keep_hot} on a tiny run: with keep_hot the hottest keys are refreshed
ahead (reason C{hot}) and soft purges regenerate them (reason C{purge});
without it neither happens.
"""

from __future__ import annotations

from bench.keep_hot import report, run_both


def test_keep_hot_refreshes_ahead_and_regenerates_only_when_on() -> None:
    results = run_both(seconds=4, hot=10, clients=4, purge_every=1.0, origin_ms=5, fresh=2.0)
    off, on = results["keep_hot = 0"], results["keep_hot = 10"]
    assert set(off.refreshes) == {"request"}
    assert on.refreshes.get("hot", 0) > 0 and on.refreshes.get("purge", 0) > 0
    assert on.purges and sum(on.all.values()) > 0
    assert "| keep_hot = 10 |" in report(results, 10, 1.0, 5)
