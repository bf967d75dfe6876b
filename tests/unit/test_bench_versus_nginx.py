"""The arithmetic of C{bench.versus_nginx} (its timings are the machine's: not asserted)."""

from __future__ import annotations

import pytest

from bench import versus_nginx

NAMES = [
    "refresherd raw",
    "nginx raw",
    "refresherd JSON",
    "nginx JSON",
    "refresherd JSON, access log",
]


def test_ratios_are_medians_of_the_ratios_within_each_round() -> None:
    rates = {"a": [1.0, 4.0, 9.0], "b": [2.0, 2.0, 3.0]}
    assert versus_nginx.ratio(rates, "a", "b") == "2.00 (0.50 to 3.00)"


def test_the_report_names_each_target_and_each_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versus_nginx, "version", lambda argv, pattern: "1.22.1")
    monkeypatch.setattr(versus_nginx, "git_commit", lambda: "abc1234")
    rates = {name: [1000.0 * (i + 1), 1000.0 * (i + 2)] for i, name in enumerate(NAMES)}
    per_cpu = {name: [2 * r for r in values] for name, values in rates.items()}
    text = versus_nginx.report(rates, per_cpu, rounds=2, seconds=3, log_lines=42)
    assert "--rounds 2 --seconds 3" in text and "42 lines" in text
    for name in NAMES:
        assert f"| {name} | " in text
    # raw: 1000/2000 and 2000/3000, in both columns (per CPU second: twice each)
    assert "| refresherd / nginx, raw | 0.58 (0.50 to 0.67) | 0.58 (0.50 to 0.67) |" in text
    assert "| access log on / off, JSON | " in text
