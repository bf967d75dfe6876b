"""
C{bench.revalidation} on a tiny run: a refresh of an unchanged value whose
origin sent an ETag transfers no body (a 304); one without a validator
transfers all of it.
"""

from __future__ import annotations

from bench.revalidation import report, run


def test_a_revalidated_refresh_transfers_no_body_and_a_plain_one_all_of_it() -> None:
    results = run(rounds=2, size=65536)
    assert [r.body_bytes for r in results["revalidated"]] == [0, 0]
    assert [r.body_bytes for r in results["downloaded"]] == [65536, 65536]
    assert all(r.seconds > 0 for rows in results.values() for r in rows)
    assert "| revalidated (ETag, 304) | 0 |" in report(results, 2, 65536)
