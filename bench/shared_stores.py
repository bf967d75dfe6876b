"""
Benchmark of the shared stores (Redis, memcached), in one run on this machine:

1. Hit throughput: wrk against C{GET /v1/jobs/{job}} on a hit, refresherd on
   the memory store, on Redis and on memcached, alternating; median req/s and
   p99 over the rounds, and the ratio to memory.  Once for a small JSON value,
   once for a 3 MiB value on the raw endpoint (in three chunks on memcached).
2. Stampede across two processes: two refresherd processes on one server of
   each shared store, an origin that takes 1 s, N concurrent clients split
   across both processes (L{bench.load}, one connection each), on an absent
   key and on a stale key; origin requests per stampede (the physical limit is
   1) and client latency p50/p99.

Run from the repository root after C{bash .ci/run} (for the venv) with wrk
installed (C{apt-get install wrk}):

    .venv/bin/python -m bench.shared_stores [--rounds 5] [--seconds 5] [--clients 200]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.load import burst
from tests.harness import Origin, Service, start_origin, start_service
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:shared_stores:start -->", "<!-- bench:shared_stores:end -->"
LARGE = 3 * 1024 * 1024

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

Servers = dict[str, RedisServer | MemcachedServer]
Hits = dict[str, dict[str, list[tuple[float, float]]]]
Stampedes = dict[str, dict[str, list[tuple[int, list[float]]]]]


def config_file(directory: Path, origin: Origin, fresh: str) -> Path:
    path = directory / f"refresherd-{fresh}.toml"
    path.write_text(CONFIG.format(origin=origin.url, fresh=fresh))
    return path


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    """Requests per second and p99 latency in milliseconds of one wrk run."""
    rate, _, p99 = wrk_latencies(url, seconds, connections)
    return rate, p99


def wrk_latencies(
    url: str, seconds: int, connections: int, script: Path | None = None
) -> tuple[float, float, float]:
    """
    Requests per second, p50 and p99 latency in milliseconds of one wrk run
    (one thread; C{script}: its Lua script); an error if an answer was not 2xx or 3xx.
    """
    argv = ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds}s", url]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if failed:
        raise RuntimeError(f"wrk {url}: {failed.group(1)} answers not 2xx or 3xx:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def latency(percent: int) -> float:
        found = re.search(rf"\b{percent}%\s+([\d.]+)(us|ms|s)\b", out)
        assert found is not None, out
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    return rate, latency(50), latency(99)


def hit_throughput(
    directory: Path, origin: Origin, servers: Servers, rounds: int, seconds: int
) -> Hits:
    """For each value size, wrk on a hit through each store, the stores alternating."""
    config = config_file(directory, origin, "1h")
    origin.set("/users/small", body=b'{"name": "small", "tweets": ["hello"]}')
    origin.set(
        "/users/large", body=os.urandom(LARGE).replace(b"{n}", b"{m}"), content_type="image/png"
    )
    paths = {"small JSON": "/v1/jobs/user?name=small", "3 MiB raw": "/v1/jobs/user/raw?name=large"}
    services = {"memory": start_service(config, "--store", "memory://")}
    for name, server in servers.items():
        services[name] = start_service(config, "--store", server.url())
    results: Hits = {size: {name: [] for name in services} for size in paths}
    try:
        for size, path in paths.items():
            for service in services.values():
                assert service.get(path).status_code == 200
            for _ in range(rounds):
                for name, service in services.items():
                    results[size][name].append(wrk(service.url + path, seconds, 32))
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
    directory: Path,
    origin: Origin,
    store: str,
    server: RedisServer | MemcachedServer,
    rounds: int,
    clients: int,
) -> dict[str, list[tuple[int, list[float]]]]:
    # Fresh for 5 s: long enough that a value fetched during a stampede does not
    # go stale before the stampede is over (which would rightly refresh it again).
    config = config_file(directory, origin, "5s")
    services = [start_service(config, "--store", server.url()) for _ in range(2)]
    results: dict[str, list[tuple[int, list[float]]]] = {"absent": [], "stale": []}
    try:
        for i in range(rounds):
            absent, stale = f"{store}-absent{i}", f"{store}-stale{i}"
            origin.set(f"/users/{absent}", delay=1.0)
            results["absent"].append(stampede(services, origin, absent, clients))
            origin.set(f"/users/{stale}", delay=1.0)
            services[0].get(f"/v1/jobs/user?name={stale}")
            time.sleep(5.2)
            results["stale"].append(stampede(services, origin, stale, clients))
    finally:
        for service in services:
            service.stop()
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def version(argv: list[str], pattern: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    match = re.search(pattern, out)
    return match.group(1) if match else "?"


def report(hits: Hits, runs: Stampedes, args: argparse.Namespace) -> str:
    redis = version(["redis-server", "--version"], r"v=(\S+)")
    memcached = version(["memcached", "-V"], r"memcached (\S+)")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"Redis {redis}, memcached {memcached}; `python -m bench.shared_stores --rounds "
        f"{args.rounds} --seconds {args.seconds} --clients {args.clients}`.",
        "",
        f"**Hit throughput** (wrk, 1 thread, 32 connections, {args.seconds} s, median of "
        f"{args.rounds} alternating rounds):",
        "",
        "| value | store | req/s | p99 ms | ratio to memory |",
        "|---|---|---|---|---|",
    ]
    for size, by_store in hits.items():
        rate = {name: statistics.median(r for r, _ in rows) for name, rows in by_store.items()}
        p99 = {name: statistics.median(p for _, p in rows) for name, rows in by_store.items()}
        for name in by_store:
            lines.append(
                f"| {size} | {name} | {rate[name]:.0f} | {p99[name]:.2f} | "
                f"{rate[name] / rate['memory']:.2f} |"
            )
    lines += [
        "",
        f"**Stampede across two processes on one server** ({args.clients} concurrent clients "
        f"split across both, origin takes 1 s, {args.rounds} stampedes each):",
        "",
        "| store | key | origin requests per stampede | client p50 s | client p99 s |",
        "|---|---|---|---|---|",
    ]
    for store, by_kind in runs.items():
        for kind, rows in by_kind.items():
            counts = ", ".join(str(n) for n, _ in rows)
            latencies = [t for _, ts in rows for t in ts]
            lines.append(
                f"| {store} | {kind} | {counts} | {percentile(latencies, 0.5):.3f} | "
                f"{percentile(latencies, 0.99):.3f} |"
            )
    return "\n".join(lines)


def write_section(start: str, end: str, heading: str, text: str) -> None:
    """Put C{text} between the markers C{start} and C{end} of docs/benchmarks.md."""
    page = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    section = f"{start}\n{text}\n{end}"
    if start in page:
        marked = re.escape(start) + ".*?" + re.escape(end)
        page = re.sub(marked, lambda m: section, page, flags=re.S)
    else:
        page = page.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    RESULTS.write_text(page)


@contextmanager
def running_servers() -> Iterator[Servers]:
    servers: Servers = {"redis": RedisServer(), "memcached": MemcachedServer()}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    origin = start_origin()
    try:
        with running_servers() as servers, tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            hits = hit_throughput(directory, origin, servers, args.rounds, args.seconds)
            runs = {
                name: stampedes(directory, origin, name, server, args.rounds, args.clients)
                for name, server in servers.items()
            }
    finally:
        origin.server.shutdown()
    text = report(hits, runs, args)
    print(text)
    write_section(START, END, "Shared stores", text)


if __name__ == "__main__":
    main()
