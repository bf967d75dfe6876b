"""
What a read costs an application, per call, on a hit of a 10 KB JSON value:
L{refresherd.client.Client.get} (its own transport, C{http.client}), the same
client over httpx (the transport it had before), the sync calls of other
libraries on the same request (raw C{http.client} on a kept-alive connection,
urllib3, httpx), L{refresherd.client.AsyncClient.get}, redis-py GET of the
same entry with its metadata and value parsed, and the direct reads of both
clients (C{redis_url}) against redis-py's GET, sync and async
(C{redis.asyncio}).  One refresherd on a real
redis-server (one process, its defaults otherwise), one origin; each round
times every way in turn, one call at a time from one thread, with the calls
alternating so that the machine's drift touches them all alike.

Each way's time is the median and p99 of every call; its ratio is the median
over the rounds of (its median in that round / raw http.client's median in that
round); its own cost is its median minus raw http.client's.

Run from the repository root after C{bash .ci/run} (and
C{.venv/bin/pip install ".[bench]"} for redis-py):

    .venv/bin/python -m bench.client_cost [--rounds 9] [--calls 2000]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio
import urllib3

from bench.shared_stores import write_section
from bench.throughput import machine, origin_server, versions
from refresherd.client import AsyncClient, Client
from tests.harness import Service, start_service
from tests.redis_server import RedisServer

BASE = "raw http.client + json.loads"
NOW = "Client.get (http.client, now)"
BEFORE = "Client.get over httpx (before)"
ASYNC = "AsyncClient.get (asyncio)"
DIRECT = "Client.get, direct read (redis_url)"
REDIS = "redis-py GET + parse"
ASYNC_DIRECT = "AsyncClient.get, direct read (redis_url)"
ASYNC_REDIS = "redis.asyncio GET + parse"
STRIDE = 100
"""Calls of one way before the next way's turn."""
START, END = "<!-- bench:client_cost:start -->", "<!-- bench:client_cost:end -->"
HEADING = "What a read costs the application"
PATH = "/v1/jobs/big?id=1"
KEY = "rfd:big:v1:id=1"
HEADERS = {"Accept": "application/json", "User-Agent": "bench"}

CONFIG = """
[jobs.big]
args = ["id"]
url = "{origin}/big/{{id}}"
fresh = "1d"
"""


def value() -> bytes:
    """A JSON value of about 10 KB: a list of small objects, as an API answers."""
    items = [
        {"id": n, "name": f"item {n}", "tags": ["a", "b"], "score": n * 1.5} for n in range(150)
    ]
    body = json.dumps(items).encode()
    assert 9_000 < len(body) < 11_000, len(body)
    return body


Way = Callable[[], Any]


def parsed(entry: Any) -> Any:
    """An entry as redis-py's GET gives it, its metadata line and JSON value parsed."""
    assert isinstance(entry, bytes)
    line, _, body = entry.partition(b"\n")
    return json.loads(line), json.loads(body)


def ways(service: Service, store: RedisServer) -> dict[str, Way]:
    """Each way of reading the value: a function that does one read."""
    port = service.ports["public"]
    raw = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def raw_http_client() -> Any:
        raw.request("GET", PATH, headers=HEADERS)
        return json.loads(raw.getresponse().read())

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, timeout=10.0)

    def urllib3_get() -> Any:
        return json.loads(pool.request("GET", PATH, headers=HEADERS).data)

    plain_httpx = httpx.Client(timeout=10)

    def httpx_get() -> Any:
        return json.loads(plain_httpx.get(service.url + PATH, headers=HEADERS).content)

    client = Client(service.url, service.admin_url, timeout=10)
    old = Client(service.url, service.admin_url, timeout=10, transport=httpx.HTTPTransport())
    connection = redis.Redis(host="127.0.0.1", port=store.port)
    direct = Client(service.url, service.admin_url, timeout=10, redis_url=store.url())
    answer = direct.get("big", id=1)  # the layout read once, then hits from Redis
    assert answer["status"] == "hit", answer["status"]

    def redis_get() -> Any:
        return parsed(connection.get(KEY))

    return {
        BASE: raw_http_client,
        NOW: lambda: client.get("big", id=1),
        BEFORE: lambda: old.get("big", id=1),
        "urllib3 + json.loads": urllib3_get,
        "httpx.Client.get + json.loads": httpx_get,
        REDIS: redis_get,
        DIRECT: lambda: direct.get("big", id=1),
    }


