"""
Benchmark of access logging, in one run on this machine: wrk against
C{GET /v1/jobs/{job}} on a hit (memory store), refresherd with
C{[server] access_log} off, on with text logs, and on with C{--log-format
json}, alternating; median req/s and p99 over the rounds, and the ratio to
access logging off.  Logs go to a pipe that a thread drains, as under systemd
or a container runtime.

Run from the repository root after C{bash .ci/run} with wrk installed:

    .venv/bin/python -m bench.access_log [--rounds 5] [--seconds 5]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.shared_stores import write_section, wrk
from tests.harness import start_origin, start_service

START, END = "<!-- bench:access_log:start -->", "<!-- bench:access_log:end -->"

CONFIG = """
[server]
access_log = {access_log}

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
early_refresh = 0
"""

VARIANTS = {
    "off": ("false", ()),
    "text": ("true", ()),
    "json": ("true", ("--log-format", "json")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    origin = start_origin()
    services = {}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (access_log, options) in VARIANTS.items():
                config = Path(tmp) / f"{name}.toml"
                config.write_text(CONFIG.format(access_log=access_log, origin=origin.url))
                services[name] = start_service(config, *options)
                assert services[name].get("/v1/jobs/user?name=hot").status_code == 200
            for _ in range(args.rounds):
                for name, service in services.items():
                    results[name].append(
                        wrk(service.url + "/v1/jobs/user?name=hot", args.seconds, 32)
                    )
            lines = {name: len(service.lines) for name, service in services.items()}
    finally:
        for service in services.values():
            service.stop()
        origin.server.shutdown()
    rate = {name: statistics.median(r for r, _ in rows) for name, rows in results.items()}
    p99 = {name: statistics.median(p for _, p in rows) for name, rows in results.items()}
    text = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}; "
            f"`python -m bench.access_log --rounds {args.rounds} --seconds {args.seconds}` "
            "(wrk, 1 thread, 32 connections, memory store, a hit; median of alternating rounds; "
            f"{lines['json']} log lines written by the json run).",
            "",
            "| access log | req/s | p99 ms | ratio to off |",
            "|---|---|---|---|",
            *(
                f"| {name} | {rate[name]:.0f} | {p99[name]:.2f} | {rate[name] / rate['off']:.2f} |"
                for name in VARIANTS
            ),
        ]
    )
    print(text)
    write_section(START, END, "Access logging", text)


if __name__ == "__main__":
    main()
