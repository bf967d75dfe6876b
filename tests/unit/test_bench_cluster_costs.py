"""
The arithmetic and the keys of C{bench.cluster_costs} (the machine and the
Redis version a report names are faked: they run commands).
"""

from __future__ import annotations

import argparse

import pytest

from bench import cluster_costs
from bench.cluster_costs import WAYS, Results, lookups, report


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
    results = Results()
    for way in WAYS:
        results.times[way] = [20.0, 40.0, 30.0]
    results.times["sequential"] = [100.0, 120.0, 60.0]
    assert results.ratios("sequential") == pytest.approx([5.0, 3.0, 2.0])
    args = argparse.Namespace(rounds=3, reads=10, keys=2)
    text = report(results, args, (5.0, 2.5), "CROSSSLOT")
    assert " on a machine; Python " in text and ", Redis 7.9; " in text
    assert "5.0 slots on 2.5 of the 3 nodes" in text
    assert "got `CROSSSLOT`" in text
    assert "| single | 1 | 30.0 | 1.00 | 1.00 to 1.00 |" in text
    assert "| sequential | 5, one after another | 100.0 | 3.00 | 2.00 to 5.00 |" in text
