"""The arithmetic of C{bench.hit_cost}: responses taken apart, ratios round by round."""

from __future__ import annotations

import argparse

import pytest

from bench.hit_cost import Result, report, split


def test_a_response_is_split_into_status_headers_and_body() -> None:
    status, headers, body = split(b'HTTP/1.1 200 OK\r\nAge: 0\r\nETag: W/"x"\r\n\r\n{}')
    assert (status, headers, body) == (
        b"HTTP/1.1 200 OK",
        [(b"Age", b"0"), (b"ETag", b'W/"x"')],
        b"{}",
    )


def test_the_ratio_is_the_median_of_the_rounds_and_the_difference_of_the_medians() -> None:
    result = Result(bare=[30.0, 60.0, 40.0], refresherd=[40.0, 75.0, 80.0])
    assert result.ratios == pytest.approx([0.75, 0.8, 0.5])
    text = report(result, argparse.Namespace(rounds=3, requests=10))
    assert "| bare twisted.web Resource | 40.0 |" in text
    assert "| refresherd, memory store | 75.0 |" in text
    assert "| refresherd's own work (the difference) | 35.0 |" in text
    assert "| bare / refresherd | 0.75 | 0.50 to 0.80 |" in text
