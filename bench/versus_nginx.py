"""
Hit throughput of one refresherd process against nginx C{proxy_cache} with
one worker answering the same bytes, and what the access log costs, in one
run on this machine.

refresherd (memory store, one process) answers a hit of a 200-byte JSON value
on the raw endpoint (C{/v1/jobs/user/raw?name=hot}: the value as stored) and
on the JSON endpoint (C{/v1/jobs/user?name=hot}: the value in its JSON
object); nginx with one worker (L{bench/nginx-hits.conf.template}) sits in
front of it with C{proxy_cache}, so that once warm it answers the same bodies
and refresherd's headers from its cache without asking refresherd.  A second
refresherd process has C{[server] access_log = true} (text, to a pipe a
thread drains, as under systemd).  wrk (one thread, 50 connections) measures
each in turn, round after round; each ratio is the median of the ratios
measured within a round, with their range.

The machine may be shared, and req/s then say as much about the neighbours
as about the servers; so each run also counts the CPU time the server's
processes spent (C{/proc/PID/stat}: refresherd's process, nginx's worker),
and the requests answered per CPU second ("per core") are compared too.

Run from the repository root after C{bash .ci/run} (for the venv) with wrk
and nginx installed (C{apt-get install wrk nginx-light}):

    .venv/bin/python -m bench.versus_nginx [--rounds 5] [--seconds 5]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.peers_servers import nginx, version
from bench.shared_stores import write_section, wrk
from tests.harness import start_origin, start_service

START, END = "<!-- bench:versus_nginx:start -->", "<!-- bench:versus_nginx:end -->"
HEADING = "Hits against nginx, and the access log"
TEMPLATE = Path(__file__).with_name("nginx-hits.conf.template")
CONNECTIONS = 50
VALUE = b'{"name": "hot", "bio": "' + b"x" * 174 + b'"}'
assert len(VALUE) == 200

CONFIG = """
[server]
access_log = {access_log}

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
stale = "1h"
early_refresh = 0
"""

PATHS = {"raw": "/v1/jobs/user/raw?name=hot", "JSON": "/v1/jobs/user?name=hot"}


def cpu_seconds(pids: Sequence[int]) -> float:
    """The CPU time (user and system) the processes C{pids} have spent so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def workers(pid: int) -> list[int]:
    """nginx's worker processes, children of its master C{pid} (not its cache loader)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"worker process" in command:
            found.append(int(stat.parent.name))
    return found


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (apt-get install wrk nginx-light)")
    origin = start_origin()
    origin.set("/users/hot", body=VALUE)
    services = []
    rates: dict[str, list[float]] = {}
    per_cpu: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            urls: dict[str, str] = {}
            for log in ("false", "true"):
                config = directory / f"log-{log}.toml"
                config.write_text(CONFIG.format(access_log=log, origin=origin.url))
                services.append(start_service(config))
            plain, logged = services
            proxy, port = nginx(directory / "nginx", plain.ports["public"], 3600, TEMPLATE)
            try:
                pids: dict[str, list[int]] = {}
                for kind, path in PATHS.items():
                    urls[f"refresherd {kind}"] = plain.url + path
                    pids[f"refresherd {kind}"] = [plain.process.pid]
                    urls[f"nginx {kind}"] = f"http://127.0.0.1:{port}{path}"
                urls["refresherd JSON, access log"] = logged.url + PATHS["JSON"]
                pids["refresherd JSON, access log"] = [logged.process.pid]
                for url in urls.values():  # a value in each, and nginx's cache warm
                    for _ in range(2):
                        assert httpx.get(url).status_code == 200, url
                nginx_workers = workers(proxy.popen.pid)  # started by now
                assert nginx_workers, "no nginx worker process found"
                for kind in PATHS:
                    pids[f"nginx {kind}"] = nginx_workers
                rates = {name: [] for name in urls}
                per_cpu = {name: [] for name in urls}
                for _ in range(args.rounds):
                    for name, url in urls.items():
                        spent = cpu_seconds(pids[name])
                        rate = wrk(url, args.seconds, CONNECTIONS)[0]
                        spent = cpu_seconds(pids[name]) - spent
                        rates[name].append(rate)
                        per_cpu[name].append(rate * args.seconds / max(spent, 0.01))
            finally:
                proxy.stop()
            log_lines = len(logged.lines)
    finally:
        for service in services:
            service.stop()
        origin.server.shutdown()
    text = report(rates, per_cpu, args.rounds, args.seconds, log_lines)
    print(text)
    if not args.no_write:
        write_section(START, END, HEADING, text)


def ratio(rates: dict[str, list[float]], top: str, bottom: str) -> str:
    each = [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
    return f"{statistics.median(each):.2f} ({min(each):.2f} to {max(each):.2f})"


def report(
    rates: dict[str, list[float]],
    per_cpu: dict[str, list[float]],
    rounds: int,
    seconds: int,
    log_lines: int,
) -> str:
    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu = {name: statistics.median(values) for name, values in per_cpu.items()}
    nginx_version = version(["nginx", "-v"], r"nginx/([\d.]+)")
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, refresherd {git_commit()}, "
            f"Python {platform.python_version()}, "
            f"Twisted {importlib.metadata.version('twisted')}, "
            f"nginx {nginx_version}; "
            f"`python -m bench.versus_nginx --rounds {rounds} --seconds {seconds}` "
            f"(wrk, 1 thread, {CONNECTIONS} connections; a 200-byte JSON value; "
            f"{log_lines} lines written by the access log).",
            "",
            "| target | req/s (median) | rounds | requests per CPU second (median) |",
            "|---|---|---|---|",
            *(
                f"| {name} | {median[name]:.0f} | {', '.join(f'{r:.0f}' for r in values)} "
                f"| {cpu[name]:.0f} |"
                for name, values in rates.items()
            ),
            "",
            "| ratio (in the same round) | req/s: median (range) "
            "| per CPU second: median (range) | goal |",
            "|---|---|---|---|",
            *(
                f"| {label} | {ratio(rates, top, bottom)} | {ratio(per_cpu, top, bottom)} "
                f"| {goal} |"
                for label, top, bottom, goal in (
                    ("refresherd / nginx, raw", "refresherd raw", "nginx raw", "at least 0.5"),
                    ("refresherd / nginx, JSON", "refresherd JSON", "nginx JSON", "at least 0.5"),
                    (
                        "access log on / off, JSON",
                        "refresherd JSON, access log",
                        "refresherd JSON",
                        "",
                    ),
                )
            ),
        ]
    )


if __name__ == "__main__":
    main()
