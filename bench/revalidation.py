"""
What revalidation saves on the refresh of a value that has not changed, in
one run on this machine: C{twistd -n refresherd} (memory store) and a real
origin over loopback HTTP serving the same 1 MiB body for two jobs, one whose
origin sends an C{ETag} (each refresh is a conditional request, answered
304) and one whose origin sends none (each refresh downloads the body).
Each round asks both for a refresh (admin C{POST /v1/jobs/{job}/refresh}),
alternating which goes first, and waits until both entries are renewed.

Per refresh: the body bytes the origin sent, and the fetch's duration as
refresherd timed it (C{refresherd_fetch_duration_seconds}, from sending the
request to the last byte of the answer); medians over the rounds, and the
median of the per-round ratios.

Run from the repository root after C{bash .ci/run}:

    .venv/bin/python -m bench.revalidation [--rounds 31] [--size 1048576]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.shared_stores import write_section
from bench.throughput import machine, versions
from tests.harness import Origin, Service, start_origin, start_service, wait_until

START, END = "<!-- bench:revalidation:start -->", "<!-- bench:revalidation:end -->"
HEADING = "Revalidation: refreshing a value that has not changed"
JOBS = ("revalidated", "downloaded")

CONFIG = """
[jobs.revalidated]
url = "{origin}/revalidated"
fresh = "1h"
max_value_bytes = {limit}
early_refresh = 0

[jobs.downloaded]
url = "{origin}/downloaded"
fresh = "1h"
max_value_bytes = {limit}
early_refresh = 0
"""


@dataclass
class Refresh:
    body_bytes: int
    seconds: float


def fetch_seconds(service: Service) -> dict[str, float]:
    """The sum of each job's fetch durations so far."""
    text = httpx.get(service.admin_url + "/metrics", timeout=10).text
    sums = {}
    for job in JOBS:
        pattern = rf'refresherd_fetch_duration_seconds_sum\{{job="{job}"\}} ([0-9.e+-]+)'
        match = re.search(pattern, text)
        sums[job] = float(match.group(1)) if match else 0.0
    return sums


def fetched_at(service: Service, job: str) -> float:
    key = f"rfd%3A{job}%3Av1%3A"
    answer = httpx.get(f"{service.admin_url}/v1/entries/{key}", timeout=10)
    return float(answer.json()["fetched_at"]) if answer.status_code == 200 else 0.0


def sent(origin: Origin, job: str) -> int:
    return sum(len(body) for body in origin.bodies(f"/{job}"))


def refresh_one(service: Service, origin: Origin, job: str) -> Refresh:
    """Refresh C{job} once and wait until it is renewed: what it cost."""
    before_at, before_bytes = fetched_at(service, job), sent(origin, job)
    before_seconds = fetch_seconds(service)[job]
    answer = httpx.post(f"{service.admin_url}/v1/jobs/{job}/refresh", json={}, timeout=10)
    assert answer.status_code == 202, answer.text
    wait_until(lambda: fetched_at(service, job) > before_at, timeout=30, interval=0.005)
    wait_until(lambda: fetch_seconds(service)[job] > before_seconds, timeout=30)
    return Refresh(sent(origin, job) - before_bytes, fetch_seconds(service)[job] - before_seconds)


def run(rounds: int, size: int) -> dict[str, list[Refresh]]:
    origin = start_origin()
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    origin.set(
        "/revalidated",
        body=body,
        content_type="application/octet-stream",
        headers={"ETag": '"same"'},
        not_modified=True,
    )
    origin.set("/downloaded", body=body, content_type="application/octet-stream")
    results: dict[str, list[Refresh]] = {job: [] for job in JOBS}
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin.url, limit=2 * size))
        service = start_service(config)
        try:
            for job in JOBS:  # the first fetch of each: a whole download
                assert httpx.get(f"{service.url}/v1/jobs/{job}", timeout=30).status_code == 200
            for i in range(rounds):
                order = JOBS if i % 2 == 0 else JOBS[::-1]
                for job in order:
                    results[job].append(refresh_one(service, origin, job))
        finally:
            service.stop()
            origin.server.shutdown()
    return results


def report(results: dict[str, list[Refresh]], rounds: int, size: int) -> str:
    revalidated, downloaded = results["revalidated"], results["downloaded"]
    ratios = [r.seconds / d.seconds for r, d in zip(revalidated, downloaded, strict=True)]
    rows = [
        "| refresh of an unchanged value | body bytes from the origin, median | "
        "fetch time, median | p90 |",
        "|---|---|---|---|",
    ]
    for name, runs in (
        ("revalidated (ETag, 304)", revalidated),
        ("downloaded (no validator)", downloaded),
    ):
        seconds = sorted(r.seconds for r in runs)
        rows.append(
            f"| {name} | {statistics.median(r.body_bytes for r in runs):,.0f} | "
            f"{statistics.median(seconds) * 1000:.2f} ms | "
            f"{seconds[int(0.9 * (len(seconds) - 1))] * 1000:.2f} ms |"
        )
    return "\n".join(
        [
            f"{rounds} rounds, a {size:,}-byte value, refresherd on the memory store and the "
            "origin on loopback (`python -m bench.revalidation`).",
            "",
            *rows,
            "",
            f"Revalidated / downloaded fetch time, median of the per-round ratios: "
            f"**{statistics.median(ratios):.2f}**.",
            "",
            f"Machine: {machine()}; {versions()}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    options = parser.parse_args()
    results = run(options.rounds, options.size)
    text = report(results, options.rounds, options.size)
    write_section(START, END, HEADING, text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
