"""
C{bench.cluster_costs} on a real 3-primary Redis Cluster, in a few lookups:
the Cluster is made, today's layout is spread and refused as the report
says, and every way of reading is timed (its arithmetic:
tests/unit/test_bench_cluster_costs.py).
"""

from __future__ import annotations

import argparse

from bench.cluster_costs import run


def test_a_short_run_reports_every_way_on_a_real_cluster() -> None:
    text = run(argparse.Namespace(rounds=1, reads=40, keys=4, seconds=0))
    assert "refresherd's put script on an entry and its lease got `CROSSSLOT`" in text
    assert "those 5 keys fell in 5.0 slots on " in text
    for way in ("single", "co-located", "sequential", "parallel", "entry only", "redirected"):
        assert f"\n| {way} | " in text, way
    assert "Reactors" not in text  # --seconds 0
