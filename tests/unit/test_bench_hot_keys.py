"""The arithmetic of C{bench.hot_keys} (its timings are not asserted: they are the machine's)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench import hot_keys


def test_the_stream_is_skewed_towards_the_first_keys() -> None:
    counts = Counter(hot_keys.zipf_keys(10_000, 20_000))
    (first, n), *_ = counts.most_common(1)
    assert first == "rfd:user:v1:id=0"
    assert n > 10 * counts["rfd:user:v1:id=99"]


def test_one_number_per_batch_of_calls(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(hot_keys.measure(3 * hot_keys.BATCH + 10)) == 3
    hot_keys.main(["--rounds", "1", "--requests", "2000"])
    assert "observe: median " in capsys.readouterr().out
