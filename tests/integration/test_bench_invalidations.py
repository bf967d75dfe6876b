"""
C{bench.invalidations} on a tiny run: two processes, each key read by both,
process 0 writing.  The broadcast channel delivers each write to both; tracking
only to the other reader (the writer is not told of its own writes).
"""

from __future__ import annotations

from bench.invalidations import run


def test_broadcast_reaches_every_process_and_tracking_only_the_other_reader() -> None:
    results = run([2], keys=16, rounds=1)[2]
    assert [r.messages for r in results["broadcast"]] == [2.0]
    assert [r.messages for r in results["tracking"]] == [1.0]
    assert all(r.bytes_out > 0 for rows in results.values() for r in rows)
