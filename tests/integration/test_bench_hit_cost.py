"""
What a C{bench.hit_cost} report says it measured on: this machine and the
versions of what ran, found by running commands (C{redis-server},
C{memcached}...); its arithmetic: tests/unit/test_bench_hit_cost.py.
"""

from __future__ import annotations

import argparse
import platform
import re

from bench.hit_cost import Result, report


def test_the_report_names_this_machine_and_the_versions_measured() -> None:
    text = report(Result(bare=[1.0], refresherd=[2.0]), argparse.Namespace(rounds=1, requests=5))
    first = text.splitlines()[0]
    assert first.startswith("Measured ") and f" on {platform.machine()} (" in first, first
    assert f"; Python {platform.python_version()}, " in first, first
    assert re.search(r", Twisted [0-9][^,]*, .*, Redis [0-9][^,]*, memcached [0-9]", first), first
    assert "; `python -m bench.hit_cost --rounds 1 --requests 5`. " in first, first
