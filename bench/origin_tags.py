"""
What an origin's tags cost a hit, in one run on this machine: refresherd on a
real redis-server, a hit on a value whose origin sent C{Surrogate-Key} tags
(its purge marks include theirs, read with the entry) against a hit on the
same value without them, through wrk; once with the near cache (the default)
and once without (C{near_ttl=0}: every hit reads Redis).  The two paths
alternate in each round; the result is the median req/s of each and the
median of the per-round ratios tagged / plain.

Run from the repository root after C{bash .ci/run} with wrk installed:

    .venv/bin/python -m bench.origin_tags [--rounds 5] [--seconds 5]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.shared_stores import write_section, wrk
from bench.throughput import machine, versions
from tests.harness import start_origin, start_service
from tests.redis_server import RedisServer

START, END = "<!-- bench:origin_tags:start -->", "<!-- bench:origin_tags:end -->"
HEADING = "What an origin's tags cost a hit"
BODY = b'{"name": "small", "tweets": ["hello"]}'

CONFIG = """
[jobs.page]
args = ["name"]
url = "{origin}/pages/{{name}}"
freshness = "origin"
fresh = "1h"
early_refresh = 0
tags = ["page"]
"""

Rates = dict[str, dict[str, list[float]]]


def run(rounds: int, seconds: int) -> Rates:
    origin = start_origin()
    origin.set("/pages/tagged", body=BODY, headers={"Surrogate-Key": "product:7 sale"})
    origin.set("/pages/plain", body=BODY)
    server = RedisServer()
    server.start()
    results: Rates = {}
    try:
        with tempfile.TemporaryDirectory() as directory:
            config = Path(directory) / "refresherd.toml"
            config.write_text(CONFIG.format(origin=origin.url))
            for store, url in (
                ("near cache", server.url()),
                ("no near cache", server.url() + "?near_ttl=0"),
            ):
                service = start_service(config, "--store", url)
                results[store] = {"tagged": [], "plain": []}
                try:
                    for name in ("tagged", "plain"):
                        assert service.get(f"/v1/jobs/page?name={name}").status_code == 200
                    for i in range(rounds):
                        for name in ("tagged", "plain") if i % 2 == 0 else ("plain", "tagged"):
                            url = f"{service.url}/v1/jobs/page?name={name}"
                            results[store][name].append(wrk(url, seconds, 32)[0])
                finally:
                    service.stop()
    finally:
        server.cleanup()
        origin.server.shutdown()
    return results


def report(results: Rates, rounds: int, seconds: int) -> str:
    rows = [
        "| Redis store | plain hit, req/s | tagged hit, req/s | tagged / plain |",
        "|---|---|---|---|",
    ]
    for store, rates in results.items():
        ratios = [t / p for t, p in zip(rates["tagged"], rates["plain"], strict=True)]
        rows.append(
            f"| {store} | {statistics.median(rates['plain']):,.0f} | "
            f"{statistics.median(rates['tagged']):,.0f} | {statistics.median(ratios):.2f} |"
        )
    return "\n".join(
        [
            f"{rounds} rounds of {seconds} s each (`python -m bench.origin_tags`), wrk -t1 -c32, "
            "a small JSON value whose origin sent `Surrogate-Key: product:7 sale` (tagged) or "
            'nothing (plain), job tags `["page"]`.',
            "",
            *rows,
            "",
            f"Machine: {machine()}; {versions()}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    options = parser.parse_args()
    results = run(options.rounds, options.seconds)
    text = report(results, options.rounds, options.seconds)
    write_section(START, END, HEADING, text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
