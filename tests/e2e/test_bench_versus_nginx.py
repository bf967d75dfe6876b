"""
C{bench.versus_nginx} in a tiny run (one round of a second): every server it
measures starts, answers the same bytes and is measured, and the report has
every row; the numbers are the machine's (not asserted); its arithmetic:
tests/unit/test_bench_versus_nginx.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import versus_nginx

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_measures_every_target() -> None:
    argv = ["-m", "bench.versus_nginx", "--rounds", "1", "--seconds", "1", "--no-write"]
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    names = ["refresherd raw", "nginx raw", "refresherd JSON", "nginx JSON"]
    names += [versus_nginx.CEILING, versus_nginx.TEXT_LOG, versus_nginx.JSON_LOG]
    names += [versus_nginx.WORKERS, versus_nginx.NGINX_WORKERS]
    for name in names:
        assert f"\n| {name} | " in text, name
    for label, *_ in versus_nginx.RATIOS:
        assert f"\n| {label} | " in text, label
    assert "At a fixed rate, " in text
    for name in versus_nginx.PACED:
        assert text.count(f"\n| {name} | ") == 2, name  # throughput, and at a fixed rate
    first = text.splitlines()[0]
    assert " as text, " in first and " as JSON)" in first and " 0 as " not in first, first
