"""The arithmetic of C{bench.versus_nginx} (its timings are the machine's: not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import versus_nginx

NAMES = [
    "refresherd raw",
    "nginx raw",
    versus_nginx.CEILING,
    versus_nginx.FAST_CEILING,
    "refresherd JSON",
    "nginx JSON",
    versus_nginx.TEXT_LOG,
    versus_nginx.JSON_LOG,
    versus_nginx.WORKERS,
    versus_nginx.NGINX_WORKERS,
]


def test_ratios_are_medians_of_the_ratios_within_each_round() -> None:
    rates = {"a": [1.0, 4.0, 9.0], "b": [2.0, 2.0, 3.0]}
    assert versus_nginx.ratio(rates, "a", "b") == "2.00 (0.50 to 3.00)"


def test_every_ratio_compares_two_measured_targets() -> None:
    for _, top, bottom, _ in versus_nginx.RATIOS:
        assert top in NAMES and bottom in NAMES


def test_the_report_names_each_target_and_each_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versus_nginx, "version", lambda argv, pattern: "1.22.1")
    monkeypatch.setattr(versus_nginx, "git_commit", lambda: "abc1234")
    rates = {name: [1000.0 * (i + 1), 1000.0 * (i + 2)] for i, name in enumerate(NAMES)}
    per_cpu = {name: [2 * r for r in values] for name, values in rates.items()}
    paced = versus_nginx.Paced(
        500.0,
        delays={"refresherd raw": 99.5, "nginx raw": 99.9},
        rates={"refresherd raw": [498.0, 502.0, 499.0], "nginx raw": [500.0, 500.0, 501.0]},
        p50={"refresherd raw": [0.5, 0.7, 0.6], "nginx raw": [0.2, 0.2, 0.2]},
        p99={"refresherd raw": [3.0, 1.0, 2.0], "nginx raw": [1.0, 1.5, 1.25]},
        stolen=[0.0, 0.5],
    )
    log_lines = {versus_nginx.TEXT_LOG: 42, versus_nginx.JSON_LOG: 41}
    stolen = [0.01, 0.02, 0.1]
    text = versus_nginx.report(rates, per_cpu, stolen, paced, 2, 3, log_lines)
    assert "--rounds 2 --seconds 3" in text and "42 as text, 41 as JSON" in text
    assert "took 2.0% (at most 10.0%) of the machine's CPU time during these runs, " in text
    assert "25.0% (at most 50.0%) during those at a fixed rate" in text
    for name in NAMES:
        assert f"| {name} | " in text
    # per CPU second twice the req/s: half a core busy
    assert "| refresherd raw | 1500 | 1000, 2000 | 3000 | 0.50 |" in text
    # raw: 1000/2000 and 2000/3000, in both columns (per CPU second: twice each)
    assert "| refresherd / nginx, raw | 0.58 (0.50 to 0.67) | 0.58 (0.50 to 0.67) |" in text
    for label, _, _, goal in versus_nginx.RATIOS:
        assert f"| {label} | " in text and text.count(goal) >= 1
    assert "At a fixed rate, 500 requests a second (half of refresherd's raw req/s" in text
    assert "--rate" not in text
    paced.given = True
    given = versus_nginx.report(rates, per_cpu, stolen, paced, 2, 3, log_lines)
    assert "--seconds 3 --rate 500`" in given and "500 requests a second (as given;" in given
    assert "| refresherd raw | 99.50 | 499 | 0.60 | 2.00 | 3.00, 1.00, 2.00 |" in text
    assert "| nginx raw | 99.90 | 500 | 0.20 | 1.25 | 1.00, 1.50, 1.25 |" in text


def test_the_delay_left_is_the_naive_one_less_the_rest_of_a_cycle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # 50 connections at 500 a second: 100 ms each; if they achieve 400 a
    # second, a cycle took 125 ms: 25 ms besides the delay, so 75 ms are left.
    scripts: list[str] = []

    def wrk(url: str, seconds: int, connections: int, script: Path) -> tuple[float, float, float]:
        scripts.append(script.read_text())
        return 400.0, 1.0, 2.0

    monkeypatch.setattr(versus_nginx, "wrk_latencies", wrk)
    assert versus_nginx.calibrate(tmp_path, "x", "http://x", 500.0, 1) == pytest.approx(75.0)
    assert "mean\n-- 100.000 ms" in scripts[0] and "-100.000 * math.log" in scripts[0]
    # Slower than the rate asked for even without a delay: none.
    monkeypatch.setattr(versus_nginx, "wrk_latencies", lambda *args: (100.0, 1.0, 2.0))
    assert versus_nginx.calibrate(tmp_path, "x", "http://x", 500.0, 1) == 0.0


def test_access_lines_are_counted_in_either_format() -> None:
    output = [
        "refresherd: public API listening on 127.0.0.1:1\n",
        "2026-12-02T07:10:00+0000 [refresherd.access#info] GET /v1/jobs/{job} 200 0.0012s x\n",
        '{"time": "x", "level": "info", "namespace": "refresherd.access", "message": "GET"}\n',
    ]
    assert versus_nginx.access_lines(output) == 2
