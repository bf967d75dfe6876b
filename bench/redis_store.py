"""
Benchmark of the Redis store, in one run on this machine:

1. Hit throughput: wrk against C{GET /v1/jobs/{job}} on a hit, refresherd on
   the memory store and on Redis, alternating; median req/s and p99 over the
   rounds, and the ratio Redis / memory.
2. Stampede across two processes: two refresherd processes on one Redis, an
   origin that takes 1 s, N concurrent clients split across both processes
   (L{bench.load}, one connection each), on an absent key and on a stale key;
   origin requests per stampede (the physical limit is 1) and client latency
   p50/p99.

Run from the repository root after C{bash .ci/run} (for the venv) with wrk
installed (C{apt-get install wrk}):

    .venv/bin/python -m bench.redis_store [--rounds 5] [--seconds 5] [--clients 200]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import burst
from tests.harness import Origin, Service, start_origin, start_service
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:redis_store:start -->", "<!-- bench:redis_store:end -->"

CONFIG = """
[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "{fresh}"
stale = "1h"
wait_timeout = "30s"
timeout = "30s"
early_refresh = 0
"""


def config_file(directory: Path, origin: Origin, fresh: str) -> Path:
    path = directory / f"refresherd-{fresh}.toml"
    path.write_text(CONFIG.format(origin=origin.url, fresh=fresh))
    return path


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    """Requests per second and p99 latency in milliseconds of one wrk run."""
    out = subprocess.run(
        ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rate, p99


def hit_throughput(
    directory: Path, origin: Origin, redis: RedisServer, rounds: int, seconds: int
) -> dict[str, list[tuple[float, float]]]:
    config = config_file(directory, origin, "1h")
    services = {
        "memory": start_service(config, "--store", "memory://"),
        "redis": start_service(config, "--store", redis.url()),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in services}
    try:
        for service in services.values():
            assert service.get("/v1/jobs/user?name=hot").status_code == 200
        for _ in range(rounds):
            for name, service in services.items():
                results[name].append(wrk(service.url + "/v1/jobs/user?name=hot", seconds, 32))
    finally:
        for service in services.values():
            service.stop()
    return results


def stampede(
    services: list[Service], origin: Origin, name: str, clients: int
) -> tuple[int, list[float]]:
    """Origin requests and client latencies (s) of one stampede on user C{name}."""
    before = origin.count(f"/users/{name}")
    urls = [services[i % len(services)].url + f"/v1/jobs/user?name={name}" for i in range(clients)]
    answers = burst(urls)
    assert {status for _, status in answers} == {200}, answers
    time.sleep(0.5)  # let a background refresh reach the origin, if one started late
    return origin.count(f"/users/{name}") - before, [latency for latency, _ in answers]


def stampedes(
    directory: Path, origin: Origin, redis: RedisServer, rounds: int, clients: int
) -> dict[str, list[tuple[int, list[float]]]]:
    # Fresh for 5 s: long enough that a value fetched during a stampede does not
    # go stale before the stampede is over (which would rightly refresh it again).
    config = config_file(directory, origin, "5s")
    services = [start_service(config, "--store", redis.url()) for _ in range(2)]
    results: dict[str, list[tuple[int, list[float]]]] = {"absent": [], "stale": []}
    try:
        for i in range(rounds):
            origin.set(f"/users/absent{i}", delay=1.0)
            results["absent"].append(stampede(services, origin, f"absent{i}", clients))
            origin.set(f"/users/stale{i}", delay=1.0)
            services[0].get(f"/v1/jobs/user?name=stale{i}")
            time.sleep(5.2)
            results["stale"].append(stampede(services, origin, f"stale{i}", clients))
    finally:
        for service in services:
            service.stop()
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(
    hits: dict[str, list[tuple[float, float]]],
    runs: dict[str, list[tuple[int, list[float]]]],
    args: argparse.Namespace,
) -> str:
    rate = {name: statistics.median(r for r, _ in rows) for name, rows in hits.items()}
    p99 = {name: statistics.median(p for _, p in rows) for name, rows in hits.items()}
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.split()[2]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"Redis {redis_version.removeprefix('v=')}; `python -m bench.redis_store --rounds "
        f"{args.rounds} --seconds {args.seconds} --clients {args.clients}`.",
        "",
        f"**Hit throughput** (wrk, 1 thread, 32 connections, {args.seconds} s, median of "
        f"{args.rounds} alternating rounds):",
        "",
        "| store | req/s | p99 ms | ratio to memory |",
        "|---|---|---|---|",
    ]
    for name in hits:
        lines.append(
            f"| {name} | {rate[name]:.0f} | {p99[name]:.2f} | {rate[name] / rate['memory']:.2f} |"
        )
    lines += [
        "",
        f"**Stampede across two processes on one Redis** ({args.clients} concurrent clients "
        f"split across both, origin takes 1 s, {args.rounds} stampedes each):",
        "",
        "| key | origin requests per stampede | client p50 s | client p99 s |",
        "|---|---|---|---|",
    ]
    for kind, rows in runs.items():
        counts = ", ".join(str(n) for n, _ in rows)
        latencies = [t for _, ts in rows for t in ts]
        lines.append(
            f"| {kind} | {counts} | {percentile(latencies, 0.5):.3f} | "
            f"{percentile(latencies, 0.99):.3f} |"
        )
    return "\n".join(lines)


def write_results(text: str) -> None:
    page = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    section = f"{START}\n{text}\n{END}"
    if START in page:
        marked = re.escape(START) + ".*?" + re.escape(END)
        page = re.sub(marked, lambda m: section, page, flags=re.S)
    else:
        page = page.rstrip() + "\n\n## Redis store\n\n" + section + "\n"
    RESULTS.write_text(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    origin = start_origin()
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            hits = hit_throughput(Path(directory), origin, redis, args.rounds, args.seconds)
            runs = stampedes(Path(directory), origin, redis, args.rounds, args.clients)
    finally:
        redis.cleanup()
        origin.server.shutdown()
    text = report(hits, runs, args)
    print(text)
    write_results(text)


if __name__ == "__main__":
    main()
