"""
The arithmetic and the keys of C{bench.cluster_costs} (the machine and the
Redis version a report names are faked: they run commands).
"""

from __future__ import annotations

import argparse

import pytest

from bench import cluster_costs
from bench.cluster_costs import (
    ASYNCIO_REACTOR,
    DEFAULT_REACTOR,
    REDIS_PY_CLUSTER,
    REDIS_PY_ONE,
    Results,
    lookups,
    reactors_report,
    report,
)
from bench.throughput import Result, Sample, Target


def hash_tag(key: str) -> str:
    """The part of C{key} Redis Cluster hashes: between the first { and the next }."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


def test_todays_layout_has_an_entry_and_four_generation_keys_of_their_own() -> None:
    (lookup,) = lookups(1, tagged=False)
    assert lookup.entry == "rfd:tweets:v1:username=user0"
    assert lookup.generations == [
        "rfd:gen:hard:job:tweets",
        "rfd:gen:hard:tag:user:user0",
        "rfd:gen:soft:job:tweets",
        "rfd:gen:soft:tag:user:user0",
    ]
    assert len({hash_tag(k) for k in lookup.keys}) == 5


def test_the_co_located_layout_puts_every_key_of_a_lookup_under_one_hash_tag() -> None:
    for lookup in lookups(3, tagged=True):
        assert len(lookup.keys) == 5
        assert {hash_tag(k) for k in lookup.keys} == {hash_tag(lookup.entry)}


def test_ratios_are_per_round_against_single_and_reported_as_medians(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_costs, "machine", lambda: "a machine")
    monkeypatch.setattr(cluster_costs, "command_version", lambda *a: "7.9")
    monkeypatch.setattr(cluster_costs, "package_version", lambda name: "9.9")
    results = Results({way: [20.0, 40.0, 30.0] for way in ("single", REDIS_PY_ONE)})
    results.times["sequential"] = [100.0, 120.0, 60.0]
    results.times[REDIS_PY_CLUSTER] = [40.0, 40.0, 90.0]
    assert results.ratios("sequential") == pytest.approx([5.0, 3.0, 2.0])
    args = argparse.Namespace(rounds=3, reads=10, keys=2, seconds=1)
    text = report(results, args, (5.0, 2.5), "CROSSSLOT")
    assert " on a machine; Python " in text and ", Redis 7.9, redis-py 9.9; " in text
    assert "its one-server client: 2.00 (1.00 to 3.00)." in text
    assert "5.0 slots on 2.5 of the 3 nodes" in text
    assert "got `CROSSSLOT`" in text
    assert "| single | 1 | 30.0 | 1.00 | 1.00 to 1.00 |" in text
    assert "| sequential | 5, one after another | 100.0 | 3.00 | 2.00 to 5.00 |" in text


def test_reactors_are_reported_against_the_default_round_by_round() -> None:
    def result(name: str, *rates: float) -> Result:
        return Result(Target(name, "", 1, ""), [Sample(rate, 2.0) for rate in rates])

    text = reactors_report(
        {
            DEFAULT_REACTOR: result(DEFAULT_REACTOR, 1000.0, 2000.0, 1000.0),
            ASYNCIO_REACTOR: result(ASYNCIO_REACTOR, 900.0, 1000.0, 700.0),
        }
    )
    assert "| default (epoll) | 1000 | 2.00 | 1.00 | 1.00 to 1.00 |" in text
    assert "| asyncio (`-r asyncio`) | 900 | 2.00 | 0.70 | 0.50 to 0.90 |" in text
