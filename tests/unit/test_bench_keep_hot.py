"""
C{bench.keep_hot}'s split of a traced run's purges: the windows and stale
answers of the keys a purge regenerated at once (kept hot then) apart from
those of the keys it did not, regenerated only at their next request.
"""

from __future__ import annotations

from collections import Counter

from bench.keep_hot import Run, Stale, by_regeneration


def test_purge_windows_split_by_whether_the_key_was_kept() -> None:
    run = Run(fresh=30.0, purges=[100.0, 103.0], hot=Counter(hit=98, stale=2))
    run.values = {0: {90.0, 100.05}, 10: {97.0, 101.5}}
    run.trace = [{"e": "purge", "t": 100.004, "covered": ["0"], "running": []}]
    run.stale = [
        Stale(at=100.03, rank=0, fetched_at=90.0, fresh_until=100.0),
        Stale(at=101.48, rank=10, fetched_at=97.0, fresh_until=100.0),
    ]
    lines = by_regeneration(run, hot=20).splitlines()
    assert "regenerated at the purge: 50 / 50 ms" in lines[1]
    assert "1 stale answers (1.00% " in lines[1]
    assert "not kept at the purge: 1500 / 1500 ms" in lines[2]
    assert "1 stale answers (1.00% " in lines[2]


def test_no_split_without_traced_purges() -> None:
    assert by_regeneration(Run(purges=[100.0]), hot=20) == ""
