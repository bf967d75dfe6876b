"""
C{bench.django_page} on a tiny run, in a process of its own (it configures
Django itself): every way renders the same page, and the report has a row for
each, with its ratio to the C{{% cache %}} page.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_way_renders_the_same_page_and_is_reported() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.django_page",
            "--rounds",
            "1",
            "--renders",
            "2",
            "--no-write",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 7 and "| 1.00× |" in rows[1]  # the heading, then six ways
    assert any("refreshed_batch, direct reads" in row for row in rows)