@dataclass
class Sample:
    """One round of one way: the wall time of each call, and the CPU time per call (µs)."""

    times: list[float]
    cpu: float


def time_calls(way: Way, calls: int) -> Sample:
    """The time of each of C{calls} calls, and this thread's CPU time per call."""
    times = []
    clock = time.perf_counter_ns
    cpu_start = time.thread_time_ns()
    for _ in range(calls):
        start = clock()
        way()
        times.append((clock() - start) / 1000)
    return Sample(times, (time.thread_time_ns() - cpu_start) / 1000 / calls)


def time_async_calls(
    loop: asyncio.AbstractEventLoop, way: Callable[[], Awaitable[Any]], calls: int
) -> Sample:
    """As L{time_calls}, for awaited calls on C{loop}."""

    async def run() -> Sample:
        times = []
        clock = time.perf_counter_ns
        cpu_start = time.thread_time_ns()
        for _ in range(calls):
            start = clock()
            await way()
            times.append((clock() - start) / 1000)
        return Sample(times, (time.thread_time_ns() - cpu_start) / 1000 / calls)

    return loop.run_until_complete(run())


def p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100)[98]


def measure(
    service: Service, store: RedisServer, rounds: int, calls: int
) -> dict[str, list[Sample]]:
    """
    C{rounds} rounds of C{calls} calls of each way; within a round the ways
    take turns by C{STRIDE} calls, so that the machine's drift touches them alike.
    """
    readers = ways(service, store)
    loop = asyncio.new_event_loop()
    async_client = AsyncClient(service.url, service.admin_url, timeout=10)
    async_direct = AsyncClient(service.url, service.admin_url, timeout=10, redis_url=store.url())
    async_redis = redis.asyncio.Redis(host="127.0.0.1", port=store.port)
    for client in (async_client, async_direct):
        first = loop.run_until_complete(client.get("big", id=1))
        assert first["status"] == "hit", {k: v for k, v in first.items() if k != "value"}

    async def redis_get() -> Any:
        return parsed(await async_redis.get(KEY))

    async_ways: dict[str, Callable[[], Awaitable[Any]]] = {
        ASYNC: lambda: async_client.get("big", id=1),
        ASYNC_REDIS: redis_get,
        ASYNC_DIRECT: lambda: async_direct.get("big", id=1),
    }
    timers: dict[str, Callable[[int], Sample]] = {
        name: functools.partial(time_calls, way) for name, way in readers.items()
    }
    for name, awaited in async_ways.items():
        timers[name] = functools.partial(time_async_calls, loop, awaited)
    for timer in timers.values():
        timer(max(1, calls // 10))  # warm up: connections open, code paths hot
    samples: dict[str, list[Sample]] = {name: [] for name in timers}
    for n in range(rounds):
        parts: dict[str, list[Sample]] = {name: [] for name in timers}
        for start in range(0, calls, STRIDE):
            for name, timer in timers.items():
                parts[name].append(timer(min(STRIDE, calls - start)))
        for name, pieces in parts.items():
            times = [t for piece in pieces for t in piece.times]
            cpu = sum(piece.cpu * len(piece.times) for piece in pieces) / len(times)
            samples[name].append(Sample(times, cpu))
        medians = ", ".join(
            f"{statistics.median(s[-1].times):.0f}/{s[-1].cpu:.0f}" for s in samples.values()
        )
        print(f"bench: round {n + 1}/{rounds}: median/CPU µs {medians}", file=sys.stderr)
    for client in (async_client, async_direct):
        loop.run_until_complete(client.aclose())
    loop.run_until_complete(async_redis.aclose())
    loop.close()
    return samples


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> str:
    base_rounds = samples[BASE]
    lines = [
        f"`python -m bench.client_cost --rounds {args.rounds} --calls {args.calls}`: "
        f"{machine()}; {versions()}, redis-py {redis.__version__}, "
        f"urllib3 {package_version('urllib3')}, httpx {httpx.__version__}. "
        f"Load average at the start {args.load:.1f}.",
        "",
        "A hit of a 10 KB JSON value (`GET /v1/jobs/big?id=1`, refresherd on Redis), one call at "
        "a time from one thread on a kept-alive connection. "
        "Wall: the median and p99 of every call. CPU: the calling thread's CPU time per call "
        "(the median over the rounds), which the service's and the machine's load do not touch. "
        "Ratios: the median over the rounds of each way's median (or CPU) / raw http.client's "
        "in the same round. Own: the median over the rounds of its median (or CPU) minus raw "
        "http.client's in the same round. Within a round the ways take turns every "
        f"{STRIDE} calls.",
        "",
        "| way | wall median µs | wall p99 µs | wall ratio | own wall µs "
        "| CPU µs | CPU ratio | own CPU µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    own: dict[str, tuple[float, float]] = {}
    for name, rounds in samples.items():
        times = [t for r in rounds for t in r.times]
        wall_ratios = [
            statistics.median(mine.times) / statistics.median(base.times)
            for mine, base in zip(rounds, base_rounds, strict=True)
        ]
        cpu_ratios = [mine.cpu / base.cpu for mine, base in zip(rounds, base_rounds, strict=True)]
        own_wall = statistics.median(
            statistics.median(mine.times) - statistics.median(base.times)
            for mine, base in zip(rounds, base_rounds, strict=True)
        )
        own_cpu = statistics.median(
            mine.cpu - base.cpu for mine, base in zip(rounds, base_rounds, strict=True)
        )
        own[name] = (own_wall, own_cpu)
        lines.append(
            f"| {name} | {statistics.median(times):.0f} | {p99(times):.0f} "
            f"| {statistics.median(wall_ratios):.2f}× | {own_wall:+.0f} "
            f"| {statistics.median(r.cpu for r in rounds):.0f} "
            f"| {statistics.median(cpu_ratios):.2f}× | {own_cpu:+.0f} |"
        )
    now, before = own[NOW], own[BEFORE]
    lines += [
        "",
        f"The client's own cost now, as a share of its cost over httpx: "
        f"{100 * now[0] / before[0]:.0f}% of the wall time, {100 * now[1] / before[1]:.0f}% "
        "of the CPU time.",
        "",
        f"A direct read against redis-py's GET and parse of the same entry, in the same rounds: "
        f"{ratio(samples[DIRECT], samples[REDIS]):.2f}× the wall time; the async client's "
        f"against redis.asyncio's: {ratio(samples[ASYNC_DIRECT], samples[ASYNC_REDIS]):.2f}×.",
    ]
    return "\n".join(lines)


def ratio(mine: list[Sample], base: list[Sample]) -> float:
    """The median over the rounds of C{mine}'s median wall time / C{base}'s in the same round."""
    return statistics.median(
        statistics.median(m.times) / statistics.median(b.times)
        for m, b in zip(mine, base, strict=True)
    )


def run(rounds: int, calls: int) -> dict[str, list[Sample]]:
    """Start Redis, an origin and refresherd, make the value a hit, and measure every way."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rfd-bench-")))
        store = RedisServer()
        store.start()
        stack.callback(store.cleanup)
        origin = stack.enter_context(origin_server())
        origin.set("/big/1", body=value(), content_type="application/json")
        config = directory / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin.url))
        service = start_service(config, "--store", store.url())
        stack.callback(service.stop)
        with Client(service.url, service.admin_url, timeout=30) as client:
            # Right after start-up, the first value's next reads may be misses again.
            statuses: list[str] = []
            while statuses[-3:] != ["hit"] * 3:
                assert len(statuses) < 100, statuses
                statuses.append(client.get("big", id=1)["status"])
                time.sleep(0.05)
        return measure(service, store, rounds, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    text = report(run(args.rounds, args.calls), args)
    print(text)
    if not args.no_write:
        write_section(START, END, HEADING, text)


if __name__ == "__main__":
    main()
