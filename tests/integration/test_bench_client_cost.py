"""
C{bench.client_cost} on a tiny run: every way reads the value, and the report
has a row for each, with the ratios to raw http.client.
"""

from __future__ import annotations

import argparse

from bench.client_cost import ASYNC_DIRECT, ASYNC_REDIS, BASE, DIRECT, report, run


def test_every_way_reads_the_value_and_is_reported() -> None:
    samples = run(rounds=1, calls=20)
    assert BASE in samples and "Client.get (http.client, now)" in samples
    assert "AsyncClient.get (asyncio)" in samples and "redis-py GET + parse" in samples
    assert DIRECT in samples and ASYNC_DIRECT in samples and ASYNC_REDIS in samples
    assert all(len(rounds) == 1 and len(rounds[0].times) == 20 for rounds in samples.values())
    text = report(samples, argparse.Namespace(rounds=1, calls=20, load=0.0))
    assert f"| {BASE} |" in text and "| 1.00× |" in text
    assert text.count("\n| ") == len(samples) + 1
    assert "A direct read against redis-py's GET" in text and "redis.asyncio's" in text
